"""The retention job on a real PostgreSQL: old events and finished old messages go, in
bounded batches; a message with a delivery still queued or held, or waiting for a
handler, stays; old reports (received ones, our TLS counts and sent-report records) go;
the node service runs it on its own."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.node import NodeContext
from mta.observe.events import event_rows, record_events, record_events_now
from mta.observe.retention import RetentionJob, purge_events, run_once
from mta.queue.queue import Recipient, enqueue
from mta.store.models import (
    AuditEntry,
    Delivery,
    DeliveryAttempt,
    DmarcReportReceived,
    DmarcReportSent,
    Event,
    Message,
    TlsReportReceived,
    TlsReportRun,
    TlsReportSession,
)

NOW = datetime.now(UTC)


def _message(age: timedelta, status: str = "forwarded") -> Message:
    return Message(id=uuid.uuid4(), direction="outbound", source="api",
                   mail_from="a@ours.test", rcpt_to=["b@dest.test"], raw=b"Subject: x\r\n\r\nx",
                   size=15, received_at=NOW - age, status=status)


async def _store(db, msg: Message, delivery_status: str | None = None) -> Message:
    """The message through the queue's own enqueue, its delivery set to `status`."""
    async with db.session() as s:
        s.add(msg)
        await s.flush()
        if delivery_status is not None:
            (d,) = await enqueue(s, msg, [Recipient("b@dest.test", "bounces@ours.test")],
                                 now=msg.received_at)
            s.add(DeliveryAttempt(delivery_id=d.id, started_at=msg.received_at,
                                  finished_at=msg.received_at, result="delivered"))
            finished = (msg.received_at + timedelta(minutes=1)
                        if delivery_status not in ("queued", "held") else None)
            await s.execute(update(Delivery).where(Delivery.id == d.id).values(
                status=delivery_status, finished_at=finished))
        await record_events(s, event_rows(direction="outbound", status="Sent",
                                    recipients=["b@dest.test"], mail_from="a@ours.test",
                                    message_id=msg.id))
    return msg


async def _count(db, model, *where) -> int:
    async with db.session() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))
                ).scalar_one()


async def _age_events(db, older_than: timedelta) -> None:
    async with db.session() as s:
        await s.execute(update(Event).values(ts=NOW - older_than))


async def test_old_events_are_deleted_in_batches_and_recent_ones_kept(db):
    old = [r for i in range(25) for r in event_rows(
        direction="inbound", status="Rejected", recipients=[f"u{i}@ours.test"],
        ts=NOW - timedelta(days=40))]
    recent = event_rows(direction="inbound", status="Forwarded", recipients=["v@ours.test"],
                        ts=NOW - timedelta(days=30))
    assert await record_events_now(db, old + recent)
    deleted = await purge_events(db, NOW - timedelta(days=31), batch=10)  # 10 + 10 + 5
    assert deleted == 25
    assert await _count(db, Event) == 1
    assert await purge_events(db, NOW - timedelta(days=31), batch=10) == 0


async def test_finished_old_messages_go_active_and_recent_ones_stay(db):
    s = Settings()
    s.observe.retention_batch = 2
    delivered = await _store(db, _message(timedelta(days=40)), "delivered")
    failed = await _store(db, _message(timedelta(days=35)), "failed")
    no_delivery = await _store(db, _message(timedelta(days=33)))
    queued = await _store(db, _message(timedelta(days=40)), "queued")
    held = await _store(db, _message(timedelta(days=40)), "held")
    handler = await _store(db, _message(timedelta(days=40), status="handler_pending"))
    recent = await _store(db, _message(timedelta(days=5)), "delivered")
    await _age_events(db, timedelta(days=2))
    async with db.session() as sess:
        sess.add(AuditEntry(actor="cli:test", action="create", resource_type="x",
                            resource_id="1", ts=NOW - timedelta(days=400)))

    report = await run_once(db, s, NOW)
    assert (report.events, report.messages, report.audit) == (0, 3, 0)
    kept = set(await _ids(db))
    assert kept == {queued.id, held.id, handler.id, recent.id}
    assert not kept & {delivered.id, failed.id, no_delivery.id}
    # Deliveries and attempts of deleted messages went with them (cascade); the queued
    # delivery is untouched.
    assert await _count(db, Delivery) == 3
    assert await _count(db, Delivery, Delivery.status == "queued") == 1
    assert await _count(db, DeliveryAttempt) == 3
    # Events of deleted messages that are still within retention stay, without a message.
    assert await _count(db, Event) == 7
    assert await _count(db, Event, Event.message_id.is_(None)) == 3
    # Once the queued delivery finishes, its message goes on the next run.
    async with db.session() as sess:
        await sess.execute(update(Delivery).where(Delivery.message_id == queued.id)
                           .values(status="expired", finished_at=NOW))
    assert (await run_once(db, s, NOW)).messages == 1
    # The audit log is kept unless observe.audit_retention says otherwise.
    assert await _count(db, AuditEntry) == 1
    s.observe.audit_retention = 365 * 86400
    assert (await run_once(db, s, NOW)).audit == 1


async def _reports_aged(db, age: timedelta) -> None:
    """One row of every report table, `age` old: two received reports (one of them
    invalid, without a period), a day's TLS session count and run, a sent DMARC report."""
    when = NOW - age
    async with db.session() as s:
        s.add_all([
            DmarcReportReceived(received_at=when, filename="r.xml", status="ok",
                                report_id=f"d-{age.days}", period_begin=when, records=[]),
            TlsReportReceived(received_at=when, filename="t.json", status="invalid",
                              error="not JSON", policies=[]),
            TlsReportSession(day=when.date(), policy_domain="dest.test", policy_type="sts",
                             policy_key="k", policy_strings=[], result="success", count=3),
            TlsReportRun(day=when.date(), lease_owner="n1", lease_until=when),
            DmarcReportSent(policy_domain="ours.test", period_begin=when,
                            period_end=when + timedelta(days=1), report_id=f"s-{age.days}",
                            node_id="n1", destinations=[]),
        ])


REPORT_TABLES = (DmarcReportReceived, TlsReportReceived, TlsReportSession, TlsReportRun,
                 DmarcReportSent)


async def test_reports_older_than_their_retention_go_and_recent_ones_stay(db):
    s = Settings()
    s.observe.retention_batch = 2
    for days in (400, 367, 300):
        await _reports_aged(db, timedelta(days=days))
    s.observe.report_retention = None  # kept forever
    assert (await run_once(db, s, NOW)).reports == 0
    s.observe.report_retention = 366 * 86400  # the default
    assert Settings().observe.report_retention == s.observe.report_retention
    assert (await run_once(db, s, NOW)).reports == 2 * len(REPORT_TABLES)
    for table in REPORT_TABLES:
        assert await _count(db, table) == 1, table.__name__
    assert (await run_once(db, s, NOW)).reports == 0


async def _ids(db) -> list[uuid.UUID]:
    async with db.session() as s:
        return list((await s.execute(select(Message.id))).scalars())


async def test_the_node_service_runs_the_job(db, db_url, monkeypatch):
    s = Settings()
    s.database.url = db_url
    s.observe.retention_interval = 1
    rows = event_rows(direction="inbound", status="Dropped", recipients=["w@ours.test"])
    rows[0]["ts"] = NOW - timedelta(days=32)
    assert await record_events_now(db, rows)
    ctx = NodeContext(settings=s, db=db, resolver=DnsResolver.from_settings(s.dns),
                      node_id="retention-test")
    monkeypatch.setattr("mta.background.random.uniform", lambda a, b: 0.05)
    job = RetentionJob(ctx)
    await job.start()
    try:
        for _ in range(100):
            if job.last_report is not None:
                break
            await asyncio.sleep(0.05)
        assert job.last_report is not None and job.last_report.events == 1
        assert job.describe()["event_retention_s"] == 31 * 86400
    finally:
        await job.stop()
    assert await _count(db, Event) == 0
    s.observe.retention_enabled = False
    off = RetentionJob(ctx)
    await off.start()
    await off.stop()
    assert off.last_report is None
