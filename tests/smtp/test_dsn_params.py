"""The DSN extension's parameters at the MX (RFC 3461 §4): offered after EHLO, read and
checked at MAIL (RET, ENVID) and RCPT (NOTIFY, ORCPT), refused with their exact
replies, refused as unknown after HELO, and stored with the message."""

from __future__ import annotations

import pytest

from mta.queue.dsnparams import (
    DsnParamError,
    orcpt_for,
    orcpt_param,
    parse_orcpt,
    xtext_decode,
    xtext_encode,
)
from tests.smtp.conftest import codes, make_message, raw_session


async def transcript(mx, *commands: str) -> list[str]:
    """The reply to each command (after the greeting and EHLO)."""
    data = "".join(f"{c}\r\n" for c in ("EHLO client.test", *commands, "QUIT"))
    return codes(await raw_session(mx, data.encode()))[2:-1]


async def test_ehlo_offers_dsn(mx) -> None:
    out = await raw_session(mx, b"EHLO client.test\r\nQUIT\r\n")
    assert "250-DSN\r\n" in out or "250 DSN\r\n" in out, out


async def test_parameters_accepted_and_stored_with_the_message(mx) -> None:
    raw = make_message("alice@good.test").replace(b"\r\n", b"\r\n").decode()
    replies = await transcript(
        mx, "MAIL FROM:<alice@good.test> RET=hdrs ENVID=QQ+2B1+3Dx",
        "RCPT TO:<user@ours.test> NOTIFY=failure,success ORCPT=rfc822;Old+2Bbox@ours.test",
        "DATA", raw + ".")
    assert replies[:3] == ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK",
                           "354 End data with <CR><LF>.<CR><LF>"], replies
    assert replies[3].startswith("250 2.0.0 OK: queued as"), replies
    [stored] = await mx.messages()
    assert (stored.dsn_ret, stored.dsn_envid) == ("HDRS", "QQ+1=x")


async def test_without_parameters_nothing_is_stored(mx) -> None:
    replies = await transcript(mx, "MAIL FROM:<alice@good.test>", "RCPT TO:<user@ours.test>",
                               "DATA", make_message("alice@good.test").decode() + ".")
    assert replies[3].startswith("250 2.0.0"), replies
    [stored] = await mx.messages()
    assert (stored.dsn_ret, stored.dsn_envid) == (None, None)


@pytest.mark.parametrize("params, reply", [
    ("RET=BODY", "501 5.5.4 Bad RET parameter (RFC 3461): expected FULL or HDRS"),
    ("RET=", "501 5.5.4 Syntax error in parameters or arguments: RET="),
    ("RET=FULL RET=HDRS", "501 5.5.4 Duplicate RET parameter"),
    ("ENVID=a+2", "501 5.5.4 Bad ENVID parameter (RFC 3461): "
                  "'+' must be followed by two hex digits (xtext)"),
    ("ENVID=a+00b", "501 5.5.4 Bad ENVID parameter (RFC 3461): "
                    "only printable US-ASCII may be encoded"),
    ("ENVID=" + "x" * 101, "501 5.5.4 Bad ENVID parameter (RFC 3461): "
                           "longer than 100 characters"),
    ("ENVID=a ENVID=b", "501 5.5.4 Duplicate ENVID parameter"),
    ("ENVID", "501 5.5.4 Bad ENVID parameter (RFC 3461): a value is required"),
])
async def test_bad_mail_parameters_refused(mx, params, reply) -> None:
    replies = await transcript(mx, f"MAIL FROM:<alice@good.test> {params}",
                               "MAIL FROM:<alice@good.test> RET=FULL ENVID=" + "x" * 100)
    assert replies == [reply, "250 2.1.0 Sender OK"], replies


@pytest.mark.parametrize("params, reply", [
    ("NOTIFY=NEVER,SUCCESS", "501 5.5.4 Bad NOTIFY parameter (RFC 3461): NEVER cannot be "
                             "combined with other values"),
    ("NOTIFY=SOMETIMES", "501 5.5.4 Bad NOTIFY parameter (RFC 3461): expected NEVER or a "
                         "list of SUCCESS, FAILURE, DELAY"),
    ("NOTIFY=SUCCESS,SUCCESS", "501 5.5.4 Bad NOTIFY parameter (RFC 3461): expected NEVER "
                               "or a list of SUCCESS, FAILURE, DELAY"),
    ("NOTIFY=FAILURE NOTIFY=DELAY", "501 5.5.4 Duplicate NOTIFY parameter"),
    ("ORCPT=user@ours.test", "501 5.5.4 Bad ORCPT parameter (RFC 3461): expected "
                             "addr-type;xtext, e.g. rfc822;user@example.com"),
    ("ORCPT=rfc822;", "501 5.5.4 Bad ORCPT parameter (RFC 3461): expected "
                      "addr-type;xtext, e.g. rfc822;user@example.com"),
    ("ORCPT=rfc822;a+0Ab@x", "501 5.5.4 Bad ORCPT parameter (RFC 3461): only printable "
                             "US-ASCII may be encoded"),
    ("ORCPT=rfc822;" + "a" * 500, "501 5.5.4 Bad ORCPT parameter (RFC 3461): longer than "
                                  "500 characters"),
    ("ORCPT=rfc822;a@x ORCPT=rfc822;b@x", "501 5.5.4 Duplicate ORCPT parameter"),
    ("RET=FULL", "555 5.5.4 Parameter not recognized or not implemented: RET"),
])
async def test_bad_rcpt_parameters_refused(mx, params, reply) -> None:
    replies = await transcript(mx, "MAIL FROM:<alice@good.test>",
                               f"RCPT TO:<user@ours.test> {params}",
                               "RCPT TO:<user@ours.test> NOTIFY=NEVER ORCPT=rfc822;a@b")
    assert replies == ["250 2.1.0 Sender OK", reply, "250 2.1.5 Recipient OK"], replies


async def test_after_helo_the_parameters_are_unknown(mx) -> None:
    out = await raw_session(mx, b"HELO client.test\r\nMAIL FROM:<alice@good.test> RET=FULL\r\n"
                                b"MAIL FROM:<alice@good.test>\r\n"
                                b"RCPT TO:<user@ours.test> NOTIFY=NEVER\r\nQUIT\r\n")
    assert codes(out)[2:5] == [
        "555 5.5.4 Parameter not recognized or not implemented: RET",
        "250 2.1.0 Sender OK",
        "555 5.5.4 Parameter not recognized or not implemented: NOTIFY"], out


def test_xtext_round_trip() -> None:
    text = "a+b=c d\\e~!"
    assert xtext_encode(text) == "a+2Bb+3Dc+20d\\e~!"
    assert xtext_decode(xtext_encode(text), "ENVID") == text
    assert parse_orcpt("RFC822;first+2Blast@x.test") == "rfc822;first+last@x.test"
    with pytest.raises(DsnParamError):
        xtext_decode("a=b", "ENVID")


def test_utf8_orcpt_is_utf8_addr_xtext() -> None:
    """RFC 6533 §3: a utf-8 ORCPT escapes "+", "=", "\\" and space as \\x{HEX}, never
    as xtext's +XX, and is passed on exactly as it was given."""
    stored = orcpt_for("jörg+tag=x@x.test")
    assert stored == "utf-8;j\\x{F6}rg\\x{2B}tag\\x{3D}x@x.test"
    assert parse_orcpt(orcpt_param(stored)) == stored
    assert orcpt_param(parse_orcpt("UTF-8;j\\x{F6}rg@x.test")) == "utf-8;j\\x{F6}rg@x.test"
    for bad in ("utf-8;j+F6rg@x.test", "utf-8;a=b@x.test", "utf-8;a\\b@x.test"):
        with pytest.raises(DsnParamError):
            parse_orcpt(bad)
