"""TLS reporting counters in PostgreSQL (table tls_report_sessions, RFC 8460).

`add_session_counts` adds a batch of counters in one upsert-increment statement;
`sessions_for_day` reads one day's counters for the daily report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from mta.store.db import Database
from mta.store.models import TlsReportRun, TlsReportSession

__all__ = ["add_session_counts", "claim_run", "domains_for_day", "finish_run", "policy_key",
           "sessions_for_day"]


def policy_key(policy_strings: Iterable[str]) -> str:
    """A short stable key for a policy's strings (the unique key cannot hold a list)."""
    return hashlib.sha256("\n".join(policy_strings).encode()).hexdigest()[:32]


async def add_session_counts(db: Database, counts: Iterable[tuple]) -> None:
    """Add `(key, n)` pairs, where key has the fields of mta.queue.tlsrpt.SessionKey."""
    rows = [{"day": k.day, "policy_domain": k.domain, "policy_type": k.policy_type,
             "policy_key": policy_key(k.policy_strings),
             "policy_strings": list(k.policy_strings), "result": k.result,
             "sending_ip": k.sending_ip, "receiving_mx": k.receiving_mx,
             "receiving_ip": k.receiving_ip, "count": n} for k, n in counts]
    if not rows:
        return
    stmt = insert(TlsReportSession).values(rows)
    stmt = stmt.on_conflict_do_update(
        constraint="uq_tls_report_sessions_counter",
        set_={"count": TlsReportSession.count + stmt.excluded.count})
    async with db.session() as s:
        await s.execute(stmt)


async def sessions_for_day(db: Database, day: date,
                           domain: str | None = None) -> list[TlsReportSession]:
    q = select(TlsReportSession).where(TlsReportSession.day == day)
    if domain is not None:
        q = q.where(TlsReportSession.policy_domain == domain)
    async with db.session() as s:
        return list((await s.execute(q.order_by(TlsReportSession.id))).scalars())


async def domains_for_day(db: Database, day: date) -> list[str]:
    q = (select(TlsReportSession.policy_domain).where(TlsReportSession.day == day)
         .distinct().order_by(TlsReportSession.policy_domain))
    async with db.session() as s:
        return list((await s.execute(q)).scalars())


async def claim_run(db: Database, day: date, owner: str, now: datetime,
                    lease: timedelta) -> bool:
    """Take `day`'s reports for `owner` until now + lease: True when no one else holds
    them and they were not sent yet (a lease that ran out is anyone's again)."""
    stmt = insert(TlsReportRun).values(day=day, lease_owner=owner, lease_until=now + lease)
    stmt = stmt.on_conflict_do_update(
        index_elements=["day"],
        set_={"lease_owner": owner, "lease_until": now + lease},
        where=(TlsReportRun.finished_at.is_(None)
               & ((TlsReportRun.lease_until < now) | (TlsReportRun.lease_owner == owner))),
    ).returning(TlsReportRun.day)
    async with db.session() as s:
        return (await s.execute(stmt)).first() is not None


async def finish_run(db: Database, day: date, owner: str, now: datetime,
                     summary: dict) -> None:
    async with db.session() as s:
        await s.execute(update(TlsReportRun).where(
            TlsReportRun.day == day, TlsReportRun.lease_owner == owner).values(
            finished_at=now, summary=summary))
