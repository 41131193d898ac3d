"""SMTPUTF8 (RFC 6531/6532) on the submission listener (issue 13): offered in EHLO; with
`MAIL FROM:<...> SMTPUTF8` internationalised local parts are taken in MAIL and RCPT and
the message (UTF-8 headers) is signed and delivered with SMTPUTF8; without it such a
local part is `553 5.6.7`, while a U-label domain is accepted either way and delivered
as its A-label. Real TLS, PostgreSQL, DNS and an SMTP sink as the recipient's MX."""

from __future__ import annotations

import asyncio
import smtplib

import dkim

from tests.signing.test_dkim_sign import dns_txt_func
from tests.smtp.test_submission import SENDER, Sub, dialogue, plain, sub, world  # noqa: F401

INTL = "jörg.müller@rcpt.test"


def utf8_message(to: str) -> bytes:
    return (f"From: Jörg <{SENDER}>\r\nTo: {to}\r\nSubject: Grüße ✓\r\n\r\n"
            "Hallo Jörg\r\n").encode()


async def test_ehlo_offers_smtputf8_and_a_utf8_message_goes_out_with_it(sub: Sub) -> None:  # noqa: F811
    def run() -> tuple[dict, dict]:
        with smtplib.SMTP_SSL("127.0.0.1", sub.port, context=sub.client_ctx,
                              timeout=20) as s:
            s.ehlo("client.example.com")
            features = dict(s.esmtp_features)
            s.login("api_token", sub.token)
            # smtplib sends the UTF-8 addresses only with SMTPUTF8 in the MAIL options.
            refused = s.sendmail(SENDER, [INTL], utf8_message(INTL),
                                 mail_options=["SMTPUTF8"])
            return features, refused

    features, refused = await asyncio.to_thread(run)
    assert "smtputf8" in features and refused == {}
    [got] = await asyncio.to_thread(sub.sink.wait_for, 1)
    assert got.smtputf8 and got.rcpt_tos == [INTL]
    assert f"To: {INTL}".encode() in got.data and "Subject: Grüße ✓".encode() in got.data
    assert dkim.verify(got.data, dnsfunc=dns_txt_func(sub.dns))


async def test_utf8_sender_local_part_with_smtputf8(sub: Sub) -> None:  # noqa: F811
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               "MAIL FROM:<jörg@sender.test> SMTPUTF8", f"RCPT TO:<{INTL}>",
                               "DATA", utf8_message(INTL) + b".\r\n", "QUIT"])
    assert got[3] == "250 2.1.0 Ok" and got[4] == "250 2.1.5 Ok", got
    assert got[6].startswith("250 2.0.0 Ok <"), got
    [msg] = await asyncio.to_thread(sub.sink.wait_for, 1)
    assert msg.smtputf8 and msg.rcpt_tos == [INTL]


async def test_without_smtputf8_a_utf8_local_part_is_553_but_a_u_label_domain_is_fine(
        sub: Sub) -> None:  # noqa: F811
    sub.dns.add_zone("""
        xn--mnchen-3ya.test.     300 IN MX 10 mx.xn--mnchen-3ya.test.
        mx.xn--mnchen-3ya.test.  300 IN A 127.0.0.2
    """)
    body = (f"From: {SENDER}\r\nTo: anna@xn--mnchen-3ya.test\r\nSubject: hi\r\n\r\n"
            "hello\r\n.\r\n").encode()
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{INTL}>",
                               "RCPT TO:<anna@münchen.test>", "DATA", body, "QUIT"])
    assert got[4].startswith("553 5.6.7") and "SMTPUTF8" in got[4], got
    assert got[5] == "250 2.1.5 Ok", got
    assert got[7].startswith("250 2.0.0 Ok <"), got
    [msg] = await asyncio.to_thread(sub.sink.wait_for, 1)
    assert msg.rcpt_tos == ["anna@xn--mnchen-3ya.test"] and not msg.smtputf8
    assert "jörg" not in msg.data.decode("utf-8", "replace")


async def test_smtputf8_takes_no_value(sub: Sub) -> None:  # noqa: F811
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}> SMTPUTF8=yes", "QUIT"])
    assert got[3].startswith("501 5.5.4"), got
