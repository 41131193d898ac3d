"""CHUNKING (RFC 3030, BDAT) on the MX and submission listeners, over real sockets: the
same strictness as DATA — sizes checked before reading, refused chunks consumed (never
read as commands), BDAT LAST, no mixing with DATA."""

from __future__ import annotations

import aiosmtplib

from tests.smtp.conftest import codes, make_message, raw_session
from tests.smtp.test_submission import (  # noqa: F401 - the `sub` fixture
    RCPT,
    SENDER,
    Sub,
    dialogue,
    plain,
    sub,
    world,
)

HELLO = b"EHLO client.test\r\nMAIL FROM:<alice@good.test>\r\nRCPT TO:<user@ours.test>\r\n"


def bdat(data: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


async def test_ehlo_offers_chunking(mx) -> None:
    client = aiosmtplib.SMTP(hostname=mx.host, port=mx.port, start_tls=False, timeout=10)
    await client.connect()
    await client.ehlo()
    assert client.supports_extension("chunking")
    await client.quit()


async def test_message_in_chunks_is_stored_byte_for_byte(mx) -> None:
    msg = make_message("alice@good.test", body="line one\r\n.\r\n..two dots\r\nend\r\n")
    half = len(msg) // 2
    out = await raw_session(mx, HELLO + bdat(msg[:half]) + bdat(msg[half:], last=True)
                            + b"QUIT\r\n")
    c = codes(out)[4:]  # after greeting, EHLO, MAIL, RCPT
    assert c[0] == f"250 2.0.0 {half} octets received", c
    assert c[1].startswith("250 2.0.0 OK: queued"), c
    assert c[2].startswith("221"), c
    [stored] = await mx.messages()
    # No dot-stuffing in BDAT: ".\r\n" and ".." are content, kept as sent.
    assert stored.raw.endswith(msg)


async def test_chunk_over_the_size_limit_is_refused_unread_and_consumed(mx) -> None:
    limit = 64 * 1024
    big = b"x" * 998 + b"\r\n"
    first = make_message("alice@good.test") + big * 40  # about 40 KB
    second = big * 30  # takes it over 64 KB
    # Pipelined after the refused chunk: a chunk whose octets look like commands.
    evil = b"MAIL FROM:<evil@good.test>\r\nRCPT TO:<user@ours.test>\r\nQUIT\r\n"
    out = await raw_session(mx, HELLO + bdat(first) + bdat(second) + bdat(evil, last=True)
                            + b"NOOP\r\nQUIT\r\n")
    c = codes(out)[4:]
    assert c[0].startswith("250 2.0.0"), c
    assert c[1].startswith("552 5.3.4") and str(limit) in c[1], c
    assert c[2].startswith("503 5.5.1"), c  # the transaction ended with the 552
    assert c[3].startswith("250 2.0.0 OK") and c[4].startswith("221"), c  # NOOP, QUIT
    assert await mx.count() == 0


async def test_bdat_without_a_transaction_is_refused_and_its_data_consumed(mx) -> None:
    evil = b"MAIL FROM:<evil@good.test>\r\n"
    out = await raw_session(mx, b"EHLO client.test\r\n" + bdat(evil, last=True)
                            + b"MAIL FROM:<alice@good.test>\r\nBDAT 7\r\nRCPT!\r\nQUIT\r\n")
    c = codes(out)[2:]
    assert c[0].startswith("503 5.5.1"), c
    assert c[1].startswith("250 2.1.0"), c  # the real MAIL, not the one in the chunk
    assert c[2].startswith("554 5.5.1"), c  # no recipients yet
    assert c[3].startswith("221"), c


async def test_data_after_bdat_is_refused(mx) -> None:
    msg = make_message("alice@good.test")
    out = await raw_session(mx, HELLO + bdat(msg[:20]) + b"DATA\r\nRSET\r\n"
                            + b"MAIL FROM:<alice@good.test>\r\nRCPT TO:<user@ours.test>\r\n"
                            + bdat(msg, last=True) + b"QUIT\r\n")
    c = codes(out)[4:]
    assert c[0].startswith("250 2.0.0 20 octets"), c
    assert c[1].startswith("503 5.5.1") and "BDAT" in c[1], c
    assert c[2].startswith("250"), c  # RSET
    assert c[5].startswith("250 2.0.0 OK: queued"), c
    [stored] = await mx.messages()
    assert stored.raw.endswith(msg)


async def test_bdat_syntax_error_closes_the_session(mx) -> None:
    out = await raw_session(mx, HELLO + b"BDAT ten LAST\r\nten bytes!NOOP\r\n")
    c = codes(out)[4:]
    assert c == [c[0]] and c[0].startswith("501 5.5.4"), c
    assert await mx.count() == 0


async def test_bdat_content_is_held_to_the_data_rules(mx) -> None:
    cases = {
        "bare LF": (make_message("alice@good.test", body="a\nb\r\n"), "550 5.6.0"),
        "NUL": (make_message("alice@good.test", body="a\x00b\r\n"), "550 5.6.0"),
        "long line": (make_message("alice@good.test", body="z" * 999 + "\r\n"), "550 5.6.0"),
        "no From": (b"Subject: x\r\n\r\nbody\r\n", "550 5.6.0"),
        "empty": (b"", "554 5.6.0"),
    }
    for name, (msg, want) in cases.items():
        out = await raw_session(mx, HELLO + bdat(msg, last=True) + b"QUIT\r\n")
        c = codes(out)[4:]
        assert c[0].startswith(want), (name, c)
    assert await mx.count() == 0
    # A last line without its CRLF gets one; the message is otherwise as sent.
    msg = make_message("alice@good.test", body="no final line end")
    out = await raw_session(mx, HELLO + bdat(msg, last=True) + b"QUIT\r\n")
    assert codes(out)[4].startswith("250 2.0.0"), out
    [stored] = await mx.messages()
    assert stored.raw.endswith(msg + b"\r\n")


# -- submission ------------------------------------------------------------------------------


async def test_submission_offers_chunking_and_accepts_bdat(sub: Sub) -> None:  # noqa: F811
    body = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: chunks\r\n\r\nIn two chunks.\r\n"
    first, second = body[:30].encode(), body[30:].encode()
    got = await dialogue(sub, ["EHLO client.example.com", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>",
                               b"BDAT %d\r\n" % len(first) + first,
                               b"BDAT %d LAST\r\n" % len(second) + second, "QUIT"])
    assert got[5] == "250 2.0.0 30 octets received", got
    assert got[6].startswith("250 2.0.0 Ok <"), got
    [received] = sub.sink.wait_for(1)
    assert b"In two chunks." in received.data and received.rcpt_tos == [RCPT]


async def test_submission_bdat_before_auth_is_refused_and_consumed(sub: Sub) -> None:  # noqa: F811
    chunk = b"AUTH PLAIN " + plain(sub.token).encode() + b"\r\n"
    got = await dialogue(sub, ["EHLO client.example.com",
                               b"BDAT %d LAST\r\n" % len(chunk) + chunk,
                               f"MAIL FROM:<{SENDER}>"])
    assert got[2].startswith("530 5.7.0"), got  # the BDAT
    assert got[3].startswith("530 5.7.0"), got  # MAIL: the AUTH inside the chunk was data


async def test_submission_data_refuses_long_lines_and_drops_nul(sub: Sub) -> None:  # noqa: F811
    head = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: x\r\n\r\n"
    long = (head + "y" * 999 + "\r\n.\r\n").encode()
    nul = (head + "a\x00b\r\n.\r\n").encode()
    got = await dialogue(sub, ["EHLO client.example.com", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>", "DATA", long,
                               f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>", "DATA", nul])
    assert got[6].startswith("550 5.6.0") and "998" in got[6], got
    assert got[10].startswith("250 2.0.0 Ok <"), got
    [received] = sub.sink.wait_for(1)
    assert b"\x00" not in received.data and b"ab\r\n" in received.data
