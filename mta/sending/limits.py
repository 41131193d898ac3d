"""Sending rate limits and daily quotas, shared by every node through PostgreSQL.

Job: count accepted emails per account and per sending domain in fixed windows (a short
rate window and the UTC day) and refuse a send that would go past a limit with
E_RATE_LIMIT_EXCEEDED or E_DAILY_LIMIT_EXCEEDED (REST 429/10004).

What counts ([Pricing], [Limits]): one email per accepted recipient. Recipients that are
verified destination addresses of the account never count, nor do recipients refused
for suppression; hard bounces do (they were accepted). The caller passes only the
recipients that count.

How it stays correct across nodes: a counter is one row of `send_counters`, keyed by
(scope, key, period, window start), and is bumped with one statement,
`INSERT ... ON CONFLICT DO UPDATE SET count = count + n WHERE count + n <= limit
RETURNING count`, so two nodes can never both take the last unit: PostgreSQL's row
lock orders them and the second sees the first's increment. `consume()` runs inside the
transaction that enqueues the message, after everything else, so a send that fails to
commit gives its units back and the row lock is held only until that commit.
`precheck()` is a lock-free read before the costly work (MIME, DKIM), so a client that
is already over its limit is refused cheaply.

Settings: the optional `sending` section (see `SendingLimits.from_settings`); a limit of
0 turns that counter off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from mta.config import copy_section
from mta.errors import MtaError

__all__ = ["CounterKey", "SendingLimits", "consume", "counter_keys", "precheck", "purge_old"]


@dataclass
class SendingLimits:
    """Per-account and per-sending-domain limits. Defaults are meant for a single
    operator's own applications: generous enough never to surprise, tight enough to stop
    a runaway loop or a leaked token from sending a million messages."""

    rate_window: float = 60.0  # seconds
    account_rate: int = 1200  # emails per rate window per account (20/s)
    domain_rate: int = 0  # emails per rate window per sending domain; 0 = no limit
    account_daily: int = 100_000  # emails per UTC day per account
    domain_daily: int = 0  # emails per UTC day per sending domain; 0 = no limit

    @classmethod
    def from_settings(cls, settings: Any) -> SendingLimits:
        """Values from an optional `sending` config section with these names."""
        limits = cls()
        copy_section(limits, getattr(settings, "sending", None))
        return limits


@dataclass(frozen=True)
class CounterKey:
    scope: str  # account | domain
    key: str
    period: str  # rate | day
    window_start: datetime
    limit: int

    @property
    def code(self) -> str:
        return "E_DAILY_LIMIT_EXCEEDED" if self.period == "day" else "E_RATE_LIMIT_EXCEEDED"


def _window(now: datetime, seconds: float) -> datetime:
    epoch = int(now.timestamp())
    size = max(int(seconds), 1)
    return datetime.fromtimestamp(epoch - epoch % size, UTC)


def counter_keys(limits: SendingLimits, account_id: str, domain: str | None,
                 now: datetime) -> list[CounterKey]:
    """The counters a send by `account_id` from `domain` touches, enabled ones only.
    Always in the same order (account before domain, rate before day), so concurrent
    transactions lock rows in one order and cannot deadlock."""
    rate_start = _window(now, limits.rate_window)
    day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    keys = [CounterKey("account", account_id, "rate", rate_start, limits.account_rate),
            CounterKey("account", account_id, "day", day_start, limits.account_daily)]
    if domain:
        keys += [CounterKey("domain", domain, "rate", rate_start, limits.domain_rate),
                 CounterKey("domain", domain, "day", day_start, limits.domain_daily)]
    return [k for k in keys if k.limit > 0]


def _refusal(key: CounterKey) -> MtaError:
    what = "account" if key.scope == "account" else f"sending domain {key.key}"
    if key.period == "day":
        return MtaError("E_DAILY_LIMIT_EXCEEDED",
                        f"Daily sending limit of {key.limit} emails reached for this {what}.")
    return MtaError("E_RATE_LIMIT_EXCEEDED",
                    f"Sending rate limit of {key.limit} emails per window reached for "
                    f"this {what}; try again later.")


_READ = text("SELECT count FROM send_counters WHERE scope = :scope AND key = :key "
             "AND period = :period AND window_start = :window_start")

_BUMP = text("""
INSERT INTO send_counters (scope, key, period, window_start, count)
VALUES (:scope, :key, :period, :window_start, :n)
ON CONFLICT (scope, key, period, window_start)
DO UPDATE SET count = send_counters.count + EXCLUDED.count
WHERE send_counters.count + EXCLUDED.count <= :limit
RETURNING count
""")


async def precheck(session: AsyncSession, keys: list[CounterKey], n: int) -> None:
    """Refuse early (without locking) when a counter is already too full for `n`."""
    if n <= 0:
        return
    for key in keys:
        current = (await session.execute(_READ, _params(key))).scalar()
        if (current or 0) + n > key.limit:
            raise _refusal(key)


async def consume(session: AsyncSession, keys: list[CounterKey], n: int) -> None:
    """Take `n` units from every counter in the caller's transaction, or raise (the
    caller's rollback then returns the units already taken)."""
    if n <= 0:
        return
    for key in keys:
        if n > key.limit:
            raise _refusal(key)
        row = (await session.execute(_BUMP, {**_params(key), "n": n,
                                             "limit": key.limit})).first()
        if row is None:
            raise _refusal(key)
    if random.random() < 0.001:  # old windows are useless; prune now and then
        await purge_old(session, keys[0].window_start if keys else None)


async def purge_old(session: AsyncSession, now: datetime | None = None) -> int:
    """Delete counters of windows that ended more than two days ago."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=2)
    res = await session.execute(text("DELETE FROM send_counters WHERE window_start < :c"),
                                {"c": cutoff})
    return res.rowcount or 0


def _params(key: CounterKey) -> dict[str, Any]:
    return {"scope": key.scope, "key": key.key, "period": key.period,
            "window_start": key.window_start}
