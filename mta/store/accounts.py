"""Finding an account by what an operator types: its id or its name."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.store.models import Account

__all__ = ["resolve_account"]


async def resolve_account(session: AsyncSession, ref: str) -> Account | None:
    """The one account whose id or name is `ref`."""
    rows = (await session.execute(select(Account).where(
        or_(Account.id == ref, Account.name == ref)).limit(2))).scalars().all()
    return rows[0] if len(rows) == 1 else None
