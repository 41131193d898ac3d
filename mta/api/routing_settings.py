"""Email Routing settings and DNS of a zone: /zones/{zone_id}/email/routing[...].

| call                                  | does                                              |
| ------------------------------------- | ------------------------------------------------- |
| GET    .../email/routing              | the settings, with `status` computed from live DNS |
| PUT/PATCH .../email/routing           | `support_subaddress` (`enabled` is a no-op here,   |
|                                       | as the reference says; `skip_wizard` is accepted) |
| POST   .../email/routing/dns          | enable routing for the zone, or with `name` for   |
| POST   .../email/routing/enable       | one of its subdomains; the records become locked  |
| PATCH  .../email/routing/dns          | unlock the records                                |
| POST   .../email/routing/unlock       |                                                   |
| DELETE .../email/routing/dns          | disable routing for the zone                      |
| POST   .../email/routing/disable      |                                                   |
| GET    .../email/routing/dns          | the records to publish; with `?subdomain=` the    |
|                                       | reference's `{errors, record}` shape with what is |
|                                       | missing or wrong in live DNS                      |

Status ([Settings.status]): `unconfigured` while routing is off; otherwise `ready` or
`unlocked` when the MX and SPF records are in place (locked or not), `misconfigured/locked`
or `misconfigured` when they are not. We do not host the operator's DNS, so "locked"
records only mean the operator has not taken them back: the lock state lives in the
stored status itself (`ready` and `misconfigured/locked` are locked states). When DNS
cannot answer (SERVFAIL, timeout) the last stored status is kept.

There is no configuration wizard: `skip_wizard` always reads true.
"""

from __future__ import annotations

from sqlalchemy import select, update
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.auth import require, zone_of
from mta.api.envelope import api_error, body_bool, body_str, isotime, json_body, ok, ok_all
from mta.dnsrecords import check_records, routing_records, summarize
from mta.observe import audit
from mta.store.models import RoutingDomain, Zone
from mta.store.zones import zone_domain_count

__all__ = ["AUDIT_FIELDS", "domain_name", "routes", "routing_status"]

READ, EDIT = "email_routing:read", "email_routing:edit"
_LOCKED = {"ready", "misconfigured/locked"}
AUDIT_FIELDS = ("name", "routing_enabled", "support_subaddress", "routing_status")


def routing_status(enabled: bool, locked: bool, records_ok: bool | None, stored: str) -> str:
    """A zone's routing status from its switch, its lock and its DNS check."""
    if not enabled:
        return "unconfigured"
    if records_ok is None:  # DNS could not say: keep what we knew, with the lock asked for
        records_ok = stored in ("ready", "unlocked")
    if records_ok:
        return "ready" if locked else "unlocked"
    return "misconfigured/locked" if locked else "misconfigured"


def _locked(stored: str) -> bool:
    return stored in _LOCKED or stored == "unconfigured"


def settings_body(zone: Zone) -> dict:
    return {"id": zone.id, "tag": zone.id, "name": zone.name,
            "enabled": zone.routing_enabled, "status": zone.routing_status,
            "support_subaddress": zone.support_subaddress, "skip_wizard": True,
            "created": isotime(zone.created_at), "modified": isotime(zone.modified_at)}


async def _records_ok(request: Request, zone_name: str) -> bool | None:
    """Whether live DNS has the routing records (None: DNS could not say). Called outside
    any transaction: a slow resolver must not hold a connection or a row lock."""
    ctx = request.app.state.ctx
    return summarize(await check_records(ctx.resolver, routing_records(ctx.settings, zone_name)))


def domain_name(zone: Zone, name: str | None) -> str:
    """A zone's apex or one of its subdomains, as a lower-case FQDN."""
    if not name or name == "@":
        return zone.name
    n = name.strip().lower().rstrip(".")
    if n != zone.name and not n.endswith("." + zone.name):
        n = f"{n}.{zone.name}"
    if not all(label and len(label) <= 63 for label in n.split(".")) or len(n) > 253:
        raise api_error("E_VALIDATION_ERROR", f"{name!r} is not a domain name", field="name")
    return n


async def _ensure_domain(request: Request, session, zone: Zone, name: str) -> RoutingDomain:
    row = (await session.execute(select(RoutingDomain).where(
        RoutingDomain.name == name))).scalar_one_or_none()
    if row is not None:
        if row.zone_id != zone.id:
            raise api_error("E_VALIDATION_ERROR", f"{name} belongs to another zone", field="name")
        row.enabled = True
        return row
    limit = request.app.state.ctx.settings.limits.domains_per_zone
    if await zone_domain_count(session, zone.id) >= limit:
        raise api_error("E_VALIDATION_ERROR",
                        f"zone {zone.name} already has {limit} domains (limits.domains_per_zone)",
                        field="name")
    row = RoutingDomain(zone_id=zone.id, name=name, enabled=True)
    session.add(row)
    return row


# --- handlers --------------------------------------------------------------------------------


async def get_settings(request: Request) -> JSONResponse:
    p = await require(request, READ)
    db = request.app.state.ctx.db
    async with db.session() as s:
        zone = await zone_of(s, p, request.path_params["zone_id"])
    if zone.routing_enabled:
        status = routing_status(True, _locked(zone.routing_status),
                         await _records_ok(request, zone.name), zone.routing_status)
        if status != zone.routing_status:
            async with db.session() as s:
                await s.execute(update(Zone).where(Zone.id == zone.id).values(
                    routing_status=status))
            zone.routing_status = status
    return ok(settings_body(zone))


async def update_settings(request: Request) -> JSONResponse:
    p = await require(request, EDIT)
    body = await json_body(request)
    body_bool(body, "enabled")  # validated, but a no-op here (use .../dns)
    body_bool(body, "skip_wizard")
    subaddress = body_bool(body, "support_subaddress")
    async with request.app.state.ctx.db.session() as s:
        zone = await zone_of(s, p, request.path_params["zone_id"], for_update=True)
        before = audit.snapshot(zone, AUDIT_FIELDS)
        if subaddress is not None and subaddress != zone.support_subaddress:
            zone.support_subaddress = subaddress
            await s.flush()
            await s.refresh(zone)
            audit.record_row(s, p.actor, "update", "routing_settings", zone, AUDIT_FIELDS,
                             account_id=zone.account_id, before=before)
        return ok(settings_body(zone))


async def _change(request: Request, action: str) -> JSONResponse:
    """enable | unlock | disable, shared by the deprecated and the DNS-style paths."""
    p = await require(request, EDIT)
    body = await json_body(request)
    name = body_str(body, "name", max_len=253)
    db = request.app.state.ctx.db
    records_ok: bool | None = None
    if action != "disable":
        async with db.session() as s:
            zone = await zone_of(s, p, request.path_params["zone_id"])
        records_ok = await _records_ok(request, zone.name)
    async with db.session() as s:
        zone = await zone_of(s, p, request.path_params["zone_id"], for_update=True)
        before = audit.snapshot(zone, AUDIT_FIELDS)
        domain = domain_name(zone, name)
        if action == "enable":
            await _ensure_domain(request, s, zone, domain)
            if domain == zone.name or not zone.routing_enabled:
                await _ensure_domain(request, s, zone, zone.name)
                zone.routing_enabled = True
            zone.routing_status = routing_status(True, True, records_ok, zone.routing_status)
        elif action == "unlock":
            zone.routing_status = routing_status(zone.routing_enabled, False, records_ok,
                                          zone.routing_status)
        else:
            zone.routing_enabled = False
            zone.routing_status = "unconfigured"
        await s.flush()
        await s.refresh(zone)
        after = audit.snapshot(zone, AUDIT_FIELDS)
        if domain != zone.name:
            after["domain"] = domain
        audit.record(s, actor=p.actor, action=action, resource_type="routing_settings",
                     resource_id=zone.id, account_id=zone.account_id, before=before,
                     after=after)
        return ok(settings_body(zone))


async def enable(request: Request) -> JSONResponse:
    return await _change(request, "enable")


async def unlock(request: Request) -> JSONResponse:
    return await _change(request, "unlock")


async def disable(request: Request) -> JSONResponse:
    return await _change(request, "disable")


async def get_dns(request: Request) -> JSONResponse:
    p = await require(request, READ)
    ctx = request.app.state.ctx
    subdomain = request.query_params.get("subdomain")
    async with ctx.db.session() as s:
        zone = await zone_of(s, p, request.path_params["zone_id"])
    if subdomain is None:
        records = routing_records(ctx.settings, zone.name)
        return ok_all(records)
    domain = domain_name(zone, subdomain)
    records = routing_records(ctx.settings, domain)
    checks = await check_records(ctx.resolver, records)
    errors = [{"code": c.state, "missing": c.record} for c in checks if c.state != "ok"]
    return ok({"errors": errors, "record": records})


def routes() -> list[Route]:
    z = "/zones/{zone_id}/email/routing"
    return [
        Route(z, get_settings, methods=["GET"]),
        Route(z, update_settings, methods=["PUT", "PATCH"]),
        Route(f"{z}/enable", enable, methods=["POST"]),
        Route(f"{z}/disable", disable, methods=["POST"]),
        Route(f"{z}/unlock", unlock, methods=["POST"]),
        Route(f"{z}/dns", get_dns, methods=["GET"]),
        Route(f"{z}/dns", enable, methods=["POST"]),
        Route(f"{z}/dns", unlock, methods=["PATCH"]),
        Route(f"{z}/dns", disable, methods=["DELETE"]),
    ]
