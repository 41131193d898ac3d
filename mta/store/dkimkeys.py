"""DKIM keys over time: which key signs now, which are published, and rotation.

A domain has, per purpose (`sending`, `forwarding`) and algorithm, a family of keys.
Each key signs from its start (`not_before`, else `created_at`) until a newer key of the
family starts, and stays published — in DNS, so the mail it signed still verifies —
until `retired_at`. A rotation adds the new key with a start in the future (its TXT
record is published first) and sets the old keys' `retired_at` to that start plus a
grace period. The rule is applied at signing time from cached `Schedule`s, so a node
switches keys at the announced moment without asking the database again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.store.models import DkimKey

__all__ = ["FORWARDING", "SENDING", "Schedule", "family", "published", "rotation_pending",
           "schedule", "signers", "signing_selectors", "state", "supersede"]

SENDING, FORWARDING = "sending", "forwarding"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When one key signs and how long it is published (a snapshot of its row)."""

    id: int
    algorithm: str
    selector: str
    not_before: datetime | None  # None: signs from the moment it exists
    created: datetime
    retires: datetime | None

    @property
    def starts(self) -> datetime:
        return self.not_before or self.created

    def started(self, now: datetime) -> bool:
        # Not `created <= now`: a key made a moment ago by the database's clock signs
        # at once, whatever the caller's clock said before it asked for one.
        return self.not_before is None or self.not_before <= now

    def published(self, now: datetime) -> bool:
        return self.retires is None or self.retires > now


def schedule(row: DkimKey) -> Schedule:
    retires = row.retired_at
    if not row.active and retires is None:  # withdrawn before rotation existed
        retires = row.created_at
    return Schedule(row.id, row.algorithm, row.selector, row.not_before, row.created_at,
                    retires)


def signers(items: Iterable[tuple[Schedule, T]], now: datetime) -> list[T]:
    """The keys that sign at `now`: per algorithm, the published key that started last
    (RSA first: the signature every verifier knows)."""
    best: dict[str, tuple[Schedule, T]] = {}
    for sched, item in items:
        if not sched.started(now) or not sched.published(now):
            continue
        held = best.get(sched.algorithm)
        if held is None or (sched.starts, sched.id) > (held[0].starts, held[0].id):
            best[sched.algorithm] = (sched, item)
    return [best[a][1] for a in sorted(best, reverse=True)]


def state(sched: Schedule, family_: Iterable[Schedule], now: datetime) -> str:
    """pending (published, signs later), active (signs now), retiring (published for
    the mail it signed), retired (its record can go)."""
    if not sched.published(now):
        return "retired"
    if not sched.started(now):
        return "pending"
    same = [s for s in family_ if s.algorithm == sched.algorithm]
    return "active" if signers(((s, s) for s in same), now) == [sched] else "retiring"


async def family(session: AsyncSession, domain: str, purpose: str | None = None,
                 algorithm: str | None = None) -> list[DkimKey]:
    """Every key of `domain` (of one purpose and algorithm when given), oldest first."""
    query = select(DkimKey).where(DkimKey.domain == domain)
    if purpose is not None:
        query = query.where(DkimKey.purpose == purpose)
    if algorithm is not None:
        query = query.where(DkimKey.algorithm == algorithm)
    rows = (await session.execute(query.order_by(DkimKey.id))).scalars().all()
    return sorted(rows, key=lambda r: (schedule(r).starts, r.id))


async def published(session: AsyncSession, domain: str, purpose: str,
                    now: datetime) -> list[DkimKey]:
    """The keys of `domain` whose TXT record must be in DNS at `now`."""
    return [r for r in await family(session, domain, purpose)
            if schedule(r).published(now)]


async def signing_selectors(session: AsyncSession, domains: Collection[str], purpose: str,
                            now: datetime) -> dict[str, str]:
    """Per domain of `domains`, the selector of the RSA key that signs at `now` (a
    rotation changes it when the new key takes over); a domain without one is left out."""
    if not domains:
        return {}
    rows = (await session.execute(select(DkimKey).where(
        DkimKey.domain.in_(sorted(domains)), DkimKey.purpose == purpose,
        DkimKey.algorithm == "rsa"))).scalars()
    keys: dict[str, list[tuple[Schedule, str]]] = defaultdict(list)
    for r in rows:
        keys[r.domain].append((schedule(r), r.selector))
    return {domain: signing[0] for domain, items in keys.items()
            if (signing := signers(items, now))}


def rotation_pending(rows: Iterable[DkimKey], now: datetime) -> DkimKey | None:
    """A published key of the family that has not started signing yet."""
    return next((r for r in rows if schedule(r).published(now)
                 and not schedule(r).started(now)), None)


def supersede(rows: Iterable[DkimKey], starts: datetime, retires: datetime,
              now: datetime) -> list[DkimKey]:
    """Give every published key of a family that a key starting at `starts` replaces
    (and that no earlier rotation replaced) the end of its grace period; the keys
    changed."""
    changed = []
    for r in rows:
        sched = schedule(r)
        if sched.published(now) and sched.starts <= starts and r.retired_at is None:
            r.retired_at = retires
            changed.append(r)
    return changed
