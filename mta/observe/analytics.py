"""Queries over the activity log (`events`) and the audit log, for the API and the CLI.

The reference exposes its activity log as per-event datasets and `...AdaptiveGroups`
aggregates grouped by dimensions ([Metrics and analytics]); we answer the same questions
with SQL on PostgreSQL:

- `list_events(session, f, offset, limit)`: one page of events matching an
  `EventFilter`, newest first (or oldest first), with the total count;
- `aggregate(session, f, dimensions, limit)`: counts grouped by dimensions — time
  buckets (`date`, `datetimeHour`, `datetimeMinute`, `datetimeFiveMinutes`,
  `datetimeFifteenMinutes`, through date_trunc/date_bin in UTC) and columns (`status`,
  `eventType`, `sendingDomain`, `spf`, `ruleMatched`, ...; see DIMENSIONS);
- `list_audit(session, f, offset, limit)`: audit entries, newest first.

Account scope: an event belongs to an account when it carries the account id, or when
it carries none (an SMTP-time rejection happens before routing knows the account) and
its recipient domain is one of the account's zones, routing domains or sending domains.

Derived fields, shared by rows and dimensions:
- eventType: `forward` for copies we forward, `reply` for handler replies, `newEmail`
  for other outbound mail, `incoming` for the rest (the reference's four values);
- sendingDomain: the domain of the envelope sender; errorCause: the error code or the
  reason recorded with the event; isNDR: the message is a DSN we generated.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Date,
    and_,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    text,
    union,
)
from sqlalchemy.ext.asyncio import AsyncSession

from mta.store.models import (
    AuditEntry,
    Event,
    Message,
    RoutingDomain,
    SendingDomain,
    Zone,
)

__all__ = [
    "DIMENSIONS",
    "DIMENSION_ALIASES",
    "STATUSES",
    "AuditFilter",
    "EventFilter",
    "aggregate",
    "audit_row",
    "canonical_dimension",
    "canonical_status",
    "event_row",
    "list_audit",
    "list_events",
]

# Every status the product records (mta/observe/events.py callers), by normalised key.
STATUSES = ("Received", "Forwarded", "Handled", "Dropped", "Rejected", "Delivery failed",
            "Error", "Sent", "Delivered", "Failed", "Deferred", "Complained", "Feedback")
_STATUS_KEYS = {re.sub(r"[\s_-]", "", s).lower(): s for s in STATUSES}


def canonical_status(value: str) -> str | None:
    """`deliveryFailed`, `delivery_failed` and `Delivery failed` all name one status."""
    return _STATUS_KEYS.get(re.sub(r"[\s_-]", "", value).lower())


# --- derived expressions --------------------------------------------------------------------

_details = Event.details
_sender_domain = func.lower(func.split_part(Event.mail_from, "@", 2))
_event_type = case(
    (Message.source == "forward", literal_column("'forward'")),
    (Message.source == "reply", literal_column("'reply'")),
    (Event.direction == "outbound", literal_column("'newEmail'")),
    else_=literal_column("'incoming'"))
_error_cause = func.coalesce(_details["error_code"].astext, _details["reason"].astext)
_error_detail = func.coalesce(_details["reply"].astext, _details["detail"].astext,
                              _details["error"].astext)
_header_id = func.coalesce(_details["message_id"].astext, Message.message_id_header)
_is_ndr = case((Message.source == "dsn", literal_column("1")), else_=literal_column("0"))


def _bucket(minutes: int) -> ColumnElement:
    # date_bin aligns on an absolute origin, so buckets are the same on every node.
    return func.date_bin(text(f"interval '{minutes} minutes'"), Event.ts,
                         text("timestamptz '2000-01-01 00:00:00+00'"))


def _trunc(unit: str) -> ColumnElement:
    return func.date_trunc(literal_column(f"'{unit}'"), Event.ts, literal_column("'UTC'"))


# name -> (expression, needs the messages join)
DIMENSIONS: dict[str, tuple[ColumnElement, bool]] = {
    "date": (cast(func.timezone(literal_column("'UTC'"), Event.ts), Date), False),
    "datetimeHour": (_trunc("hour"), False),
    "datetimeFifteenMinutes": (_bucket(15), False),
    "datetimeFiveMinutes": (_bucket(5), False),
    "datetimeMinute": (_trunc("minute"), False),
    "status": (Event.status, False),
    "direction": (Event.direction, False),
    "eventType": (_event_type, True),
    "sendingDomain": (_sender_domain, False),
    "recipientDomain": (func.lower(Event.domain), False),
    "envelopeTo": (Event.rcpt_to, False),
    "errorCause": (_error_cause, False),
    "spf": (Event.spf, False),
    "dkim": (Event.dkim, False),
    "dmarc": (Event.dmarc, False),
    "arc": (Event.arc, False),
    "ruleMatched": (Event.rule_id, False),
    "action": (Event.action, False),
    "zoneId": (Event.zone_id, False),
    "isNDR": (_is_ndr, True),
}
_TIME_DIMENSIONS = ("date", "datetimeHour", "datetimeFifteenMinutes", "datetimeFiveMinutes",
                    "datetimeMinute")

DIMENSION_ALIASES = {
    "day": "date", "hour": "datetimeHour", "minute": "datetimeMinute",
    "5m": "datetimeFiveMinutes", "five_minutes": "datetimeFiveMinutes",
    "15m": "datetimeFifteenMinutes", "fifteen_minutes": "datetimeFifteenMinutes",
    "event_type": "eventType", "type": "eventType", "sending_domain": "sendingDomain",
    "domain": "recipientDomain", "recipient_domain": "recipientDomain",
    "envelope_to": "envelopeTo", "to": "envelopeTo", "error_cause": "errorCause",
    "rule": "ruleMatched", "rule_matched": "ruleMatched", "rule_id": "ruleMatched",
    "zone": "zoneId", "zone_id": "zoneId", "is_ndr": "isNDR",
}
_DIMENSION_KEYS = {k.lower(): k for k in DIMENSIONS} | DIMENSION_ALIASES


def canonical_dimension(name: str) -> str | None:
    return _DIMENSION_KEYS.get(name.strip()) or _DIMENSION_KEYS.get(name.strip().lower())


# --- filters -------------------------------------------------------------------------------


@dataclass
class EventFilter:
    """Every field is optional; strings compare case-insensitively and exactly."""

    since: datetime | None = None
    until: datetime | None = None  # exclusive
    account_id: str | None = None
    zone_id: str | None = None
    status: str | None = None
    direction: str | None = None  # inbound | outbound
    domain: str | None = None  # recipient's or sender's domain
    sending_domain: str | None = None
    recipient_domain: str | None = None
    mail_from: str | None = None
    rcpt_to: str | None = None
    message_id: str | None = None  # our queue id (UUID/32 hex) or a Message-ID header
    event_type: str | None = None
    rule_id: str | None = None
    action: str | None = None
    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None
    arc: str | None = None

    def needs_message(self) -> bool:
        return self.event_type is not None or self.message_id is not None


def _account_scope(account_id: str) -> ColumnElement[bool]:
    zones = select(Zone.id).where(Zone.account_id == account_id)
    names = union(
        select(func.lower(Zone.name)).where(Zone.account_id == account_id),
        select(func.lower(RoutingDomain.name)).where(RoutingDomain.zone_id.in_(zones)),
        select(func.lower(SendingDomain.name)).where(SendingDomain.zone_id.in_(zones)))
    return or_(Event.account_id == account_id,
               and_(Event.account_id.is_(None), func.lower(Event.domain).in_(names)))


def _queue_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None


def _message_id_condition(value: str) -> ColumnElement[bool]:
    queue_id = _queue_id(value)
    if queue_id is not None:  # the message's events and those of its forwarded copies
        return Event.message_id.in_(select(Message.id).where(
            or_(Message.id == queue_id, Message.origin_id == queue_id)))
    bare = value.strip().strip("<>")
    forms = [bare, f"<{bare}>"]
    return or_(_details["message_id"].astext.in_(forms), Message.message_id_header.in_(forms))


def _eq(expr: ColumnElement, value: str) -> ColumnElement[bool]:
    return func.lower(expr) == value.strip().lower()


def _window(ts: ColumnElement, since: datetime | None,
            until: datetime | None) -> list[ColumnElement[bool]]:
    """`since` <= ts < `until`, each bound only when given."""
    return ([ts >= since] if since is not None else []) + \
        ([ts < until] if until is not None else [])


def _conditions(f: EventFilter) -> list[ColumnElement[bool]]:
    c = _window(Event.ts, f.since, f.until)
    if f.account_id is not None:
        c.append(_account_scope(f.account_id))
    if f.zone_id is not None:
        c.append(Event.zone_id == f.zone_id)
    if f.status is not None:
        known = canonical_status(f.status)
        c.append(Event.status == known if known else _eq(Event.status, f.status))
    if f.direction is not None:
        c.append(Event.direction == f.direction)
    if f.domain is not None:
        c.append(or_(_eq(Event.domain, f.domain), _sender_domain == f.domain.strip().lower()))
    if f.sending_domain is not None:
        c.append(_sender_domain == f.sending_domain.strip().lower())
    if f.recipient_domain is not None:
        c.append(_eq(Event.domain, f.recipient_domain))
    if f.mail_from is not None:
        c.append(_eq(Event.mail_from, f.mail_from))
    if f.rcpt_to is not None:
        c.append(_eq(Event.rcpt_to, f.rcpt_to))
    if f.message_id is not None:
        c.append(_message_id_condition(f.message_id))
    if f.event_type is not None:
        c.append(_event_type == f.event_type)
    if f.rule_id is not None:
        c.append(Event.rule_id == f.rule_id)
    for name in ("action", "spf", "dkim", "dmarc", "arc"):
        value = getattr(f, name)
        if value is not None:
            c.append(_eq(getattr(Event, name), value))
    return c


def _from(stmt, with_message: bool):
    if with_message:
        return stmt.select_from(Event).outerjoin(Message, Message.id == Event.message_id)
    return stmt.select_from(Event)


# --- events --------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, as the API writes every timestamp."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_row(e: Event, source: str | None, header_id: str | None) -> dict[str, Any]:
    """One event as the API and `mta events list --json` show it: the reference's
    per-event field names (emailRoutingAdaptive / emailSendingAdaptive) plus ours."""
    d = e.details or {}
    if source == "forward":
        event_type = "forward"
    elif source == "reply":
        event_type = "reply"
    else:
        event_type = "newEmail" if e.direction == "outbound" else "incoming"
    return {
        "id": str(e.id), "datetime": _iso(e.ts), "direction": e.direction,
        "status": e.status, "eventType": event_type,
        "from": e.mail_from, "to": e.rcpt_to, "envelopeTo": e.rcpt_to, "subject": e.subject,
        "messageId": header_id, "queueId": e.message_id.hex if e.message_id else None,
        "sessionId": d.get("session_id") if isinstance(d.get("session_id"), str) else None,
        "sendingDomain": (e.mail_from or "").rpartition("@")[2].lower() or None,
        "recipientDomain": e.domain.lower() if e.domain else None,
        "zoneId": e.zone_id, "ruleMatched": e.rule_id, "action": e.action,
        "spf": e.spf, "dkim": e.dkim, "dmarc": e.dmarc, "arc": e.arc,
        "errorCause": _text(d.get("error_code") or d.get("reason")),
        "errorDetail": _text(d.get("reply") or d.get("detail") or d.get("error")),
        "isNDR": 1 if source == "dsn" else 0,
        "details": d,
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


async def list_events(session: AsyncSession, f: EventFilter, *, offset: int, limit: int,
                      newest_first: bool = True) -> tuple[list[dict[str, Any]], int]:
    conds = _conditions(f)
    join = f.needs_message()
    total = (await session.execute(_from(select(func.count()), join).where(*conds))
             ).scalar_one()
    order = [Event.ts.desc(), Event.id.desc()] if newest_first else [Event.ts, Event.id]
    stmt = (select(Event, Message.source, _header_id)
            .select_from(Event).outerjoin(Message, Message.id == Event.message_id)
            .where(*conds).order_by(*order).offset(offset).limit(limit))
    rows = (await session.execute(stmt)).all()
    return [event_row(e, src, hid) for e, src, hid in rows], int(total)


def _dimension_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


async def aggregate(session: AsyncSession, f: EventFilter, dimensions: list[str], *,
                    limit: int) -> tuple[list[dict[str, Any]], int]:
    """[{count, dimensions: {name: value}}] grouped by `dimensions` (canonical names),
    time buckets ascending then largest count first; and the number of events counted."""
    exprs = [DIMENSIONS[d][0].label(d) for d in dimensions]
    join = f.needs_message() or any(DIMENSIONS[d][1] for d in dimensions)
    conds = _conditions(f)
    # GROUP BY / ORDER BY by position: the expressions carry literals that would
    # otherwise be sent twice as different bind parameters.
    positions = [literal_column(str(i + 1)) for i in range(len(exprs))]
    order = [positions[i] for i, d in enumerate(dimensions) if d in _TIME_DIMENSIONS]
    order.append(literal_column(str(len(exprs) + 1)).desc())
    order += [positions[i] for i, d in enumerate(dimensions) if d not in _TIME_DIMENSIONS]
    stmt = _from(select(*exprs, func.count().label("count")), join).where(*conds)
    if exprs:
        stmt = stmt.group_by(*positions)
    rows = (await session.execute(stmt.order_by(*order).limit(limit))).all()
    total = (await session.execute(_from(select(func.count()), join).where(*conds))
             ).scalar_one() if exprs else (rows[0][-1] if rows else 0)
    groups = [{"count": int(r[-1]),
               "dimensions": {d: _dimension_value(r[i]) for i, d in enumerate(dimensions)}}
              for r in rows]
    return groups, int(total)


# --- audit log -----------------------------------------------------------------------------


@dataclass
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    account_id: str | None = None
    actor: str | None = None  # `token:<id>`, `cli:<user>`, or the part after the colon
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None


def _audit_conditions(f: AuditFilter) -> list[ColumnElement[bool]]:
    c = _window(AuditEntry.ts, f.since, f.until)
    if f.account_id is not None:
        c.append(AuditEntry.account_id == f.account_id)
    if f.actor is not None:
        actor = f.actor.strip()
        c.append(AuditEntry.actor == actor if ":" in actor
                 else func.split_part(AuditEntry.actor, ":", 2) == actor)
    if f.action is not None:
        c.append(AuditEntry.action == f.action)
    if f.resource_type is not None:
        c.append(AuditEntry.resource_type == f.resource_type)
    if f.resource_id is not None:
        c.append(AuditEntry.resource_id == f.resource_id)
    return c


def audit_row(a: AuditEntry) -> dict[str, Any]:
    """The reference's audit log entry shape (accounts/{id}/audit_logs)."""
    kind, _, who = a.actor.partition(":")
    return {
        "id": str(a.id), "when": _iso(a.ts),
        "action": {"type": a.action, "result": True},
        "actor": {"id": who or a.actor, "type": kind if who else "unknown"},
        "interface": {"token": "API", "cli": "CLI"}.get(kind, kind.upper() or None),
        "owner": {"id": a.account_id},
        "resource": {"id": a.resource_id, "type": a.resource_type},
        "oldValueJson": a.before, "newValueJson": a.after,
    }


async def list_audit(session: AsyncSession, f: AuditFilter, *, offset: int, limit: int,
                     newest_first: bool = True) -> tuple[list[dict[str, Any]], int]:
    conds = _audit_conditions(f)
    total = (await session.execute(select(func.count()).select_from(AuditEntry)
                                   .where(*conds))).scalar_one()
    order = ([AuditEntry.ts.desc(), AuditEntry.id.desc()] if newest_first
             else [AuditEntry.ts, AuditEntry.id])
    rows = (await session.execute(select(AuditEntry).where(*conds).order_by(*order)
                                  .offset(offset).limit(limit))).scalars()
    return [audit_row(a) for a in rows], int(total)
