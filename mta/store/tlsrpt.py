"""TLS reporting counters in PostgreSQL (table tls_report_sessions, RFC 8460).

`add_session_counts` adds a batch of counters in one upsert-increment statement;
`sessions_for_day` reads one day's counters for the daily report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from mta.store.db import Database
from mta.store.models import TlsReportSession

__all__ = ["add_session_counts", "policy_key", "sessions_for_day"]


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
