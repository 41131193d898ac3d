"""The suppression list: recipients an account must not send to.

Job: add, remove, list and check entries. Each entry has a reason (manual, complaint,
hard_bounce, soft_bounce, policy), a scope (the whole account, or one sending domain = the
domain of the envelope MAIL FROM), an optional expiry (None = permanent), a note, and
`read_only`, which the server decides: complaint entries are read-only and protected from
casual removal (the reference limits their removal "to avoid abuse"), so `remove` refuses
them unless forced by an operator.

Adding is an upsert on (account, email, scope): a stronger reason replaces a weaker one
(complaint > hard_bounce > policy > manual > soft_bounce) and a permanent entry is never
shortened by a temporary one. Addresses are compared lower-cased.

Callers: the sending path (`is_suppressed` / `suppressed_among` before enqueueing), the
delivery failure policy and bounce intake (automatic entries), the CLI and the admin API.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.store.models import Suppression

__all__ = [
    "REASONS", "SCOPES", "Page", "SuppressionError", "SuppressionNotFound",
    "SuppressionProtected", "add", "count", "edit", "get", "sending_domain_of", "is_suppressed", "list_entries", "remove", "suppressed_among", "to_dict",
]

REASONS = ("manual", "complaint", "hard_bounce", "soft_bounce", "policy")
SCOPES = ("account", "sending_domain")
# Which automatic reason wins when an entry already exists.
_RANK = {"soft_bounce": 0, "manual": 1, "policy": 2, "hard_bounce": 3, "complaint": 4}


class SuppressionError(ValueError):
    code = "E_VALIDATION_ERROR"


class SuppressionNotFound(SuppressionError):
    code = "E_NOT_FOUND"


class SuppressionProtected(SuppressionError):
    """A read-only (complaint) entry; removal needs force."""

    code = "E_SUPPRESSION_READ_ONLY"


def _norm_email(email: str) -> str:
    e = email.strip().lower()
    if e.count("@") != 1 or not e.partition("@")[0] or not e.partition("@")[2]:
        raise SuppressionError(f"not an email address: {email!r}")
    return e


def _norm_scope(scope_type: str, scope_value: str | None) -> tuple[str, str]:
    if scope_type not in SCOPES:
        raise SuppressionError(f"scope type must be one of {', '.join(SCOPES)}")
    if scope_type == "account":
        return "account", ""
    value = (scope_value or "").strip().lower().rstrip(".")
    if not value:
        raise SuppressionError("a sending_domain scope needs a domain")
    return scope_type, value


def sending_domain_of(envelope_from: str) -> str:
    return envelope_from.rpartition("@")[2].lower().rstrip(".")


async def add(session: AsyncSession, account_id: str, email: str, reason: str, *,
              now: datetime, scope_type: str = "account", scope_value: str | None = None,
              note: str | None = None, expires_at: datetime | None = None) -> Suppression:
    """Insert or strengthen an entry; returns it. Complaint entries are read-only."""
    if reason not in REASONS:
        raise SuppressionError(f"reason must be one of {', '.join(REASONS)}")
    email = _norm_email(email)
    scope_type, scope_value = _norm_scope(scope_type, scope_value)
    existing = (await session.execute(
        select(Suppression).where(Suppression.account_id == account_id,
                                  Suppression.email == email,
                                  Suppression.scope_type == scope_type,
                                  Suppression.scope_value == scope_value)
        .with_for_update())).scalar_one_or_none()
    if existing is None:
        entry = Suppression(account_id=account_id, email=email, reason=reason,
                            scope_type=scope_type, scope_value=scope_value, note=note,
                            read_only=reason == "complaint", expires_at=expires_at,
                            created_at=now, modified_at=now)
        session.add(entry)
        await session.flush()
        return entry
    live = existing.expires_at is None or existing.expires_at > now
    if not live:
        existing.reason, existing.expires_at = reason, expires_at
        existing.read_only = reason == "complaint"
    else:
        if _RANK[reason] > _RANK[existing.reason]:
            existing.reason, existing.expires_at = reason, expires_at
        elif reason == existing.reason == "manual":
            existing.expires_at = expires_at  # an operator re-adding means what they say
        else:
            existing.expires_at = _longer(existing.expires_at, expires_at)
        existing.read_only = existing.read_only or reason == "complaint"
    if note is not None:
        existing.note = note
    existing.modified_at = now
    await session.flush()
    return existing


def _longer(a: datetime | None, b: datetime | None) -> datetime | None:
    return None if a is None or b is None else max(a, b)


async def edit(session: AsyncSession, account_id: str, suppression_id: str, *, now: datetime,
               note: str | None = None, expires_at: datetime | None = None,
               set_expires: bool = False) -> Suppression:
    """Change note and/or expiry (scope is immutable). `set_expires` distinguishes
    "make permanent" (expires_at None) from "leave the expiry alone"."""
    entry = await get(session, account_id, suppression_id)
    if note is not None:
        entry.note = note
    if set_expires:
        entry.expires_at = expires_at
    entry.modified_at = now
    await session.flush()
    return entry


async def get(session: AsyncSession, account_id: str, suppression_id: str) -> Suppression:
    entry = (await session.execute(
        select(Suppression).where(Suppression.account_id == account_id,
                                  Suppression.id == suppression_id))).scalar_one_or_none()
    if entry is None:
        raise SuppressionNotFound(f"no suppression {suppression_id}")
    return entry


async def remove(session: AsyncSession, account_id: str, *, suppression_id: str | None = None,
                 email: str | None = None, scope_type: str | None = None,
                 scope_value: str | None = None, force: bool = False) -> list[Suppression]:
    """Delete by id, or every entry for `email` (optionally one scope). Read-only
    entries refuse removal (nothing is deleted) unless `force`."""
    stmt = select(Suppression).where(Suppression.account_id == account_id)
    if suppression_id:
        stmt = stmt.where(Suppression.id == suppression_id)
    elif email:
        stmt = stmt.where(Suppression.email == _norm_email(email))
        if scope_type:
            st, sv = _norm_scope(scope_type, scope_value)
            stmt = stmt.where(Suppression.scope_type == st, Suppression.scope_value == sv)
    else:
        raise SuppressionError("remove needs an id or an email")
    entries = list((await session.execute(stmt.with_for_update())).scalars())
    if not entries:
        raise SuppressionNotFound(f"no suppression for {suppression_id or email}")
    protected = [e for e in entries if e.read_only]
    if protected and not force:
        raise SuppressionProtected(
            f"{protected[0].email} was suppressed after a spam complaint; removing it "
            "needs an operator's force")
    for e in entries:
        await session.delete(e)
    await session.flush()
    return entries


def _live(now: datetime):
    return or_(Suppression.expires_at.is_(None), Suppression.expires_at > now)


def _scope_match(sending_domain: str | None):
    conds = [Suppression.scope_type == "account"]
    if sending_domain:
        conds.append(and_(Suppression.scope_type == "sending_domain",
                          Suppression.scope_value == sending_domain.lower().rstrip(".")))
    return or_(*conds)


async def is_suppressed(session: AsyncSession, account_id: str, recipient: str,
                        sending_domain: str | None, now: datetime) -> Suppression | None:
    """The live entry that blocks `recipient` for this account and sending domain."""
    return (await session.execute(
        select(Suppression).where(Suppression.account_id == account_id,
                                  Suppression.email == recipient.strip().lower(),
                                  _live(now), _scope_match(sending_domain))
        .order_by(Suppression.scope_type).limit(1))).scalar_one_or_none()


async def suppressed_among(session: AsyncSession, account_id: str, recipients: Iterable[str],
                           sending_domain: str | None, now: datetime) -> dict[str, Suppression]:
    """One query for a whole recipient list: lower-cased address -> blocking entry."""
    wanted = sorted({r.strip().lower() for r in recipients})
    if not wanted:
        return {}
    rows = (await session.execute(
        select(Suppression).where(Suppression.account_id == account_id,
                                  Suppression.email.in_(wanted), _live(now),
                                  _scope_match(sending_domain)))).scalars()
    return {r.email: r for r in rows}


@dataclass(frozen=True)
class Page:
    items: list[Suppression]
    cursor: str | None  # None when this is the last page


async def list_entries(session: AsyncSession, account_id: str, *, now: datetime | None = None,
                       email: str | None = None, reason: str | None = None,
                       scope_type: str | None = None, scope_value: str | None = None,
                       search: str | None = None, include_expired: bool = True,
                       cursor: str | None = None, per_page: int = 50) -> Page:
    """Entries newest first, with an opaque cursor (created_at|id) for the next page."""
    stmt = select(Suppression).where(Suppression.account_id == account_id)
    if email:
        stmt = stmt.where(Suppression.email == email.strip().lower())
    if reason:
        stmt = stmt.where(Suppression.reason == reason)
    if scope_type:
        stmt = stmt.where(Suppression.scope_type == scope_type)
    if scope_value:
        stmt = stmt.where(Suppression.scope_value == scope_value.lower())
    if search:
        stmt = stmt.where(Suppression.email.contains(search.strip().lower(), autoescape=True))
    if not include_expired and now is not None:
        stmt = stmt.where(_live(now))
    if cursor:
        ts, _, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        at = datetime.fromisoformat(ts)
        stmt = stmt.where(or_(Suppression.created_at < at,
                              and_(Suppression.created_at == at, Suppression.id < last_id)))
    per_page = max(1, min(per_page, 1000))
    rows = list((await session.execute(
        stmt.order_by(Suppression.created_at.desc(), Suppression.id.desc())
        .limit(per_page + 1))).scalars())
    nxt = None
    if len(rows) > per_page:
        rows = rows[:per_page]
        last = rows[-1]
        nxt = base64.urlsafe_b64encode(
            f"{last.created_at.isoformat()}|{last.id}".encode()).decode()
    return Page(rows, nxt)


async def count(session: AsyncSession, account_id: str) -> int:
    return (await session.execute(select(func.count()).select_from(Suppression).where(
        Suppression.account_id == account_id))).scalar_one()


def to_dict(entry: Suppression) -> dict:
    """The shape the reference SDK reads: {id, email, created_at, expires_at, read_only,
    reason, note, scope}."""
    scope: dict = {"type": entry.scope_type}
    if entry.scope_type == "sending_domain":
        scope["value"] = entry.scope_value
    return {
        "id": entry.id, "email": entry.email, "reason": entry.reason,
        "created_at": entry.created_at.isoformat() if entry.created_at else None,
        "expires_at": entry.expires_at.isoformat() if entry.expires_at else None,
        "read_only": entry.read_only, "note": entry.note, "scope": scope,
    }


