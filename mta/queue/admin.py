"""Operator actions on the delivery queue (`mta queue ...`) and its depth.

Job: requeue, hold, release and purge deliveries chosen by id, destination domain or
message (with its forwarded copies), and report the queue's depth (`queue_stats`, also
sampled for the metrics by the delivery workers). Each function runs in the caller's
session; `queue.py` keeps enqueue, claim, backoff and outcomes.
Every function takes `now` (an aware UTC datetime) so tests drive time with a clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mta.queue.queue import due_filter
from mta.store.models import ACTIVE_STATUSES, Delivery, Message

__all__ = ["hold", "purge", "queue_stats", "release_held", "requeue"]


def _select_filter(stmt, ids: Sequence[int] | None, domain: str | None,
                   message_id: uuid.UUID | None):
    if ids:
        stmt = stmt.where(Delivery.id.in_(list(ids)))
    if domain:
        stmt = stmt.where(Delivery.domain == domain.lower())
    if message_id:  # the message and its forwarded copies
        stmt = stmt.where(Delivery.message_id.in_(select(Message.id).where(
            or_(Message.id == message_id, Message.origin_id == message_id))))
    return stmt


async def requeue(session: AsyncSession, *, now: datetime, ids: Sequence[int] | None = None,
                  domain: str | None = None, message_id: uuid.UUID | None = None,
                  include_failed: bool = False) -> int:
    """Make matching queued (or held; with include_failed also failed/expired) rows due
    now. The attempt count and the creation time are kept: the backoff after this try
    continues its schedule, and an expired row revived this way gets one more try."""
    statuses = ["queued", "held"] + (["failed", "expired"] if include_failed else [])
    stmt = _select_filter(
        update(Delivery).where(Delivery.status.in_(statuses)), ids, domain, message_id)
    res = await session.execute(stmt.values(status="queued", next_attempt_at=now,
                                            finished_at=None))
    return res.rowcount or 0


async def hold(session: AsyncSession, *, now: datetime, ids: Sequence[int] | None = None,
               domain: str | None = None, message_id: uuid.UUID | None = None
               ) -> tuple[int, int]:
    """Stop matching queued rows from being tried (status `held`; workers claim only
    `queued`) until `release`. A row a worker holds a lease on finishes its attempt
    first and is not held. Returns (held, in flight)."""
    if not (ids or domain or message_id):
        raise ValueError("hold needs ids, a domain or a message id")
    idle = or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at <= now)
    res = await session.execute(_select_filter(
        update(Delivery).where(Delivery.status == "queued", idle), ids, domain, message_id)
        .values(status="held", lease_owner=None, lease_expires_at=None))
    busy = (await session.execute(_select_filter(
        select(func.count()).select_from(Delivery).where(Delivery.status == "queued"),
        ids, domain, message_id))).scalar_one()
    return res.rowcount or 0, busy


async def release_held(session: AsyncSession, *, now: datetime, ids: Sequence[int] | None = None,
                  domain: str | None = None, message_id: uuid.UUID | None = None) -> int:
    """Held rows back in the queue, due now (their attempt count and age are kept, so
    the retry schedule and the give-up time go on)."""
    if not (ids or domain or message_id):
        raise ValueError("release needs ids, a domain or a message id")
    res = await session.execute(_select_filter(
        update(Delivery).where(Delivery.status == "held"), ids, domain, message_id)
        .values(status="queued", next_attempt_at=now))
    return res.rowcount or 0


async def purge(session: AsyncSession, *, now: datetime, ids: Sequence[int] | None = None,
                domain: str | None = None, message_id: uuid.UUID | None = None,
                finished_before: datetime | None = None) -> int:
    """Remove work: queued/held rows matching the filters become `purged` (kept for the
    logs); with `finished_before`, finished rows older than that are deleted."""
    if finished_before is not None:
        res = await session.execute(_select_filter(
            delete(Delivery).where(Delivery.status.not_in(ACTIVE_STATUSES),
                                   Delivery.finished_at < finished_before),
            ids, domain, message_id))
        return res.rowcount or 0
    if not (ids or domain or message_id):
        raise ValueError("purge needs ids, a domain or a message id")
    res = await session.execute(_select_filter(
        update(Delivery).where(Delivery.status.in_(ACTIVE_STATUSES)), ids, domain, message_id)
        .values(status="purged", finished_at=now, lease_owner=None, lease_expires_at=None))
    return res.rowcount or 0


async def queue_stats(session: AsyncSession, *, now: datetime, full: bool = True) -> dict:
    """Depth of the queue by state and the age of the oldest due row. With `full` (the
    CLI) also held rows, the busiest domains and finished rows by status; without it
    (the periodic metrics sample) only what the partial due index covers, so sampling
    never scans the delivery history."""
    leased = and_(Delivery.lease_expires_at.is_not(None), Delivery.lease_expires_at > now)
    row = (await session.execute(select(
        func.count().filter(leased).label("in_flight"),
        func.count().filter(due_filter(now)).label("due"),
        func.count().filter(and_(Delivery.next_attempt_at > now, ~leased)).label("waiting"),
        func.min(Delivery.next_attempt_at).filter(due_filter(now)).label("oldest_due"),
        func.min(Delivery.created_at).label("oldest_created"))
        .where(Delivery.status == "queued"))).one()
    out: dict = {
        "depth": {"due": row.due, "waiting": row.waiting, "in_flight": row.in_flight},
        "oldest_due_seconds": (now - row.oldest_due).total_seconds() if row.oldest_due
        else 0.0,
        "oldest_queued_seconds": (now - row.oldest_created).total_seconds()
        if row.oldest_created else 0.0,
    }
    if not full:
        return out
    out["depth"]["held"] = (await session.execute(select(func.count()).where(
        Delivery.status == "held"))).scalar_one()
    domains = (await session.execute(
        select(Delivery.domain, func.count()).where(Delivery.status == "queued")
        .group_by(Delivery.domain).order_by(func.count().desc()).limit(10))).all()
    finished = (await session.execute(
        select(Delivery.status, func.count()).where(Delivery.status.not_in(ACTIVE_STATUSES))
        .group_by(Delivery.status))).all()
    out["top_domains"] = [{"domain": d, "queued": n} for d, n in domains]
    out["finished"] = {s: n for s, n in finished}
    return out
