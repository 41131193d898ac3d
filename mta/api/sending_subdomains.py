"""Sending subdomains: /zones/{zone_id}/email/sending/subdomains[/{id}[/dns]].

A sending (sub)domain is the zone apex or a subdomain of it, onboarded for sending by
`mta.sending.domains.onboard_sending_domain` (as `mta domains onboard`): creating it
makes an RSA-2048 DKIM key (encrypted at rest with `secret_key`, associated data
`<domain>/<selector>`) under a dated selector `mtaYYYYMM`, and a return-path (bounce)
domain `mta-bounce.<domain>` whose MX points back at us (the reference's `cf-bounce`). `.../dns` lists the records to publish (mta/dnsrecords.py).

The identifier is `tag` (sending subdomains have no `id` in the reference), and DELETE
answers the bare envelope `{success, errors, messages}`, as the SDK expects. A zone
holds at most `limits.domains_per_zone` routing and sending domains combined.
Wildcards (`*.example.com`) need an entitlement we do not have and are refused.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.auth import owned_row, require, zone_of, zone_session
from mta.api.envelope import (
    api_error,
    body_bool,
    body_str,
    crud_routes,
    isotime,
    json_body,
    ok,
    ok_all,
)
from mta.dnsrecords import sending_records
from mta.observe import audit
from mta.sending.domains import (
    RETURN_PATH_LABEL,
    DomainError,
    dkim_selector,
    onboard_sending_domain,
)
from mta.store import dkimkeys
from mta.store.dkimkeys import SENDING
from mta.store.models import DkimKey, SendingDomain, Zone

__all__ = ["AUDIT_FIELDS", "RETURN_PATH_LABEL", "routes", "subdomain_body", "subdomain_name"]

EDIT = "email_sending:edit"
# Editable flags; stored only once the schema has them (migration 0003_admin).
FLAGS = ("drop_suppressed_recipients", "preview_enabled")
AUDIT_FIELDS = ("zone_id", "name", "dkim_selector", "return_path_domain", "enabled", *FLAGS)


def _has_flag(name: str) -> bool:
    return hasattr(SendingDomain, name)


def subdomain_body(row: SendingDomain, selector: str | None = None) -> dict[str, Any]:
    """The API form of `row`; `selector`: the one it signs with now (default: the one it
    was onboarded with)."""
    body: dict[str, Any] = {
        "tag": row.id, "name": row.name, "enabled": row.enabled,
        "created": isotime(row.created_at), "modified": isotime(row.modified_at),
        "dkim_selector": selector or row.dkim_selector,
        "return_path_domain": row.return_path_domain}
    for flag in FLAGS:
        body[flag] = bool(getattr(row, flag, False))
    return body


async def _bodies(request: Request, s: AsyncSession, rows: list[SendingDomain]) -> list[dict]:
    """`rows` in their API form, each with the selector that signs its mail now: after a
    key rotation (`mta keys rotate`) the new key's, once it has taken over."""
    selectors = await dkimkeys.signing_selectors(s, [r.name for r in rows], SENDING,
                                                 request.app.state.ctx.clock())
    return [subdomain_body(r, selectors.get(r.name)) for r in rows]


def subdomain_name(zone: Zone, raw: str) -> str:
    """A sending (sub)domain name of `zone`, validated (api_error: wildcard, outside the
    zone, not a domain name)."""
    name = raw.strip().lower().rstrip(".")
    if name.startswith("*"):
        raise api_error("E_VALIDATION_ERROR", "wildcard sending domains are not supported",
                        field="name")
    if name != zone.name and not name.endswith("." + zone.name):
        raise api_error("E_VALIDATION_ERROR", f"{raw} is not in zone {zone.name}", field="name")
    if len(name) > 253 or not all(
            0 < len(label) <= 63 and label.replace("-", "").isalnum() for label in name.split(".")):
        raise api_error("E_VALIDATION_ERROR", f"{raw!r} is not a domain name", field="name")
    return name


async def _subdomain(s: AsyncSession, zone: Zone, tag: str,
                     for_update: bool = False) -> SendingDomain:
    return await owned_row(s, SendingDomain, tag, "sending subdomain", for_update=for_update,
                           owned=lambda row: row.zone_id == zone.id)


# --- handlers --------------------------------------------------------------------------------


async def list_subdomains(request: Request) -> JSONResponse:
    async with zone_session(request, EDIT) as (p, s, zone):
        rows = list((await s.execute(select(SendingDomain).where(
            SendingDomain.zone_id == zone.id).order_by(SendingDomain.name))).scalars())
        return ok_all(await _bodies(request, s, rows))


async def create_subdomain(request: Request) -> JSONResponse:
    p = await require(request, EDIT)
    body = await json_body(request)
    raw = body_str(body, "name", required=True, max_len=253) or ""
    ctx = request.app.state.ctx
    if not ctx.settings.secret_key:
        raise api_error("E_INTERNAL_SERVER_ERROR", "this node has no secret_key to encrypt "
                        "DKIM keys with (set secret_key or MTA_SECRET_KEY)")
    async with ctx.db.session() as s:
        zone = await zone_of(s, p, request.path_params["zone_id"], for_update=True)
        name = subdomain_name(zone, raw)
        if (await s.execute(select(SendingDomain.id).where(SendingDomain.name == name))).first():
            raise api_error("E_VALIDATION_ERROR", f"{name} is already a sending domain",
                            field="name")
        now = ctx.clock()
        # A key left behind under this month's selector is replaced, not reused.
        await s.execute(delete(DkimKey).where(DkimKey.domain == name,
                                              DkimKey.purpose == SENDING,
                                              DkimKey.selector == dkim_selector(now)))
        try:
            row = await onboard_sending_domain(s, ctx.settings, name, zone_id=zone.id, now=now)
        except DomainError as exc:
            raise api_error("E_VALIDATION_ERROR", str(exc), field="name") from None
        await s.refresh(row)
        audit.record_row(s, p.actor, "create", "sending_subdomain", row, AUDIT_FIELDS,
                         account_id=zone.account_id)
        [body] = await _bodies(request, s, [row])
        return ok(body)


async def get_subdomain(request: Request) -> JSONResponse:
    async with zone_session(request, EDIT) as (p, s, zone):
        row = await _subdomain(s, zone, request.path_params["tag"])
        [body] = await _bodies(request, s, [row])
        return ok(body)


async def edit_subdomain(request: Request) -> JSONResponse:
    p = await require(request, EDIT)
    body = await json_body(request)
    changes = {f: v for f in FLAGS if (v := body_bool(body, f)) is not None}
    for flag in changes:
        if not _has_flag(flag):
            raise api_error("E_NOT_IMPLEMENTED", f"{flag} needs database migration 0003_admin",
                            field=flag)
    async with request.app.state.ctx.db.session() as s:
        zone = await zone_of(s, p, request.path_params["zone_id"])
        row = await _subdomain(s, zone, request.path_params["tag"], for_update=True)
        if any(getattr(row, f) != v for f, v in changes.items()):
            await audit.update_row(s, p.actor, "sending_subdomain", row, changes,
                                   AUDIT_FIELDS, account_id=zone.account_id, refresh=True)
        [body] = await _bodies(request, s, [row])
        return ok(body)


async def delete_subdomain(request: Request) -> JSONResponse:
    async with zone_session(request, EDIT) as (p, s, zone):
        row = await _subdomain(s, zone, request.path_params["tag"], for_update=True)
        audit.record_row(s, p.actor, "delete", "sending_subdomain", row, AUDIT_FIELDS,
                         account_id=zone.account_id)
        # Every sending key, rotated ones included; the forwarding key of a routing
        # domain of the same name stays.
        await s.execute(delete(DkimKey).where(DkimKey.domain == row.name,
                                              DkimKey.purpose == SENDING))
        await s.delete(row)
    return JSONResponse({"success": True, "errors": [], "messages": []})


async def subdomain_dns(request: Request) -> JSONResponse:
    p = await require(request, EDIT)
    ctx = request.app.state.ctx
    async with ctx.db.session() as s:
        zone = await zone_of(s, p, request.path_params["zone_id"])
        row = await _subdomain(s, zone, request.path_params["tag"])
        keys = await dkimkeys.published(s, row.name, SENDING, ctx.clock())
        dkim = [(k.selector, f"v=DKIM1; k={k.algorithm}; p={k.public_key}") for k in keys]
    records = sending_records(ctx.settings, row.name, row.return_path_domain, dkim)
    return ok_all(records)


def routes() -> list[Route]:
    d = "/zones/{zone_id}/email/sending/subdomains"
    return [*crud_routes(d, "/{tag}", list_=list_subdomains, create=create_subdomain,
                         get=get_subdomain, edit=edit_subdomain, delete=delete_subdomain),
            Route(d + "/{tag}/dns", subdomain_dns, methods=["GET"])]
