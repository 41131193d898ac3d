"""`mta zones create --account ID NAME | list`: DNS zones whose mail we route or send.

Creating a zone also makes its apex a routing domain; routing itself stays off until
it is enabled (`POST /zones/{id}/email/routing/dns` or `mta apply`). The ids printed
here are the `zone_id` of the admin API.
"""

from __future__ import annotations

from sqlalchemy import select

from mta.commands._common import find_account, open_database
from mta.config import Settings
from mta.observe import audit
from mta.store.models import RoutingDomain, Zone

__all__ = ["register", "zone_name"]


def zone_name(raw: str) -> str | None:
    """A zone apex, lower-cased; None when `raw` is not a domain name."""
    name = raw.strip().lower().rstrip(".")
    labels = name.split(".")
    if len(labels) < 2 or len(name) > 253 or not all(
            0 < len(x) <= 63 and x.replace("-", "").isalnum() for x in labels):
        return None
    return name


async def _cmd_create(args, settings: Settings) -> int:
    name = zone_name(args.name)
    if name is None:
        print(f"mta: {args.name!r} is not a domain name")
        return 2
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account, stderr=False)
        if account is None:
            return 1
        if (await s.execute(select(Zone.id).where(Zone.name == name))).first():
            print(f"mta: zone {name} already exists")
            return 1
        zone = Zone(account_id=account.id, name=name)
        s.add(zone)
        await s.flush()
        s.add(RoutingDomain(zone_id=zone.id, name=name, enabled=True))
        audit.record(s, actor=audit.cli_actor(), action="create", resource_type="zone",
                     resource_id=zone.id, account_id=account.id,
                     after={"name": name, "account_id": account.id})
    print(zone.id)
    return 0


async def _cmd_list(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        query = select(Zone).order_by(Zone.name)
        if args.account:
            account = await find_account(s, args.account, stderr=False)
            if account is None:
                return 1
            query = query.where(Zone.account_id == account.id)
        rows = (await s.execute(query)).scalars().all()
    print(f"{'ID':32}  {'ACCOUNT':32}  {'ROUTING':8}  {'STATUS':20}  NAME")
    for z in rows:
        print(f"{z.id:32}  {z.account_id:32}  {'on' if z.routing_enabled else 'off':8}  "
              f"{z.routing_status:20}  {z.name}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("zones", help="DNS zones (their ids are the API's zone_id)")
    ps = p.add_subparsers(dest="zones_command", required=True)
    c = ps.add_parser("create", help="create a zone; prints its id")
    c.add_argument("--account", required=True, help="account id or name")
    c.add_argument("name", help="the zone apex, e.g. example.com")
    c.set_defaults(func=_cmd_create)
    c = ps.add_parser("list", help="list zones with their ids")
    c.add_argument("--account", help="only this account's zones (id or name)")
    c.set_defaults(func=_cmd_list)
