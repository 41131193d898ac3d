"""SMTP smuggling (CVE-2023-51764 family): DATA ends only at <CR><LF>.<CR><LF>.

Each payload tries to end the first message with a non-standard end-of-data sequence
and pipeline a second transaction inside it. Whatever the server does, at most one
message may come out, and the smuggled one never on its own.
"""

from __future__ import annotations

import pytest

from mta.smtp.wire import decode_data, find_data_end
from tests.smtp.conftest import codes, make_message, raw_session

FAKE_ENDS = [
    b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\r\n.\n", b"\n.\r",
    b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\n\n.\n\n", b"\r\r\n.\r\r\n", b"\r\n.\r\r\n",
]

SMUGGLED = (b"MAIL FROM:<admin@good.test>\r\nRCPT TO:<user@ours.test>\r\nDATA\r\n"
            b"From: admin@good.test\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")


def transcript(payload: bytes) -> bytes:
    first = make_message("alice@good.test", subject="first", body="first body")
    return (b"EHLO client.test\r\nMAIL FROM:<alice@good.test>\r\nRCPT TO:<user@ours.test>\r\n"
            b"DATA\r\n" + first + payload + SMUGGLED + b"\r\n.\r\nQUIT\r\n")


@pytest.mark.parametrize("payload", FAKE_ENDS, ids=[repr(p) for p in FAKE_ENDS])
def test_fake_ends_are_not_the_end(payload: bytes) -> None:
    section = b"Subject: x\r\n\r\nbody" + payload + SMUGGLED + b"\r\n.\r\n"
    end = find_data_end(section)
    assert end == len(section)  # only the real marker ends it
    content, bare = decode_data(section[:end], "normalize")
    assert bare or b"\x00" in section
    assert content.count(b"\r\n") == content.count(b"\n") == content.count(b"\r")


@pytest.mark.parametrize("payload", FAKE_ENDS, ids=[repr(p) for p in FAKE_ENDS])
async def test_smuggling_payload_yields_at_most_one_message(mx, payload: bytes) -> None:
    out = await raw_session(mx, transcript(payload))
    replies = codes(out)[2:]  # after greeting and EHLO: MAIL, RCPT, 354, end of DATA, QUIT
    assert [r[:3] for r in replies[:3]] == ["250", "250", "354"], replies
    messages = await mx.messages()
    # Every variant is refused whole: a bare CR or LF, or a NUL (which a next hop could
    # take for part of an end of data) — nothing is stored, so nothing is relayed.
    assert replies[3].startswith("550 5.6.0"), replies
    assert not messages
    assert replies[-1].startswith("221"), replies  # the smuggled commands were data


NORMALIZED = FAKE_ENDS[:9]  # the bare CR/LF variants and both NUL ones


@pytest.mark.parametrize("payload", NORMALIZED, ids=[repr(p) for p in NORMALIZED])
async def test_normalize_mode_yields_one_message(make_mx, payload: bytes) -> None:
    world = await make_mx(lambda s: setattr(s.inbound, "bare_line_endings", "normalize"))
    out = await raw_session(world, transcript(payload))
    replies = codes(out)[2:]
    assert replies[3].startswith("250 2.0.0"), replies
    [msg] = await world.messages()
    body = msg.raw.split(b"\r\n\r\n", 1)[1]
    assert b"smuggled body" in body  # the would-be second message is first's content
    assert msg.raw.count(b"\r\n") == msg.raw.count(b"\n") == msg.raw.count(b"\r")
    assert b"\x00" not in msg.raw  # removed, never stored or relayed


def test_dot_unstuffing_and_empty_message() -> None:
    assert find_data_end(b".\r\n") == 3
    assert decode_data(b".\r\n") == (b"", False)
    section = b"a\r\n..b\r\n...\r\n.\r\n"
    assert decode_data(section[:find_data_end(section)]) == (b"a\r\n.b\r\n..\r\n", False)
    # A marker split over reads is still found from the scan position.
    assert find_data_end(b"xx\r\n.\r\n", start=1) == 7
    assert find_data_end(b"x\r\n.\r", 0) == -1
