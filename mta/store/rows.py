"""Complete row dicts for the multi-row INSERTs of the hot paths (`mta.store.commit`).

A multi-row INSERT needs every row of a table to name the same columns, so a row here
names all of them: what the caller gives, the model's Python default (ids), the current
time for timestamp columns the database would default to `now()`, and None for the
remaining nullable ones. A NOT NULL column with neither a value nor a default is an error
of the caller, raised here rather than as a database error after the 250 was decided.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Table, text

from mta.store.models import (
    Delivery,
    DeliveryAttempt,
    DmarcReportReceived,
    DmarcResultRow,
    Event,
    Message,
    TlsReportReceived,
)

__all__ = ["ATTEMPTS", "DELIVERIES", "EVENTS", "MESSAGES", "NEXT_DELIVERY_IDS", "full_row"]

MESSAGES: Table = Message.__table__  # type: ignore[assignment]
DELIVERIES: Table = Delivery.__table__  # type: ignore[assignment]
ATTEMPTS: Table = DeliveryAttempt.__table__  # type: ignore[assignment]
EVENTS: Table = Event.__table__  # type: ignore[assignment]

# Delivery ids are taken before the INSERT, so a VERP address or an event can carry its
# row's id without a second statement.
NEXT_DELIVERY_IDS = text("SELECT nextval(pg_get_serial_sequence('deliveries', 'id')) "
                         "FROM generate_series(1, :n)")

_SERIAL = {id(t): t.c.id for t in (DELIVERIES, ATTEMPTS, EVENTS, DmarcResultRow.__table__,
                                    DmarcReportReceived.__table__,
                                    TlsReportReceived.__table__)}


def full_row(table: Table, now: datetime | None = None, /, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for col in table.columns:
        if col.key in values:
            row[col.key] = values.pop(col.key)
        elif col is _SERIAL.get(id(table)):
            continue  # bigserial: the database numbers it
        elif col.default is not None and callable(getattr(col.default, "arg", None)):
            row[col.key] = col.default.arg(None)
        elif col.server_default is not None and isinstance(col.type, DateTime):
            row[col.key] = now or datetime.now(UTC)
        elif col.nullable:
            row[col.key] = None
        else:
            raise ValueError(f"{table.name}.{col.key} needs a value")
    if values:
        raise ValueError(f"{table.name} has no column(s) {sorted(values)}")
    return row
