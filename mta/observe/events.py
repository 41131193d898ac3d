"""Activity log rows (`events`): one per message outcome and recipient.

`event_rows()` builds the rows (pure); `record_events()` writes them in a session the
caller owns, so an accepted message and its event commit together; `record_events_now()`
writes in a transaction of its own and never raises — a lost rejection event must not
turn a reply into a 451.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mta.store.db import Database
from mta.store.models import Event

__all__ = ["event_rows", "record_events", "record_events_now"]

log = logging.getLogger("mta.events")


def event_rows(*, direction: str, status: str, recipients: Sequence[str],
               mail_from: str | None = None, message_id: uuid.UUID | None = None,
               subject: str | None = None, auth: dict[str, Any] | None = None,
               details: dict[str, Any] | None = None,
               per_recipient: dict[str, dict[str, Any]] | None = None) -> list[Event]:
    """One Event per recipient (or one with no recipient). `auth` holds the summary
    results (`spf`, `dkim`, `dmarc`, `arc`); `per_recipient` adds zone/rule columns."""
    auth = auth or {}
    rows = []
    for rcpt in (list(recipients) or [None]):
        extra = (per_recipient or {}).get(rcpt or "", {})
        rows.append(Event(
            message_id=message_id, direction=direction, status=status, mail_from=mail_from,
            rcpt_to=rcpt, subject=(subject[:998] if subject else None),
            domain=rcpt.rpartition("@")[2] if rcpt else None,
            account_id=extra.get("account_id"), zone_id=extra.get("zone_id"),
            rule_id=extra.get("rule_id"), action=extra.get("action"),
            spf=auth.get("spf"), dkim=auth.get("dkim"), dmarc=auth.get("dmarc"),
            arc=auth.get("arc"), details=details))
    return rows


def record_events(session: AsyncSession, rows: list[Event]) -> None:
    session.add_all(rows)


async def record_events_now(db: Database, rows: list[Event]) -> bool:
    try:
        async with db.session() as s:
            s.add_all(rows)
        return True
    except Exception as exc:  # the activity log must not decide an SMTP reply
        log.warning("could not record %d event(s): %s", len(rows), exc,
                    extra={"event": "events.write_failed"})
        return False
