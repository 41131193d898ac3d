"""Internationalised addresses in the send API (issue 13, RFC 6531/6532), over real HTTP
and through the Python send call, delivered to a real SMTP sink: UTF-8 local parts in
from/to/cc/bcc/reply_to are accepted and validated, a U-label domain becomes its A-label
(no SMTPUTF8 needed for that alone), a message with a UTF-8 local part in a header is
composed per RFC 6532 and delivered with SMTPUTF8, and a next hop without SMTPUTF8 gets
nothing: the recipient fails with 5.6.7 and the sender gets a DSN saying so."""

from __future__ import annotations

import email
from email import policy

import dkim
import pytest

from mta.sending.binding import SendBinding
from mta.store.models import Delivery, Message
from tests.sending.test_rest_send import api, error_of  # noqa: F401 - the `api` fixture
from tests.sending.test_service import SENDER, rows, world  # noqa: F401
from tests.signing.test_dkim_sign import dns_txt_func

INTL = "jörg.müller@rcpt.test"


def body(**over) -> dict:
    b = {"from": {"address": SENDER, "name": "Absender"}, "to": [INTL],
         "subject": "Grüße", "text": "Hallo Jörg\n"}
    b.update(over)
    return b


async def test_utf8_recipient_is_delivered_with_smtputf8_and_rfc6532_headers(api):  # noqa: F811
    resp = await api.post(body(cc=["Ünï <ünï@rcpt.test>"], bcc=["geheim.ß@rcpt.test"],
                               reply_to="antwort.ä@sender.test"))
    assert resp.status_code == 200, resp.text
    result = resp.json()["result"]
    assert sorted(result["delivered"]) == sorted(
        [INTL, "ünï@rcpt.test", "geheim.ß@rcpt.test"])
    copies = api.world.sink.wait_for(3)  # one per recipient (VERP)
    assert all(m.smtputf8 for m in copies)  # declared in MAIL FROM
    assert sorted(r for m in copies for r in m.rcpt_tos) == sorted(
        [INTL, "ünï@rcpt.test", "geheim.ß@rcpt.test"])
    got = copies[0]
    head = got.data.split(b"\r\n\r\n", 1)[0]
    # RFC 6532: the addresses as they are, in UTF-8 (no encoded words in an address).
    assert f"To: {INTL}".encode() in head and "ünï@rcpt.test".encode() in head
    assert "Reply-To: antwort.ä@sender.test".encode() in head
    assert all(b"geheim" not in m.data for m in copies)  # Bcc stays envelope-only
    msg = email.message_from_bytes(got.data, policy=policy.SMTPUTF8)
    assert msg["Subject"] == "Grüße" and msg.get_content().rstrip() == "Hallo Jörg"
    assert dkim.verify(got.data, dnsfunc=dns_txt_func(api.world.dns))


async def test_u_label_domain_alone_goes_out_as_a_label_without_smtputf8(api):  # noqa: F811
    api.world.dns.add_zone("""
        xn--mnchen-3ya.test.     300 IN MX 10 mx.xn--mnchen-3ya.test.
        mx.xn--mnchen-3ya.test.  300 IN A 127.0.0.2
    """)
    resp = await api.post(body(to=["Anna <anna@münchen.test>"]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["delivered"] == ["anna@xn--mnchen-3ya.test"]
    [got] = api.world.sink.wait_for(1)
    assert got.rcpt_tos == ["anna@xn--mnchen-3ya.test"] and not got.smtputf8
    assert got.data.isascii()  # nothing needed UTF-8: a plain 7-bit message


BAD = {
    "a space": "jö rg@rcpt.test",
    "a zero-width space": "jö\u200brg@rcpt.test",
    "a no-break space": "jö\u00a0rg@rcpt.test",
    "65 octets": "ö" * 33 + "@rcpt.test",
    "a bad IDN domain": "jörg@-münchen.test",
    "two @": "jö@rg@rcpt.test",
}
FIELDS = {"from": lambda a: {"from": a}, "to": lambda a: {"to": [a]},
          "cc": lambda a: {"cc": [a]}, "bcc": lambda a: {"bcc": [a]},
          "reply_to": lambda a: {"reply_to": a}}


@pytest.mark.parametrize("field", FIELDS)
async def test_invalid_internationalised_address_is_400_field_by_field(api, field):  # noqa: F811
    for what, bad in BAD.items():
        status, code, message = error_of(await api.post(body(**FIELDS[field](bad))))
        assert (status, code) == (400, 10001), (field, what, message)
    assert api.world.sink.messages == []


async def test_next_hop_without_smtputf8_fails_567_and_the_sender_gets_a_dsn(api):  # noqa: F811
    api.world.sink.smtputf8 = False
    # bob's envelope address is ASCII, but the message (To: jörg...) still needs SMTPUTF8.
    resp = await api.post(body(bcc=["bob@rcpt.test"]))
    assert resp.status_code == 200, resp.text
    assert sorted(resp.json()["result"]["permanent_bounces"]) == sorted(
        [INTL, "bob@rcpt.test"])
    assert api.world.sink.messages == []  # never downgraded, never sent
    deliveries = await rows(api.world.db, Delivery, Delivery.recipient.in_(
        [INTL, "bob@rcpt.test"]))
    assert {d.status for d in deliveries} == {"failed"}, [d.status for d in deliveries]
    assert all(d.last_reply.startswith("553 5.6.7") for d in deliveries), deliveries
    notes = await rows(api.world.db, Message, Message.source == "dsn")
    assert notes and all(n.rcpt_to == [SENDER] and b"Status: 5.6.7" in n.raw
                         for n in notes)
    reported = b"".join(n.raw for n in notes)
    assert b"Final-Recipient: rfc822; bob@rcpt.test" in reported
    # RFC 6533's type for a UTF-8 address, its non-ASCII characters as \x{HEX}.
    assert b"Final-Recipient: utf-8; j\\x{F6}rg.m\\x{FC}ller@rcpt.test" in reported


async def test_python_send_call_takes_internationalised_addresses(world):  # noqa: F811
    binding = SendBinding(world.service(), world.account)
    message_id = await binding.send({"from": "Jörg <jörg@sender.test>", "to": INTL,
                                     "subject": "Grüße", "text": "Hallo\n"})
    assert message_id.endswith("@sender.test>")
    [got] = world.sink.wait_for(1)
    assert got.smtputf8 and got.rcpt_tos == [INTL]
    assert got.mail_from.startswith("bounces+")  # VERP, ASCII: the sender is in From
    assert "From: Jörg <jörg@sender.test>".encode() in got.data


async def test_send_raw_with_utf8_recipient_and_rfc6532_headers(api):  # noqa: F811
    mime = (f"From: Absender <{SENDER}>\r\nTo: {INTL}\r\nSubject: Grüße\r\n\r\n"
            "Hallo Jörg\r\n")
    resp = await api.post({"from": SENDER, "recipients": [INTL], "mime_message": mime},
                          "send_raw")
    assert resp.status_code == 200, resp.text
    [got] = api.world.sink.wait_for(1)
    assert got.smtputf8 and got.rcpt_tos == [INTL]
    assert f"To: {INTL}\r\nSubject: Grüße".encode() in got.data
    assert dkim.verify(got.data, dnsfunc=dns_txt_func(api.world.dns))
