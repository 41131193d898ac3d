"""The DSN extension (RFC 3461) on SMTP submission: offered after STARTTLS/AUTH like the
rest, parameters checked as at the MX, kept with the message and its deliveries, and
honoured: mail leaves with a VERP return path, so the next hop's DSNs would come back
to us; a SUCCESS request is answered by us with a `relayed` DSN (RFC 3461 §5.2.2)."""

from __future__ import annotations

import asyncio
import email

import pytest
from sqlalchemy import select

from mta.store.models import Delivery, Message
from tests.smtp.test_submission import (  # noqa: F401 - the `world` fixture
    RCPT,
    SENDER,
    Sub,
    dialogue,
    plain,
    world,
)

BODY = "Thanks for signing up."


@pytest.fixture
async def listener(world) -> Sub:  # noqa: F811 - the fixture imported above
    return await world()


async def test_submission_offers_dsn_and_refuses_bad_parameters(listener: Sub) -> None:
    auth = f"AUTH PLAIN {plain(listener.token)}"
    got = await dialogue(listener, ["EHLO client.example.com", auth,
                               f"MAIL FROM:<{SENDER}> RET=NONE",
                               f"MAIL FROM:<{SENDER}> RET=HDRS",
                               f"RCPT TO:<{RCPT}> NOTIFY=NEVER,DELAY",
                               f"RCPT TO:<{RCPT}> NOTIFY=DELAY NOTIFY=DELAY", "QUIT"])
    assert got[3:7] == [
        "501 5.5.4 Bad RET parameter (RFC 3461): expected FULL or HDRS",
        "250 2.1.0 Ok",
        "501 5.5.4 Bad NOTIFY parameter (RFC 3461): NEVER cannot be combined with other "
        "values",
        "501 5.5.4 Duplicate NOTIFY parameter"], got


async def test_success_request_answered_with_a_relayed_dsn(listener: Sub) -> None:
    listener.sink.dsn = True
    body = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: Welcome\r\n\r\n{BODY}\r\n.\r\n"
    auth = f"AUTH PLAIN {plain(listener.token)}"
    got = await dialogue(listener, ["EHLO client.example.com", auth,
                               f"MAIL FROM:<{SENDER}> RET=FULL ENVID=order+2D42",
                               f"RCPT TO:<{RCPT}> NOTIFY=SUCCESS ORCPT=rfc822;crm+2Bx@crm.test",
                               "DATA", body.encode(), "QUIT"])
    assert got[6].startswith("250 2.0.0 Ok <"), got
    [sent] = await asyncio.to_thread(listener.sink.wait_for, 1)
    # VERP return path: the request is not passed on, though the next hop offers DSN.
    assert sent.mail_from.startswith("bounces+"), sent.mail_from
    assert "ENVID=" not in sent.mail_command and sent.rcpt_commands == [f"TO:<{RCPT}>"]
    async with listener.db.session() as s:
        [message] = (await s.execute(select(Message).where(Message.source == "submission"))
                     ).scalars().all()
        [delivery] = (await s.execute(select(Delivery).where(
            Delivery.message_id == message.id))).scalars().all()
        for _ in range(50):  # the DSN is queued with the delivery's outcome
            dsns = (await s.execute(select(Message).where(Message.source == "dsn"))
                    ).scalars().all()
            if dsns:
                break
            await asyncio.sleep(0.1)
    assert (message.dsn_ret, message.dsn_envid) == ("FULL", "order-42")
    assert (delivery.dsn_notify, delivery.dsn_orcpt) == ("SUCCESS", "rfc822;crm+x@crm.test")
    [note] = dsns
    assert note.rcpt_to == [SENDER]
    report = email.message_from_bytes(note.raw)
    [status] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    head, rcpt = ({k: str(v) for k, v in b.items()} for b in status.get_payload())
    assert head["Original-Envelope-Id"] == "order-42"
    assert (rcpt["Action"], rcpt["Final-Recipient"], rcpt["Original-Recipient"]) == (
        "relayed", f"rfc822; {RCPT}", "rfc822; crm+x@crm.test")
    assert "message/rfc822" in [p.get_content_type() for p in report.walk()]  # RET=FULL
    assert BODY.encode() in note.raw
