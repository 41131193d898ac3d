"""An account's webhook endpoints and their delivery logs: what the admin API
(mta/api/webhooks.py) and `mta webhooks` share.

URLs are https:// to public addresses; with `webhooks.allow_private_targets` (tests, a
lab) also to private ones and http:// to loopback (events carry addresses and subjects,
which must not cross a network in clear). mta.observe.egress checks again at each POST.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.observe import egress
from mta.store.models import Account, WebhookDelivery, WebhookEndpoint
from mta.webhooks.payload import EVENT_TYPES
from mta.webhooks.signature import new_secret

__all__ = ["EndpointError", "create", "delete", "get", "list_for", "log_rows",
           "log_to_dict", "stats", "to_dict", "validate_url"]

MAX_URL = 2048
LOG_STATUSES = ("pending", "delivered", "failed")


class EndpointError(ValueError):
    """A request the caller must change (the API's 400, the CLI's usage error)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def validate_url(url: str, *, allow_private: bool = False) -> str:
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise EndpointError(f"url must be an https:// URL of at most {MAX_URL} characters",
                            "url")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise EndpointError(f"url is not a valid URL: {exc}", "url") from None
    if not host or parts.username or parts.password:
        raise EndpointError("url must name a host and carry no credentials", "url")
    # What the URL alone tells (scheme, an address literal); a name is checked again,
    # resolved, at each POST.
    try:
        egress.check_url(url, allow_private=allow_private)
        if parts.scheme == "http" and not egress.is_loopback_literal(host):
            raise egress.Refused(url)  # events are not sent to a name in clear either
    except egress.Refused:
        raise EndpointError(
            "url must be https:// to a public address" + (
                " (http:// only to a loopback address)" if allow_private else ""),
            "url") from None
    return url


def validate_types(types: list[str] | None) -> list[str]:
    types = list(types or [])
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise EndpointError(f"unknown event type(s) {', '.join(map(str, unknown))}; known: "
                            f"{', '.join(EVENT_TYPES)}", "event_types")
    return sorted(set(types), key=EVENT_TYPES.index)


async def create(session: AsyncSession, account_id: str, url: str, *, settings: Any,
                 event_types: list[str] | None = None,
                 description: str | None = None) -> WebhookEndpoint:
    """`settings`: the `webhooks` section (private targets, the cap per account)."""
    url = validate_url(url, allow_private=settings.allow_private_targets)
    # Each endpoint adds an outbox row to every message's transaction (the events
    # trigger), so their number is bounded. Locking the account row serialises creates,
    # so the bound holds under concurrency.
    await session.execute(select(Account.id).where(Account.id == account_id)
                          .with_for_update())
    limit = settings.max_endpoints_per_account
    count = (await session.execute(select(func.count()).select_from(WebhookEndpoint).where(
        WebhookEndpoint.account_id == account_id))).scalar_one()
    if count >= limit:
        raise EndpointError(f"the account already has {limit} webhook endpoints "
                            "(webhooks.max_endpoints_per_account)", "url")
    row = WebhookEndpoint(account_id=account_id, url=url, secret=new_secret(),
                          event_types=validate_types(event_types), description=description)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return row


async def list_for(session: AsyncSession, account_id: str | None) -> list[WebhookEndpoint]:
    q = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    if account_id is not None:
        q = q.where(WebhookEndpoint.account_id == account_id)
    return list((await session.execute(q)).scalars())


async def get(session: AsyncSession, endpoint_id: str,
              account_id: str | None = None) -> WebhookEndpoint | None:
    row = await session.get(WebhookEndpoint, endpoint_id) if len(endpoint_id) == 32 else None
    if row is None or (account_id is not None and row.account_id != account_id):
        return None
    return row


async def delete(session: AsyncSession, row: WebhookEndpoint) -> None:
    """Its log and undelivered events go with it."""
    await session.delete(row)
    await session.flush()


async def stats(session: AsyncSession, endpoint_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per endpoint: how many events are pending, delivered and failed (in the log), and
    the last answered attempt's time and answer."""
    out: dict[str, dict[str, Any]] = {
        e: {**{s: 0 for s in LOG_STATUSES}, "last_attempt_at": None,
            "last_status_code": None, "last_error": None}
        for e in endpoint_ids}
    if not endpoint_ids:
        return out
    rows = await session.execute(
        select(WebhookDelivery.endpoint_id, WebhookDelivery.status, func.count())
        .where(WebhookDelivery.endpoint_id.in_(endpoint_ids))
        .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.status))
    for endpoint_id, status, n in rows:
        out[endpoint_id][status] = n
    latest = func.row_number().over(
        partition_by=WebhookDelivery.endpoint_id,
        order_by=WebhookDelivery.last_attempt_at.desc()).label("n")
    ranked = (select(WebhookDelivery.endpoint_id, WebhookDelivery.last_attempt_at,
                     WebhookDelivery.last_status_code, WebhookDelivery.last_error, latest)
              .where(WebhookDelivery.endpoint_id.in_(endpoint_ids),
                     WebhookDelivery.last_attempt_at.is_not(None)).subquery())
    last = await session.execute(
        select(ranked.c.endpoint_id, ranked.c.last_attempt_at, ranked.c.last_status_code,
               ranked.c.last_error).where(ranked.c.n == 1))
    for endpoint_id, when, code, error in last:
        out[endpoint_id]["last_attempt_at"] = _iso(when)
        out[endpoint_id]["last_status_code"] = code
        out[endpoint_id]["last_error"] = error
    return out


def to_dict(row: WebhookEndpoint, counts: dict[str, Any] | None = None, *,
            secret: bool = False) -> dict[str, Any]:
    """The endpoint as the API and `--json` show it; the secret only when just created."""
    out: dict[str, Any] = {
        "id": row.id, "account_id": row.account_id, "url": row.url,
        "event_types": list(row.event_types) or list(EVENT_TYPES),
        "description": row.description, "enabled": row.enabled,
        "created_at": _iso(row.created_at)}
    if counts is not None:
        out["deliveries"] = counts
    if secret:
        out["secret"] = row.secret
    return out


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


async def log_rows(session: AsyncSession, endpoint_id: str, *, status: str | None = None,
                   limit: int = 50, offset: int = 0) -> tuple[list[WebhookDelivery], int]:
    """The endpoint's delivery log, newest first, and how many rows it has in all."""
    if status is not None and status not in LOG_STATUSES:
        raise EndpointError(f"status must be one of {', '.join(LOG_STATUSES)}", "status")
    q = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        q = q.where(WebhookDelivery.status == status)
    total = (await session.execute(select(func.count()).select_from(q.subquery()))
             ).scalar_one()
    rows = (await session.execute(q.order_by(WebhookDelivery.id.desc())
                                  .offset(offset).limit(limit))).scalars()
    return list(rows), total


def log_to_dict(row: WebhookDelivery) -> dict[str, Any]:
    return {"id": row.id, "event_id": str(row.event_id), "type": row.event_type,
            "message_id": str(row.message_id) if row.message_id else None,
            "recipient": (row.event or {}).get("rcpt_to"), "status": row.status,
            "attempts": row.attempts, "last_status_code": row.last_status_code,
            "last_error": row.last_error, "last_attempt_at": _iso(row.last_attempt_at),
            "created_at": _iso(row.created_at),
            "next_attempt_at": _iso(row.next_attempt_at) if row.status == "pending" else None,
            "finished_at": _iso(row.finished_at)}
