"""Zones: what a zone name may be, and the queries about a zone that routing and sending
share."""

from __future__ import annotations

from sqlalchemy import func, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from mta.store.models import RoutingDomain, SendingDomain

__all__ = ["zone_domain_count", "zone_name"]


async def zone_domain_count(session: AsyncSession, zone_id: str) -> int:
    """Distinct routing and sending domains of a zone ([Subdomains]: 30 combined)."""
    names = union(select(RoutingDomain.name).where(RoutingDomain.zone_id == zone_id),
                  select(SendingDomain.name).where(SendingDomain.zone_id == zone_id)).subquery()
    return int((await session.execute(select(func.count()).select_from(names))).scalar_one())


def zone_name(raw: str) -> str | None:
    """A zone apex, lower-cased; None when `raw` is not a domain name."""
    name = raw.strip().lower().rstrip(".")
    labels = name.split(".")
    if len(labels) < 2 or len(name) > 253 or not all(
            0 < len(x) <= 63 and x.replace("-", "").isalnum() for x in labels):
        return None
    return name
