"""Activity log rows (`events`): one per message outcome and recipient.

`event_rows()` builds the rows (pure: complete dicts for one multi-row INSERT);
`record_events()` writes them with the caller's session or connection, so an accepted
message and its events commit together (the hot paths put them in their `Unit` instead);
`record_events_now()` writes in a transaction of its own and never raises — a lost
rejection event must not turn a reply into a 451.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from mta.store.db import Database
from mta.store.rows import EVENTS, full_row

__all__ = ["EVENTS", "event_rows", "record_events", "record_events_now"]

log = logging.getLogger("mta.events")


def event_rows(*, direction: str, status: str, recipients: Sequence[str],
               mail_from: str | None = None, message_id: uuid.UUID | None = None,
               subject: str | None = None, auth: dict[str, Any] | None = None,
               details: dict[str, Any] | None = None,
               per_recipient: dict[str, dict[str, Any]] | None = None,
               ts: datetime | None = None) -> list[dict[str, Any]]:
    """One row per recipient (or one with no recipient). `auth` holds the summary
    results (`spf`, `dkim`, `dmarc`, `arc`); `per_recipient` adds zone/rule columns."""
    auth = auth or {}
    rows = []
    for rcpt in (list(recipients) or [None]):
        extra = (per_recipient or {}).get(rcpt or "", {})
        rows.append(full_row(
            EVENTS, ts,
            message_id=message_id, direction=direction, status=status, mail_from=mail_from,
            rcpt_to=rcpt, subject=(subject[:998] if subject else None),
            domain=rcpt.rpartition("@")[2] if rcpt else None,
            account_id=extra.get("account_id"), zone_id=extra.get("zone_id"),
            rule_id=extra.get("rule_id"), action=extra.get("action"),
            spf=auth.get("spf"), dkim=auth.get("dkim"), dmarc=auth.get("dmarc"),
            arc=auth.get("arc"), details=details))
    return rows


async def record_events(executor: Any, rows: list[dict[str, Any]]) -> None:
    """`executor`: an AsyncSession or AsyncConnection in the caller's transaction."""
    if rows:
        await executor.execute(EVENTS.insert(), rows)


async def record_events_now(db: Database, rows: list[dict[str, Any]]) -> bool:
    try:
        async with db.connection() as conn:
            await record_events(conn, rows)
        return True
    except Exception as exc:  # the activity log must not decide an SMTP reply
        log.warning("could not record %d event(s): %s", len(rows), exc,
                    extra={"event": "events.write_failed"})
        return False
