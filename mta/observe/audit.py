"""The audit log: who changed which configuration, when, from what to what.

Every configuration change (API, CLI, YAML apply) calls `record` inside the same
transaction as the change, so the log never claims a change that rolled back and
never misses one that committed. `actor` is `token:<id>` for API calls and
`cli:<unix user>` for the command line. `before`/`after` are JSON snapshots of the
resource (None for a create's before and a delete's after); secrets never go in them.
"""

from __future__ import annotations

import getpass
import os
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mta.store.models import AuditEntry

__all__ = ["cli_actor", "record", "record_row", "snapshot", "update_row"]


def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid())
    return f"cli:{user}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return None  # hashes and keys stay out of the log
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def snapshot(row: Any, fields: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The named attributes of a model row as JSON-ready values."""
    return {f: _jsonable(getattr(row, f, None)) for f in fields}


def record(session: AsyncSession, *, actor: str, action: str, resource_type: str,
           resource_id: str | None, account_id: str | None = None,
           before: dict | None = None, after: dict | None = None) -> AuditEntry:
    """Add one audit row to `session` (committed with the change it describes)."""
    entry = AuditEntry(actor=actor, account_id=account_id, action=action[:32],
                       resource_type=resource_type, resource_id=resource_id,
                       before=_jsonable(before), after=_jsonable(after))
    session.add(entry)
    return entry


def record_row(session: AsyncSession, actor: str, action: str, resource_type: str, row: Any,
               fields: tuple[str, ...] | list[str], *, account_id: str | None,
               before: dict | None = None) -> AuditEntry:
    """`record` for a change to one model row: `fields` of the row after the change (and,
    for a delete, before it, with nothing after)."""
    deleted = action == "delete"
    return record(session, actor=actor, action=action, resource_type=resource_type,
                  resource_id=row.id, account_id=account_id,
                  before=snapshot(row, fields) if deleted else before,
                  after=None if deleted else snapshot(row, fields))


async def update_row(session: AsyncSession, actor: str, resource_type: str, row: Any,
                     changes: dict[str, Any], fields: tuple[str, ...] | list[str], *,
                     account_id: str | None, refresh: bool = False) -> AuditEntry:
    """Set `changes` on `row`, flush (then reload it when `refresh`: columns the database
    computes) and record the update with `fields` before and after."""
    before = snapshot(row, fields)
    for name, value in changes.items():
        setattr(row, name, value)
    await session.flush()
    if refresh:
        await session.refresh(row)
    return record_row(session, actor, "update", resource_type, row, fields,
                      account_id=account_id, before=before)
