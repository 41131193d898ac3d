"""MX protocol hardening (issue 13), each over a real socket: NUL and over-long lines in
DATA, empty DATA, missing From, command line and path limits, every RCPT counted, soft
and hard error limits, SPF exp= in the refusal."""

from __future__ import annotations

import time

import pytest

from mta.smtp import limits
from mta.smtp.wire import check_content, has_long_line
from tests.smtp.conftest import codes, make_message, raw_session

HELLO = b"EHLO client.test\r\nMAIL FROM:<alice@good.test>\r\nRCPT TO:<user@ours.test>\r\n"


def session_with(message: bytes) -> bytes:
    return HELLO + b"DATA\r\n" + message + b".\r\nQUIT\r\n"


async def data_reply(world, message: bytes) -> str:
    """The reply to the end of DATA for `message` (sent as is, ending with CRLF)."""
    out = await raw_session(world, session_with(message))
    c = codes(out)[2:]  # after the greeting and EHLO
    assert [x[:3] for x in c[:3]] == ["250", "250", "354"], c
    assert c[-1].startswith("221"), c
    return c[3]


# -- NUL ---------------------------------------------------------------------------------------


async def test_nul_in_data_is_refused(mx) -> None:
    msg = make_message("alice@good.test", body="one\x00two\r\n")
    reply = await data_reply(mx, msg)
    assert reply.startswith("550 5.6.0") and "NUL" in reply, reply
    assert await mx.count() == 0
    [event] = [e for e in await mx.events() if e.status == "Rejected"]
    assert event.details["reason"] == "nul_in_data"


async def test_nul_is_removed_in_normalize_mode(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.inbound, "bare_line_endings", "normalize"))
    msg = make_message("alice@good.test", body="one\x00two\r\n")
    reply = await data_reply(world, msg)
    assert reply.startswith("250 2.0.0"), reply
    [stored] = await world.messages()
    assert b"\x00" not in stored.raw and b"onetwo\r\n" in stored.raw


# -- line length ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "body"])
async def test_line_over_998_octets_is_refused(mx, where: str) -> None:
    long = "x" * 999
    msg = (make_message("alice@good.test", extra=f"X-Long: {long}\r\n") if where == "header"
           else make_message("alice@good.test", body=f"{long}\r\n"))
    reply = await data_reply(mx, msg)
    assert reply.startswith("550 5.6.0") and "998" in reply, reply
    assert await mx.count() == 0


async def test_line_of_998_octets_is_accepted(mx) -> None:
    msg = make_message("alice@good.test", body="y" * 998 + "\r\n")
    reply = await data_reply(mx, msg)
    assert reply.startswith("250 2.0.0"), reply
    [stored] = await mx.messages()
    assert b"y" * 998 + b"\r\n" in stored.raw


def test_long_line_detection_at_the_edges() -> None:
    assert not has_long_line(b"a" * 998 + b"\r\n")
    assert has_long_line(b"a" * 999 + b"\r\n")
    assert has_long_line(b"ok\r\n" * 1000 + b"b" * 1500 + b"\r\nok\r\n")
    assert not has_long_line((b"c" * 998 + b"\r\n") * 50)
    assert check_content(b"a\x00b\r\n") == (b"", "nul", False)
    assert check_content(b"a\x00b\r\n", "normalize") == (b"ab\r\n", None, True)


# -- empty message, no From -------------------------------------------------------------------


async def test_empty_data_is_answered_as_empty(mx) -> None:
    reply = await data_reply(mx, b"")
    assert reply.startswith("554 5.6.0") and "no message data" in reply, reply
    assert "bare" not in reply
    assert await mx.count() == 0


@pytest.mark.parametrize("monitor_only", [False, True])
async def test_message_without_from_is_refused_in_every_policy_mode(make_mx, monitor_only) -> None:
    def tweak(s):
        s.inbound.policy.monitor_only = monitor_only
        s.inbound.policy.require_spf_or_dkim = False
        s.inbound.policy.enforce_dmarc_reject = False

    world = await make_mx(tweak)
    msg = b"To: user@ours.test\r\nSubject: no author\r\n\r\nbody\r\n"
    reply = await data_reply(world, msg)
    assert reply.startswith("550 5.6.0") and "no From header" in reply, reply
    assert await world.count() == 0
    # "From:" in the body is not a From header.
    reply = await data_reply(world, b"Subject: x\r\n\r\nFrom: a@good.test\r\n")
    assert reply.startswith("550 5.6.0"), reply


# -- command lines and paths -----------------------------------------------------------------


async def test_command_line_limit_is_512_octets(mx) -> None:
    exact = b"NOOP " + b"x" * (limits.COMMAND_LINE - len(b"NOOP \r\n")) + b"\r\n"
    assert len(exact) == 512
    over = b"NOOP " + b"x" * 600 + b"\r\n"
    out = await raw_session(mx, b"EHLO client.test\r\n" + exact + over + b"NOOP\r\nQUIT\r\n")
    c = codes(out)[2:]
    assert c[0].startswith("250"), c
    assert c[1].startswith("500 5.5.2") and "too long" in c[1], c
    assert c[2].startswith("250") and c[3].startswith("221"), c  # the session goes on


async def test_path_limits(mx) -> None:
    local65 = b"a" * 65
    label = b"b" * 63
    long_domain = b".".join([label] * 4) + b".test"  # 260 octets
    long_path = b"c" * 64 + b"@" + b".".join([label] * 3) + b".ab.test"  # 260 octets
    out = await raw_session(mx, b"EHLO client.test\r\n"
                                b"MAIL FROM:<" + local65 + b"@good.test>\r\n"
                                b"MAIL FROM:<x@" + long_domain + b">\r\n"
                                b"MAIL FROM:<" + long_path + b">\r\n"
                                b"MAIL FROM:<" + b"a" * 64 + b"@good.test>\r\nQUIT\r\n")
    c = codes(out)[2:]
    assert c[0].startswith("501 5.1.7"), c
    assert c[1].startswith("501 5.1.7"), c
    assert c[2].startswith("501 5.1.7"), c
    assert c[3].startswith("250 2.1.0"), c


# -- recipients --------------------------------------------------------------------------------


async def test_repeated_recipients_count_against_the_limit(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.limits, "recipients_per_message", 5))
    out = await raw_session(world, b"EHLO client.test\r\nMAIL FROM:<alice@good.test>\r\n"
                            + b"RCPT TO:<user@ours.test>\r\n" * 7 + b"QUIT\r\n")
    c = codes(out)[3:]  # after greeting, EHLO and MAIL
    assert [x[:3] for x in c[:7]] == ["250"] * 5 + ["452"] * 2, c
    assert c[5].startswith("452 4.5.3"), c


# -- error limits ------------------------------------------------------------------------------


async def test_valid_recipient_in_error_heavy_session_is_delivered(make_mx) -> None:
    def tweak(s):
        s.limits.error_delay = 0.3

    world = await make_mx(tweak)
    unknown = b"".join(b"RCPT TO:<nobody%d@ours.test>\r\n" % i for i in range(15))
    msg = make_message("alice@good.test")
    started = time.monotonic()
    out = await raw_session(world, HELLO + unknown + b"DATA\r\n" + msg + b".\r\nQUIT\r\n",
                            wait=8)
    took = time.monotonic() - started
    c = codes(out)[4:]  # after greeting, EHLO, MAIL and the valid RCPT
    assert all(x.startswith("550 5.1.1") for x in c[:15]), c
    assert c[15].startswith("354") and c[16].startswith("250 2.0.0"), c
    assert c[17].startswith("221"), c
    [stored] = await world.messages()
    assert stored.rcpt_to == ["user@ours.test"]
    assert took >= 5 * 0.3  # errors 11..15 were each delayed (soft limit 10)


async def test_hard_error_limit_closes_with_421(make_mx) -> None:
    def tweak(s):
        s.limits.error_delay = 0
        s.limits.errors_soft_limit = 2

    world = await make_mx(tweak)
    out = await raw_session(world, b"FOO\r\n" * 25)
    c = codes(out)
    assert [x[:3] for x in c] == ["220"] + ["500"] * 20 + ["421"], c
    assert c[-1].startswith("421 4.7.0")


# -- SPF exp= ------------------------------------------------------------------------------


async def test_spf_fail_refusal_carries_the_explanation(mx) -> None:
    mx.dns.add_txt("explained.test", "v=spf1 ip4:192.0.2.1 exp=why.explained.test -all")
    mx.dns.add_txt("why.explained.test",
                   "%{i} is not a server of %{d}; see https://explained.test/spf \"now\"")
    out = await raw_session(mx, b"EHLO client.test\r\nMAIL FROM:<bob@explained.test>\r\n"
                            b"RCPT TO:<user@ours.test>\r\nDATA\r\n"
                            + make_message("bob@explained.test") + b".\r\nQUIT\r\n")
    reply = codes(out)[5]
    assert reply.startswith("550 5.7.26"), reply
    assert ('explains: "127.0.0.1 is not a server of explained.test; '
            "see https://explained.test/spf 'now'\"") in reply, reply
    # Without exp= the refusal is the plain one.
    out = await raw_session(mx, b"EHLO client.test\r\nMAIL FROM:<bob@strict.test>\r\n"
                            b"RCPT TO:<user@ours.test>\r\nDATA\r\n"
                            + make_message("bob@strict.test") + b".\r\nQUIT\r\n")
    reply = codes(out)[5]
    assert reply.startswith("550 5.7.26") and "explains" not in reply, reply
