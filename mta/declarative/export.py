"""The database written back as a routing document (`mta export`).

The output is what `mta apply` reads, chosen so that applying it changes nothing:
every managed collection is written (so `--prune` keeps exactly what exists), rules in
the order the matcher sees them, a rule's `id` only when its name cannot identify it
(empty, or shared with another rule of the zone), and the shorthand forms (`to`,
`forward`, `worker`, `drop`) whenever a rule's matchers and actions fit them, and
`wildcard:` / `regex:` for a pattern rule.
Destination-address verification is the owner's to give and is not exported.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import yaml
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.store import dkimkeys
from mta.store.dkimkeys import SENDING
from mta.store.models import (
    Account,
    DestinationAddress,
    RoutingDomain,
    RoutingRule,
    SendingDomain,
    Zone,
)

__all__ = ["export_document", "export_yaml"]

HEADER = ("# Routing configuration exported by `mta export`; apply with `mta apply FILE`.\n"
          "# Format: config/routing.example.yaml. Zones not listed are not managed.\n")


def _actions(actions: list[dict], out: dict[str, Any]) -> None:
    if len(actions) == 1 and set(actions[0]) <= {"type", "value"}:
        a = actions[0]
        if a["type"] == "drop" and "value" not in a:
            out["drop"] = True
            return
        if a["type"] in ("forward", "worker") and isinstance(a.get("value"), list):
            out[a["type"]] = list(a["value"])
            return
    out["actions"] = [dict(a) for a in actions]


def _rule(row: RoutingRule, needs_id: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": row.name}
    if needs_id:
        out["id"] = row.id
    m = row.matchers
    if row.pattern_type is not None:
        out[row.pattern_type] = row.pattern
    elif (len(m) == 1 and m[0].get("type") == "literal" and m[0].get("field", "to") == "to"
            and set(m[0]) <= {"type", "field", "value"}):
        out["to"] = m[0]["value"]
    else:
        out["matchers"] = [dict(x) for x in m]
    _actions(row.actions, out)
    out["priority"] = row.priority
    out["enabled"] = row.enabled
    return out


async def _account_ref(session: AsyncSession, account: Account) -> str:
    same = (await session.execute(select(func.count()).select_from(Account).where(
        Account.name == account.name))).scalar_one()
    return account.name if same == 1 and account.name != "" else account.id


async def _zone(session: AsyncSession, zone: Zone) -> dict[str, Any]:
    subdomains = (await session.execute(select(RoutingDomain.name).where(
        RoutingDomain.zone_id == zone.id, RoutingDomain.name != zone.name)
        .order_by(RoutingDomain.name))).scalars().all()
    out: dict[str, Any] = {"name": zone.name, "routing": zone.routing_enabled,
                           "subaddressing": zone.support_subaddress,
                           "subdomains": list(subdomains)}
    rules = (await session.execute(select(RoutingRule).where(RoutingRule.zone_id == zone.id)
                                   .order_by(RoutingRule.priority, RoutingRule.created_at,
                                             RoutingRule.id))).scalars().all()
    catch_all = next((r for r in rules if r.is_catch_all), None)
    if catch_all is not None:
        out["catch_all"] = {"enabled": catch_all.enabled}
        _actions(catch_all.actions, out["catch_all"])
    plain = [r for r in rules if not r.is_catch_all]
    names = Counter(r.name for r in plain)
    out["rules"] = [_rule(r, not r.name or names[r.name] > 1) for r in plain]
    sending = (await session.execute(select(SendingDomain).where(
        SendingDomain.zone_id == zone.id).order_by(SendingDomain.name))).scalars().all()
    now = datetime.now(UTC)
    ed = {d.name for d in sending if any(k.algorithm == "ed25519" for k in
                                         await dkimkeys.published(session, d.name, SENDING, now))}
    out["sending_domains"] = [
        {"name": d.name, "enabled": d.enabled, "ed25519": d.name in ed,
         "drop_suppressed_recipients": d.drop_suppressed_recipients,
         "preview_enabled": d.preview_enabled} for d in sending]
    return out


async def export_document(session: AsyncSession, account_id: str | None = None) -> dict:
    query = select(Account).order_by(Account.created_at, Account.id)
    if account_id is not None:
        query = query.where(Account.id == account_id)
    accounts = []
    for account in (await session.execute(query)).scalars():
        emails = (await session.execute(select(DestinationAddress.email).where(
            DestinationAddress.account_id == account.id)
            .order_by(DestinationAddress.email))).scalars().all()
        zones = (await session.execute(select(Zone).where(Zone.account_id == account.id)
                                       .order_by(Zone.name))).scalars().all()
        accounts.append({"account": await _account_ref(session, account),
                         "destination_addresses": list(emails),
                         "zones": [await _zone(session, z) for z in zones]})
    return {"version": 1, "accounts": accounts}


def export_yaml(document: dict) -> str:
    return HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True,
                                   default_flow_style=False, width=100)
