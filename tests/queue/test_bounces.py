"""Bounces and complaints coming back to VERP return paths: DSNs (RFC 3464), ARF reports
(RFC 5965) and non-standard bounces map to the exact delivery and feed suppression."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from mta.queue import bounces, dsn
from mta.queue.outcome import Reply
from mta.queue.queue import Recipient, verp_address
from mta.store import suppression
from mta.store.models import Delivery, DeliveryAttempt, Event, Suppression
from tests.queue.test_delivery import (  # noqa: F401
    port,  # noqa: F401
    settings_for_tests,
    workers,
    world,
)
from tests.queue.test_queue import T0, Clock, enqueue, make_account

KEY = bounces.verp_key(settings_for_tests())
SENDER = "news@src.test"
RETURN_PATH = "cf-bounce.src.test"
ORIGINAL = (b"From: News <news@src.test>\r\nTo: b@dest.test\r\nSubject: hello\r\n"
            b"Message-ID: <orig-1@src.test>\r\n\r\nbody\r\n")


async def sent(db, rcpts=("a@dest.test", "b@dest.test", "c@dest.test")) -> tuple[str, list]:
    acct = await make_account(db)
    rows = await enqueue(db, [Recipient(r, verp_domain=RETURN_PATH) for r in rcpts],
                         mail_from=SENDER, account_id=acct, now=T0, verp_key=KEY,
                         raw=ORIGINAL)
    async with db.session() as s:
        await s.execute(update(Delivery).values(status="delivered", finished_at=T0))
    return acct, rows


def remote_dsn(recipient: str, status: str, reply: Reply, action="failed") -> bytes:
    """A DSN as a remote MTA would send it, in the standard format."""
    return dsn.compose_dsn(
        "mx.dest.test", ORIGINAL, "bounces+x@cf-bounce.src.test",
        [dsn.DsnRecipient(recipient, action, status, reply, "mx.dest.test")],
        arrival_date=T0, postmaster_address="MAILER-DAEMON@mx.dest.test", now=T0)


def arf_report(recipient: str, return_path: str, feedback_type: str = "abuse") -> bytes:
    return (
        "From: FBL <fbl@isp.test>\r\nTo: <{rp}>\r\nSubject: FW: hello\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        "--b1\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {feedback_type}\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n"
        "Original-Mail-From: <{rp}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\n"
        "Reporting-MTA: dns; fbl.isp.test\r\nSource-IP: 192.0.2.1\r\n\r\n"
        "--b1\r\nContent-Type: message/rfc822\r\n\r\n"
        "Return-Path: <{rp}>\r\nFrom: News <news@src.test>\r\nTo: {rcpt}\r\n"
        "Subject: hello\r\nMessage-ID: <orig-1@src.test>\r\n\r\nbody\r\n--b1--\r\n"
    ).format(rp=return_path, rcpt=recipient).encode()


async def handle(db, rcpt: str, raw: bytes, now=T0 + timedelta(hours=1)):
    async with db.session() as s:
        return await bounces.handle_inbound_bounce(s, rcpt, raw, key=KEY, now=now)


async def get(db, model, *where):
    async with db.session() as s:
        return (await s.execute(select(model).where(*where))).scalars().all()


def test_verp_addresses_are_recognised_and_unforgeable():
    addr = verp_address(1234, "CF-Bounce.src.test", KEY)
    assert addr.startswith("bounces+1234-") and addr.endswith("@cf-bounce.src.test")
    assert bounces.is_bounce_address(addr, KEY) and bounces.parse_verp(addr, KEY) == 1234
    assert bounces.parse_verp(addr.upper(), KEY) == 1234  # case folded by a relay
    forged = addr.replace("bounces+1234-", "bounces+1235-")
    assert bounces.is_bounce_address(forged) and not bounces.is_bounce_address(forged, KEY)
    assert not bounces.is_bounce_address("news@src.test", KEY)


async def test_dsn_to_verp_address_marks_that_recipient_bounced_and_suppressed(
        db, dns_server, port, world):  # noqa: F811
    sink, _ = world
    acct = await make_account(db)
    w = workers(db, dns_server, port, Clock())
    rows = await enqueue(db, [Recipient(r, verp_domain=RETURN_PATH)
                              for r in ("a@dest.test", "b@dest.test", "c@dest.test")],
                         mail_from=SENDER, account_id=acct, now=T0, verp_key=KEY)
    await w.run_once()  # accepted by the remote MX ...
    got = sink.wait_for(3)
    b_row = rows[1]
    assert any(m.mail_from == b_row.envelope_from for m in got)
    # ... which later sends a DSN to the return path it saw for b.
    report = remote_dsn("b@dest.test", "5.1.1", Reply(550, "5.1.1", "user unknown"))
    result = await handle(db, b_row.envelope_from, report)
    assert (result.kind, result.delivery_id, result.outcome, result.status) == (
        "dsn", b_row.id, "bounced", "5.1.1")
    status = {d.recipient: d.status for d in await get(db, Delivery)}
    assert status == {"a@dest.test": "delivered", "b@dest.test": "bounced",
                      "c@dest.test": "delivered"}
    [sup] = await get(db, Suppression)
    assert (sup.email, sup.reason, sup.account_id, sup.id) == (
        "b@dest.test", "hard_bounce", acct, result.suppression_id)
    [att] = await get(db, DeliveryAttempt, DeliveryAttempt.result == "bounced")
    assert (att.delivery_id, att.reply_code, att.enhanced_code) == (b_row.id, 550, "5.1.1")
    [ev] = await get(db, Event, Event.status == "Delivery failed")
    assert ev.rcpt_to == "b@dest.test" and ev.details["async"] is True
    async with db.session() as s:  # the sending path now refuses b
        assert await suppression.is_suppressed(s, acct, "B@dest.test", "src.test", T0)


async def test_arf_complaint_marks_recipient_complained_and_protected(db):
    acct, rows = await sent(db)
    c_row = rows[2]
    result = await handle(db, c_row.envelope_from, arf_report("c@dest.test",
                                                              c_row.envelope_from))
    assert (result.kind, result.delivery_id, result.outcome) == ("arf", c_row.id, "complained")
    [row] = await get(db, Delivery, Delivery.id == c_row.id)
    assert row.status == "complained"
    [sup] = await get(db, Suppression)
    assert (sup.email, sup.reason, sup.read_only) == ("c@dest.test", "complaint", True)
    async with db.session() as s:
        with pytest.raises(suppression.SuppressionProtected):
            await suppression.remove(s, acct, email="c@dest.test")
    assert len(await get(db, Suppression)) == 1
    assert [e.status for e in await get(db, Event)] == ["Complained"]


async def test_arf_to_a_fixed_address_maps_through_the_original_return_path(db):
    _, rows = await sent(db)
    a_row = rows[0]
    result = await handle(db, "fbl@src.test", arf_report("a@dest.test", a_row.envelope_from))
    assert (result.delivery_id, result.outcome) == (a_row.id, "complained")


async def test_not_spam_feedback_changes_nothing(db):
    _, rows = await sent(db)
    result = await handle(db, rows[0].envelope_from,
                          arf_report("a@dest.test", rows[0].envelope_from, "not-spam"))
    assert result.kind == "ignored" and await get(db, Suppression) == []


async def test_forged_verp_address_is_refused(db):
    _, rows = await sent(db)
    forged = rows[0].envelope_from.replace(f"+{rows[0].id}-", f"+{rows[1].id}-")
    report = remote_dsn("b@dest.test", "5.1.1", Reply(550, "5.1.1", "user unknown"))
    assert (await handle(db, forged, report)).kind == "unknown_address"
    assert {d.status for d in await get(db, Delivery)} == {"delivered"}


async def test_non_standard_bounce_is_parsed_by_the_fallback(db):
    _, rows = await sent(db)
    b_row = rows[1]
    qmail = (b"From: MAILER-DAEMON@mx.dest.test\r\nTo: " + b_row.envelope_from.encode() +
             b"\r\nSubject: failure notice\r\n\r\n"
             b"Hi. This is the qmail-send program at mx.dest.test.\r\n"
             b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
             b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
             b"<b@dest.test>:\r\n550 5.1.1 sorry, no mailbox here by that name.\r\n\r\n"
             b"--- Below this line is a copy of the message.\r\n\r\n"
             b"To: a@dest.test\r\n")
    result = await handle(db, b_row.envelope_from, qmail)
    assert (result.kind, result.delivery_id, result.outcome) == ("fallback", b_row.id,
                                                                "bounced")
    [sup] = await get(db, Suppression)
    assert sup.email == "b@dest.test"


async def test_policy_bounce_and_delay_notice_do_not_suppress(db):
    _, rows = await sent(db)
    spam = remote_dsn("a@dest.test", "5.7.1", Reply(554, "5.7.1", "rejected as spam"))
    assert (await handle(db, rows[0].envelope_from, spam)).outcome == "bounced"
    delayed = remote_dsn("b@dest.test", "4.4.1", None, action="delayed")
    assert (await handle(db, rows[1].envelope_from, delayed)).kind == "delayed"
    assert await get(db, Suppression) == []
    status = {d.recipient: d.status for d in await get(db, Delivery)}
    assert status["a@dest.test"] == "bounced" and status["b@dest.test"] == "delivered"
