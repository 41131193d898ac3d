"""Routing rules and the catch-all: /zones/{zone_id}/email/routing/rules[...] and the
account-wide list /accounts/{account_id}/email/routing/rules.

A rule has matchers (`{type: literal, field: to, value: <address on one of the zone's
domains>}`), actions (`forward` to destination addresses of the account, `worker` with a
handler name, `drop`), `enabled`, `priority` (lower first) and `name`. Destinations must
already be destination addresses of the account (verified or not: an unverified one
leaves the rule inactive until it is verified, [Email routing rules and addresses]).
At most `limits.rules_per_zone` rules per zone.

The catch-all is the zone's one rule with `is_catch_all`; it has no POST or DELETE, only
GET and PUT, and is created (disabled, action drop) the first time it is asked for. It
is not part of the rules list, and `catch_all` is never a rule id (ids are 32 hex), so
its path cannot be mistaken for a rule's.

`source` is always `api`: rules managed by a Worker's wrangler file do not exist here.

Pattern rules (ours, beyond the reference): a rule may carry `pattern: {type: wildcard |
regex, field: to, value}` instead of literal matchers (mta/routing/patterns.py). It is an
extra key of the rule object, so the reference's clients keep working: the official SDK
keeps unknown keys and sends them with `extra_body`, and such a rule shows `matchers: []`
(a `matchers` entry of a type it does not know would fail its strict validation). Every
rule body carries `pattern`, null for a literal rule. Refused patterns answer 400 with
`error_code` E_PATTERN_INVALID, E_PATTERN_TOO_LONG or E_PATTERN_TOO_COMPLEX.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.addresses import normalize_email
from mta.api.auth import Principal, owned_row, require, zone_of, zone_session
from mta.api.envelope import (
    api_error,
    body_bool,
    body_int,
    body_list,
    body_str,
    crud_routes,
    json_body,
    ok,
    page_of,
    page_request,
    query_bool,
)
from mta.observe import audit
from mta.routing.patterns import Pattern, PatternError
from mta.store.models import DestinationAddress, RoutingRule, Zone

__all__ = ["AUDIT_FIELDS", "actions", "ensure_catch_all", "matchers", "pattern", "routes",
           "rule_body"]

READ, EDIT = "email_routing:read", "email_routing:edit"
AUDIT_FIELDS = ("zone_id", "name", "priority", "enabled", "is_catch_all", "matchers",
                 "pattern_type", "pattern", "actions")
ACTION_TYPES = ("forward", "worker", "drop")


def rule_body(rule: RoutingRule, zone: Zone | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rule.id, "tag": rule.id, "name": rule.name, "enabled": rule.enabled,
        "matchers": rule.matchers, "actions": rule.actions, "source": "api"}
    if not rule.is_catch_all:
        body["priority"] = rule.priority
        body["pattern"] = None if rule.pattern_type is None else {
            "type": rule.pattern_type, "field": "to", "value": rule.pattern}
    if zone is not None:
        body["zone"] = {"name": zone.name, "tag": zone.id}
    return body


# --- validation --------------------------------------------------------------------------------


def _in_zone(zone: Zone, address: str) -> bool:
    domain = address.rpartition("@")[2]
    return domain == zone.name or domain.endswith("." + zone.name)


def _objects(raw: list, field: str, what: str) -> list[tuple[str, dict]]:
    """The entries of the list `field`, each with where it stands (`field[i]`) for errors;
    api_error when the list is empty or an entry is not an object."""
    if not raw:
        raise api_error("E_VALIDATION_ERROR", f"at least one {what} is required", field=field)
    entries = [(f"{field}[{i}]", entry) for i, entry in enumerate(raw)]
    for where, entry in entries:
        if not isinstance(entry, dict):
            raise api_error("E_VALIDATION_ERROR", f"each {what} is an object", field=where)
    return entries


def matchers(zone: Zone, raw: list, *, catch_all: bool) -> list[dict]:
    """A rule's matchers, validated against the zone (api_error when invalid)."""
    out: list[dict] = []
    for where, m in _objects(raw, "matchers", "matcher"):
        kind = m.get("type")
        if catch_all:
            if kind != "all":
                raise api_error("E_VALIDATION_ERROR", "the catch-all matcher is {type: all}",
                                field=f"{where}.type")
            out.append({"type": "all"})
            continue
        if kind == "all":
            raise api_error("E_VALIDATION_ERROR", "type all is the catch-all rule: use "
                            "PUT .../rules/catch_all", field=f"{where}.type")
        if kind != "literal":
            raise api_error("E_VALIDATION_ERROR", "matcher type must be literal",
                            field=f"{where}.type")
        if m.get("field", "to") != "to":
            raise api_error("E_VALIDATION_ERROR", "matcher field must be to",
                            field=f"{where}.field")
        value = m.get("value")
        if not isinstance(value, str):
            raise api_error("E_FIELD_MISSING", "a literal matcher needs a value",
                            field=f"{where}.value")
        address = normalize_email(value, field=f"{where}.value")
        if not _in_zone(zone, address):
            raise api_error("E_VALIDATION_ERROR",
                            f"{value} is not an address of zone {zone.name}",
                            field=f"{where}.value")
        out.append({"type": "literal", "field": "to", "value": value.strip()})
    return out


def pattern(zone: Zone, raw: Any) -> Pattern:
    """A rule's pattern, validated (api_error when invalid or beyond the limits)."""
    if not isinstance(raw, dict):
        raise api_error("E_PATTERN_INVALID", "pattern is an object {type, value}",
                        field="pattern")
    if raw.get("field", "to") != "to":
        raise api_error("E_VALIDATION_ERROR", "pattern field must be to", field="pattern.field")
    try:
        parsed = Pattern.parse(raw.get("type"), raw.get("value"))
    except PatternError as exc:
        where = "pattern.type" if raw.get("type") not in ("wildcard", "regex") else \
            "pattern.value"
        raise api_error(exc.code, exc.message, field=where) from None
    if parsed.domain is not None and not _in_zone(zone, parsed.domain):
        raise api_error("E_VALIDATION_ERROR", f"{parsed.domain} is not a domain of zone "
                        f"{zone.name}", field="pattern.value")
    return parsed


async def actions(session: AsyncSession, account_id: str, raw: list) -> list[dict]:
    """A rule's actions, validated against the account (api_error when invalid)."""
    out: list[dict] = []
    for where, a in _objects(raw, "actions", "action"):
        if a.get("type") not in ACTION_TYPES:
            raise api_error("E_VALIDATION_ERROR", "action type must be forward, worker or drop",
                            field=f"{where}.type")
        kind = a["type"]
        values = a.get("value")
        if kind == "drop":
            out.append({"type": "drop"})
            continue
        if not isinstance(values, list) or not values or not all(
                isinstance(v, str) and v.strip() for v in values):
            raise api_error("E_FIELD_MISSING", f"a {kind} action needs a list of values",
                            field=f"{where}.value")
        if kind == "forward":
            wanted = [normalize_email(v, field=f"{where}.value") for v in values]
            known = set((await session.execute(
                select(func.lower(DestinationAddress.email)).where(
                    DestinationAddress.account_id == account_id,
                    func.lower(DestinationAddress.email).in_(wanted)))).scalars())
            missing = [v for v in wanted if v not in known]
            if missing:
                raise api_error("E_VALIDATION_ERROR",
                                f"{', '.join(missing)} is not a destination address of this "
                                "account; add it under email/routing/addresses first",
                                field=f"{where}.value")
            values = [v.strip() for v in values]
        out.append({"type": kind, "value": values})
    return out


def _source(body: dict) -> None:
    if body_str(body, "source", default="api") != "api":
        raise api_error("E_VALIDATION_ERROR", "only source api is supported", field="source")


async def _rule(session: AsyncSession, zone: Zone, rule_id: str,
                for_update: bool = False) -> RoutingRule:
    return await owned_row(session, RoutingRule, rule_id, "rule", for_update=for_update,
                           owned=lambda rule: rule.zone_id == zone.id and not rule.is_catch_all)


async def ensure_catch_all(session: AsyncSession, zone: Zone) -> RoutingRule:
    rule = (await session.execute(select(RoutingRule).where(
        RoutingRule.zone_id == zone.id, RoutingRule.is_catch_all.is_(True)))).scalar_one_or_none()
    if rule is None:
        rule = RoutingRule(zone_id=zone.id, name="", enabled=False, is_catch_all=True,
                           matchers=[{"type": "all"}], actions=[{"type": "drop"}])
        session.add(rule)
        await session.flush()
    return rule


# --- handlers --------------------------------------------------------------------------------


async def _fields(request: Request, s: AsyncSession, p: Principal, zone: Zone,
                  catch_all: bool) -> dict[str, Any]:
    body = await json_body(request)
    _source(body)
    raw_pattern = body.get("pattern")
    if raw_pattern is not None and catch_all:
        raise api_error("E_VALIDATION_ERROR", "the catch-all has no pattern", field="pattern")
    fields: dict[str, Any] = _match_fields(zone, body, catch_all)
    fields |= {
        "actions": await actions(s, p.account_id,
                                  body_list(body, "actions", required=True) or []),
        "name": body_str(body, "name", default="", max_len=256),
        "enabled": body_bool(body, "enabled", default=True),
    }
    if not catch_all:
        fields["priority"] = body_int(body, "priority", default=0)
    return fields


def _match_fields(zone: Zone, body: dict, catch_all: bool) -> dict[str, Any]:
    """`matchers`, or a pattern with `matchers: []` (given empty or left out)."""
    raw_pattern = body.get("pattern")
    if raw_pattern is None:
        return {"matchers": matchers(zone, body_list(body, "matchers", required=True) or [],
                                     catch_all=catch_all),
                "pattern_type": None, "pattern": None}
    if body_list(body, "matchers"):
        raise api_error("E_VALIDATION_ERROR", "a rule has either matchers or a pattern; "
                        "give matchers: [] with a pattern", field="matchers")
    parsed = pattern(zone, raw_pattern)
    return {"matchers": [], "pattern_type": parsed.kind, "pattern": parsed.value}


async def list_rules(request: Request) -> JSONResponse:
    account_id = request.path_params.get("account_id")
    p = await require(request, READ, account_id=account_id)
    page = page_request(request)
    enabled = query_bool(request, "enabled")
    async with request.app.state.ctx.db.session() as s:
        where = [RoutingRule.is_catch_all.is_(False)]
        if account_id is None:
            zone = await zone_of(s, p, request.path_params["zone_id"])
            where.append(RoutingRule.zone_id == zone.id)
        else:
            where.append(Zone.account_id == account_id)
        if enabled is not None:
            where.append(RoutingRule.enabled.is_(enabled))
        rows, total = await page_of(s, select(RoutingRule, Zone).join(
            Zone, Zone.id == RoutingRule.zone_id).where(*where).order_by(
            RoutingRule.priority, RoutingRule.created_at, RoutingRule.id), page)
    result = [rule_body(r, z if account_id else None) for r, z in rows]
    return ok(result, result_info=page.info(len(result), total))


async def create_rule(request: Request) -> JSONResponse:
    p = await require(request, EDIT)
    ctx = request.app.state.ctx
    async with ctx.db.session() as s:
        # Locking the zone row serialises creates, so the limit holds under concurrency.
        zone = await zone_of(s, p, request.path_params["zone_id"], for_update=True)
        fields = await _fields(request, s, p, zone, catch_all=False)
        limit = ctx.settings.limits.rules_per_zone
        count = (await s.execute(select(func.count()).select_from(RoutingRule).where(
            RoutingRule.zone_id == zone.id, RoutingRule.is_catch_all.is_(False)))).scalar_one()
        if count >= limit:
            raise api_error("E_VALIDATION_ERROR", f"zone {zone.name} already has {limit} rules "
                            "(limits.rules_per_zone)")
        rule = RoutingRule(zone_id=zone.id, is_catch_all=False, **fields)
        s.add(rule)
        await s.flush()
        audit.record_row(s, p.actor, "create", "routing_rule", rule, AUDIT_FIELDS,
                         account_id=zone.account_id)
        return ok(rule_body(rule))


async def get_rule(request: Request) -> JSONResponse:
    async with zone_session(request, READ) as (p, s, zone):
        rule = await _rule(s, zone, request.path_params["rule_id"])
        return ok(rule_body(rule))


async def update_rule(request: Request) -> JSONResponse:
    async with zone_session(request, EDIT) as (p, s, zone):
        rule = await _rule(s, zone, request.path_params["rule_id"], for_update=True)
        fields = await _fields(request, s, p, zone, catch_all=False)
        await audit.update_row(s, p.actor, "routing_rule", rule, fields, AUDIT_FIELDS,
                               account_id=zone.account_id)
        return ok(rule_body(rule))


async def delete_rule(request: Request) -> JSONResponse:
    async with zone_session(request, EDIT) as (p, s, zone):
        rule = await _rule(s, zone, request.path_params["rule_id"], for_update=True)
        body = rule_body(rule)
        audit.record_row(s, p.actor, "delete", "routing_rule", rule, AUDIT_FIELDS,
                         account_id=zone.account_id)
        await s.delete(rule)
        return ok(body)


async def get_catch_all(request: Request) -> JSONResponse:
    async with zone_session(request, READ, for_update=True) as (p, s, zone):
        return ok(rule_body(await ensure_catch_all(s, zone)))


async def update_catch_all(request: Request) -> JSONResponse:
    async with zone_session(request, EDIT, for_update=True) as (p, s, zone):
        fields = await _fields(request, s, p, zone, catch_all=True)
        rule = await ensure_catch_all(s, zone)
        await audit.update_row(s, p.actor, "routing_catch_all", rule, fields, AUDIT_FIELDS,
                               account_id=zone.account_id)
        return ok(rule_body(rule))


def routes() -> list[Route]:
    r = "/zones/{zone_id}/email/routing/rules"
    return [
        Route(f"{r}/catch_all", get_catch_all, methods=["GET"]),
        Route(f"{r}/catch_all", update_catch_all, methods=["PUT"]),
        *crud_routes(r, "/{rule_id}", list_=list_rules, create=create_rule, get=get_rule,
                     edit=update_rule, delete=delete_rule, edit_method="PUT"),
        Route("/accounts/{account_id}/email/routing/rules", list_rules, methods=["GET"]),
    ]
