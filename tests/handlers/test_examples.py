"""Each example handler (examples/handlers/) end to end: a real SMTP client -> node A's
MX -> router -> handler -> real sinks, with real DNS and PostgreSQL."""

from __future__ import annotations

import json

from sqlalchemy import select

from mta.handlers.kv import KvNamespace
from mta.store.models import Suppression
from tests.handlers.hworld import events, hworld_fixture, messages  # noqa: F401
from tests.routing.world import header, verify_all_dkim, world_fixture  # noqa: F401
from tests.smtp.conftest import dkim_sign, make_message, smtp_send


def signed(w, to: str, **kw) -> bytes:
    return dkim_sign(make_message("alice@sender.test", to=to, **kw), "sender.test", "sel",
                     w.sender_key)


async def test_support_auto_reply_and_forward(hworld):
    w = hworld
    raw = signed(w, "support@ours.test", subject="Printer on fire")
    code, text = await smtp_send(w.a, raw, "alice@sender.test", rcpts=("support@ours.test",))
    assert code == 250, text
    fwd = w.inbox.wait_for(1)[0]  # forwarded in-session, through the forwarding path
    assert fwd.rcpt_tos == ["dest@inbox.test"] and fwd.mail_from.startswith("SRS0=")
    assert header(fwd.data, "Subject") == [b"Printer on fire"]
    assert await w.workers(w.a).run_once() >= 1  # the reply, queued with the message
    got = w.sender_mx.wait_for(1)[0]
    assert got.rcpt_tos == ["alice@sender.test"]
    assert got.mail_from == "support@ours.test"
    incoming_id = header(raw, "Message-ID")[0]
    assert header(got.data, "In-Reply-To") == [incoming_id]
    assert header(got.data, "References") == [incoming_id]
    assert header(got.data, "Subject") == [b"Re: Printer on fire"]
    assert b"multipart/alternative" in header(got.data, "Content-Type")[0]
    assert verify_all_dkim(got.data, w.txt()) == {"ours.test": True}
    handled = await events(w, "Handled")
    assert [a["type"] for a in handled[0].details["actions"]] == ["reply", "forward"]
    assert handled[0].action == "worker" and handled[0].details["handler"] == "support"
    sent = await events(w, "Sent")
    assert sent[0].details["source"] == "reply" and sent[0].rcpt_to == "alice@sender.test"


async def test_spam_filter_rejects_spam_in_session(hworld):
    w = hworld
    raw = signed(w, "spam@ours.test", subject="WINNER!!! FREE MONEY LOTTERY")
    code, text = await smtp_send(w.a, raw, "alice@sender.test", rcpts=("spam@ours.test",))
    assert code == 550 and "5.7.1 Message rejected: Spam keyword" in f"5.7.1 {text}", text
    rejected = await events(w, "Rejected")
    assert rejected[0].details["actions"][0]["type"] == "reject"
    assert w.inbox.messages == []


async def test_spam_filter_forwards_with_score_headers(hworld, tmp_path):
    w = hworld
    raw = signed(w, "spam@ours.test", subject="Meeting notes")
    code, text = await smtp_send(w.a, raw, "alice@sender.test", rcpts=("spam@ours.test",))
    assert code == 250, text
    got = w.inbox.wait_for(1)[0]
    assert header(got.data, "X-Spam-Score") == [b"0"]
    assert header(got.data, "X-Spam-Reasons") == [b"none"]
    assert header(got.data, "X-Spam-Check-Time")
    # The added headers are under our signature; the original one still verifies.
    assert verify_all_dkim(got.data, w.txt()) == {"fwda.test": True, "sender.test": True}


BOUNCE = """From: Mail Delivery Subsystem <mailer-daemon@sender.test>\r
To: bounces@ours.test\r
Subject: Mail delivery failed: returning message to sender\r
Date: Wed, 28 Aug 2024 10:30:00 +0000\r
Message-ID: <bounce123@sender.test>\r
\r
This message was created automatically by mail delivery software.\r
\r
A message that you sent could not be delivered to one or more of its\r
recipients. This is a permanent error. The following address(es) failed:\r
\r
  nonexistent@example.com\r
    SMTP error from remote mail server after RCPT TO:<nonexistent@example.com>:\r
    host mx.example.com [192.168.1.1]: 550 5.1.1 User unknown\r
"""


async def test_bounce_handler_feeds_the_suppression_list(hworld):
    w = hworld
    raw = dkim_sign(BOUNCE.encode(), "sender.test", "sel", w.sender_key)
    code, text = await smtp_send(w.a, raw, "mailer-daemon@sender.test",
                                 rcpts=("bounces@ours.test",))
    assert code == 250, text
    async with w.db.session() as s:
        rows = (await s.execute(select(Suppression))).scalars().all()
    assert [(r.email, r.reason, r.account_id) for r in rows] == [
        ("nonexistent@example.com", "hard_bounce", w.account_id)]
    value, meta = await KvNamespace(w.db, "SUPPRESSION_LIST").get_with_metadata(
        "nonexistent@example.com", type="json")
    assert value["type"] == "hard_bounce" and meta["bounceType"] == "hard"
    assert w.inbox.messages == []  # a bounce is consumed, not forwarded


async def test_storage_handler_keeps_mail_and_ticket(hworld):
    w = hworld
    raw = signed(w, "support@second.test", subject="Need help")
    code, text = await smtp_send(w.a, raw, "alice@sender.test",
                                 rcpts=("support@second.test",))
    assert code == 250, text
    emails = await KvNamespace(w.db, "EMAILS").list()
    assert len(emails["keys"]) == 1
    stored = await KvNamespace(w.db, "EMAILS").get(emails["keys"][0]["name"], type="json")
    assert stored["from"] == "alice@sender.test" and stored["subject"] == "Need help"
    assert "Need help" in stored["rawContent"]
    tickets = await KvNamespace(w.db, "SUPPORT_TICKETS").list(prefix="TICKET-")
    assert len(tickets["keys"]) == 1 and tickets["keys"][0]["metadata"] == {"status": "open"}
    ticket_id = tickets["keys"][0]["name"]
    ticket = json.loads(await KvNamespace(w.db, "SUPPORT_TICKETS").get(ticket_id))
    assert ticket["emailId"] == emails["keys"][0]["name"]
    assert w.inbox.wait_for(1)[0].rcpt_tos == ["dest@inbox.test"]
    await w.workers(w.a).run_once()
    got = w.sender_mx.wait_for(1)[0]
    assert header(got.data, "Subject") == [f"Support Ticket Created: {ticket_id}".encode()]
    assert verify_all_dkim(got.data, w.txt()) == {"second.test": True}
    assert [m.status for m in await messages(w, "mx")] == ["handled"]
