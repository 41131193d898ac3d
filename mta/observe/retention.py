"""The retention job: activity events, finished messages, the DMARC and TLS reports others
sent us with our own reporting's records, and (optionally) audit entries older than their
retention (`observe.*` settings) are deleted, in bounded batches.

Every node runs it once (`RetentionJob`, a node service; under `--workers N` only in
worker 0); batches lock their rows with
SKIP LOCKED, so two nodes never fight over one row, and each batch is its own short
transaction.

A message is deleted only when it is older than `observe.message_retention`, is not
waiting for a handler (`handler_pending`), and none of its deliveries is active
(`queued` or `held`, mta.store.models.ACTIVE_STATUSES). Deleting it deletes its deliveries
and attempts (ON DELETE CASCADE); events that still point at it keep their row with no
message. The deliveries are locked before the message is deleted, in the order the
queue and the bounce handler lock them (delivery, then message), and their state is
read again under the lock, so a delivery requeued at that moment keeps its message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Exists, delete, exists, select, tuple_

from mta.background import LoopService, run_every
from mta.store.db import Database
from mta.store.models import (
    ACTIVE_STATUSES,
    AuditEntry,
    Delivery,
    DmarcReportReceived,
    DmarcReportSent,
    Event,
    Message,
    TlsReportReceived,
    TlsReportRun,
    TlsReportSession,
)

__all__ = ["RetentionJob", "RetentionReport", "purge_events", "purge_messages", "purge_older",
           "purge_reports", "run_once"]

log = logging.getLogger("mta.retention")

PENDING_MESSAGE_STATUSES = ("handler_pending",)
MAX_BATCHES_PER_RUN = 1000  # a run stops after this many batches; the next one goes on


@dataclass
class RetentionReport:
    """What one run deleted: rows of each kind (`reports`: of every report table)."""

    events: int = 0
    messages: int = 0
    audit: int = 0
    reports: int = 0

    def total(self) -> int:
        return self.events + self.messages + self.audit + self.reports


async def _batches(step, batch: int) -> int:
    """Run `step(batch)` -> (deleted, more) while it says there is more (at most
    MAX_BATCHES_PER_RUN times); the total deleted."""
    deleted = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        n, more = await step(batch)
        deleted += n
        if not more or n == 0:
            break
        await asyncio.sleep(0)  # let the node's other work in between batches
    return deleted


async def purge_older(db: Database, column: Column, cutoff: Any, batch: int) -> int:
    """Delete the rows of `column`'s table whose `column` is before `cutoff`, oldest first,
    `batch` rows a transaction; rows another node holds are left for its next run."""
    table = column.table
    key = list(table.primary_key.columns)

    async def step(limit: int) -> tuple[int, bool]:
        doomed = (select(*key).where(column < cutoff).order_by(column).limit(limit)
                  .with_for_update(skip_locked=True))
        async with db.session() as s:
            n = (await s.execute(delete(table).where(tuple_(*key).in_(doomed)))).rowcount or 0
        return n, n == limit
    return await _batches(step, batch)


async def purge_events(db: Database, cutoff: datetime, batch: int) -> int:
    return await purge_older(db, Event.__table__.c.ts, cutoff, batch)


async def purge_reports(db: Database, cutoff: datetime, batch: int) -> int:
    """The DMARC and TLS reports others sent us, received before `cutoff`, and our own
    reporting's records (TLS session counts, sent-report bookkeeping) of days before it."""
    deleted = 0
    for column, before in (
            (DmarcReportReceived.__table__.c.received_at, cutoff),
            (TlsReportReceived.__table__.c.received_at, cutoff),
            (DmarcReportSent.__table__.c.period_begin, cutoff),
            (TlsReportSession.__table__.c.day, cutoff.date()),
            (TlsReportRun.__table__.c.day, cutoff.date())):
        deleted += await purge_older(db, column, before, batch)
    return deleted


def _active_delivery(message_id) -> Exists:
    return exists().where(Delivery.message_id == message_id,
                          Delivery.status.in_(ACTIVE_STATUSES))


async def purge_messages(db: Database, cutoff: datetime, batch: int) -> int:
    deletable = [Message.received_at < cutoff,
                 Message.status.not_in(PENDING_MESSAGE_STATUSES)]

    async def step(limit: int) -> tuple[int, bool]:
        async with db.session() as s:
            candidates = list((await s.execute(
                select(Message.id).where(*deletable, ~_active_delivery(Message.id))
                .order_by(Message.received_at).limit(limit))).scalars())
            if not candidates:
                return 0, False
            # Lock the deliveries first (the order other writers use), then read their
            # state again: a delivery requeued since the scan keeps its message.
            rows = (await s.execute(
                select(Delivery.message_id, Delivery.status)
                .where(Delivery.message_id.in_(candidates)).with_for_update())).all()
            busy = {mid for mid, status in rows if status in ACTIVE_STATUSES}
            ids = [m for m in candidates if m not in busy]
            locked = list((await s.execute(
                select(Message.id).where(Message.id.in_(ids), *deletable)
                .with_for_update(skip_locked=True))).scalars()) if ids else []
            if locked:
                await s.execute(delete(Message).where(Message.id.in_(locked)))
        # Rows skipped here (busy, locked) are left for the next run.
        return len(locked), len(candidates) == limit
    return await _batches(step, batch)


async def run_once(db: Database, settings, now: datetime) -> RetentionReport:
    """One pass over every kind of row the settings give a retention."""
    o = settings.observe
    report = RetentionReport()
    report.events = await purge_events(db, now - timedelta(seconds=o.event_retention),
                                       o.retention_batch)
    report.messages = await purge_messages(db, now - timedelta(seconds=o.message_retention),
                                           o.retention_batch)
    if o.audit_retention is not None:
        report.audit = await purge_older(
            db, AuditEntry.__table__.c.ts, now - timedelta(seconds=o.audit_retention),
            o.retention_batch)
    if o.report_retention is not None:
        report.reports = await purge_reports(
            db, now - timedelta(seconds=o.report_retention), o.retention_batch)
    return report


class RetentionJob(LoopService):
    """A node service running `run_once` every `observe.retention_interval`. `stop`
    cancels a batch under way, which rolls back: nothing half-done remains."""

    name = "retention"

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.last_run: datetime | None = None
        self.last_report: RetentionReport | None = None

    async def start(self) -> None:
        if self.ctx.settings.observe.retention_enabled:
            await super().start()

    def describe(self) -> dict:
        o = self.ctx.settings.observe
        return {"worker": self.name, "enabled": o.retention_enabled,
                "event_retention_s": o.event_retention,
                "message_retention_s": o.message_retention,
                "audit_retention_s": o.audit_retention,
                "report_retention_s": o.report_retention, "interval_s": o.retention_interval}

    async def run(self) -> RetentionReport:
        report = await run_once(self.ctx.db, self.ctx.settings, self.ctx.clock())
        self.last_run, self.last_report = self.ctx.clock(), report
        log.debug("retention run", extra={"event": "retention.ran", "deleted": report.total()})
        if report.total():
            log.info("retention deleted %d event(s), %d message(s), %d audit entr(ies), "
                     "%d report row(s)", report.events, report.messages, report.audit,
                     report.reports,
                     extra={"event": "retention.deleted", "events": report.events,
                            "messages": report.messages, "audit": report.audit,
                            "reports": report.reports})
        return report

    async def _loop(self) -> None:
        # Nodes started together spread their first runs over a short while.
        await run_every(self.run, max(float(self.ctx.settings.observe.retention_interval), 1.0),
                        spread=60.0, failed=lambda exc: log.warning(
                            "retention run failed: %s", exc,
                            extra={"event": "retention.failed"}))
