"""`mta zones create --account ID NAME | list | rename ZONE NEW | delete ZONE`: DNS zones
whose mail we route or send. `rename` and `delete` first say what happens to the zone's
rules and go ahead only with `--yes` (or, for `rename`, when no rule is affected).

Creating a zone also makes its apex a routing domain; routing itself stays off until
it is enabled (`POST /zones/{id}/email/routing/dns` or `mta apply`). The ids printed
here are the `zone_id` of the admin API.
"""

from __future__ import annotations

from sqlalchemy import select

from mta.commands._common import CommandGroup, find_account, open_database, print_list
from mta.commands._errors import CliError, confirm_delete
from mta.config import Settings
from mta.observe import audit
from mta.store.models import RoutingDomain, RoutingRule, SendingDomain, Zone
from mta.store.zones import zone_name

__all__ = ["register"]


def _name_arg(value: str) -> str:
    """A zone name from the command line (a usage error when it is none)."""
    name = zone_name(value)
    if name is None:
        raise CliError(f"{value!r} is not a domain name", exit_code=2)
    return name


async def _cmd_create(args, settings: Settings) -> int:
    name = _name_arg(args.name)
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        if (await s.execute(select(Zone.id).where(Zone.name == name))).first():
            raise CliError(f"zone {name} already exists; see `mta zones list`")
        zone = Zone(account_id=account.id, name=name)
        s.add(zone)
        await s.flush()
        s.add(RoutingDomain(zone_id=zone.id, name=name, enabled=True))
        audit.record(s, actor=audit.cli_actor(), action="create", resource_type="zone",
                     resource_id=zone.id, account_id=account.id,
                     after={"name": name, "account_id": account.id})
    print(zone.id)
    return 0


async def _zone(s, ref: str) -> Zone:
    name = zone_name(ref)
    zone = (await s.execute(select(Zone).where(
        (Zone.id == ref) | (Zone.name == (name or ref))))).scalar_one_or_none()
    if zone is None:
        raise CliError(f"no zone {ref!r}; see `mta zones list`")
    return zone


async def _rules(s, zone: Zone) -> list[RoutingRule]:
    return list((await s.execute(select(RoutingRule).where(
        RoutingRule.zone_id == zone.id).order_by(RoutingRule.priority))).scalars().all())


def _rule_line(rule: RoutingRule) -> str:
    match = ", ".join(m.get("value", m.get("type", "")) for m in rule.matchers)
    if rule.pattern_type is not None:
        match = f"{rule.pattern_type} {rule.pattern}"
    acts = "; ".join(f"{a.get('type')} {','.join(a.get('value') or [])}".strip()
                     for a in rule.actions)
    return f"  rule {rule.name or rule.id!s}: {match or 'catch-all'} -> {acts}"


async def _cmd_delete(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        zone = await _zone(s, args.zone)
        rules = await _rules(s, zone)
        domains = (await s.execute(select(RoutingDomain.name).where(
            RoutingDomain.zone_id == zone.id))).scalars().all()
        sending = (await s.execute(select(SendingDomain.name).where(
            SendingDomain.zone_id == zone.id))).scalars().all()
        print(f"zone {zone.name} ({zone.id}): {len(rules)} routing rules, routing domains "
              f"{', '.join(sorted(domains)) or 'none'}, sending domains "
              f"{', '.join(sorted(sending)) or 'none'}")
        for rule in rules:
            print(_rule_line(rule))
        confirm_delete(args.yes, "deleting the zone deletes these rules and domains: mail "
                       "to them is refused (550 5.1.1) and sending from them stops; queued "
                       "mail is still delivered", f"mta zones delete {args.zone}")
        audit.record(s, actor=audit.cli_actor(), action="delete", resource_type="zone",
                     resource_id=zone.id, account_id=zone.account_id,
                     before={"name": zone.name, "rules": len(rules), "domains": domains,
                             "sending_domains": sending})
        await s.delete(zone)
    print(f"deleted zone {zone.name} ({zone.id})")
    return 0


def _renamed_pattern(rule: RoutingRule, old: str, new: str) -> str | None:
    """A wildcard's domain follows the zone (it is written out); a regex is the user's
    text and is left as it is."""
    if rule.pattern_type == "wildcard" and rule.pattern and rule.pattern.endswith("@" + old):
        return rule.pattern[: -len(old)] + new
    return rule.pattern


def _renamed(matchers: list[dict], old: str, new: str) -> list[dict]:
    out = []
    for m in matchers:
        value = m.get("value")
        if isinstance(value, str) and value.lower().endswith("@" + old):
            m = dict(m, value=value[: -len(old)] + new)
        out.append(m)
    return out


async def _cmd_rename(args, settings: Settings) -> int:
    new = _name_arg(args.new_name)
    async with open_database(settings) as db, db.session() as s:
        zone = await _zone(s, args.zone)
        old = zone.name
        if (await s.execute(select(Zone.id).where(Zone.name == new))).first() or (
                await s.execute(select(RoutingDomain.id).where(RoutingDomain.name == new))
        ).first():
            raise CliError(f"{new} is already a zone or routing domain; see `mta zones list`")
        others = (await s.execute(select(RoutingDomain.name).where(
            RoutingDomain.zone_id == zone.id, RoutingDomain.name != old))).scalars().all()
        sending = (await s.execute(select(SendingDomain.name).where(
            SendingDomain.zone_id == zone.id))).scalars().all()
        if others or sending:
            raise CliError(f"zone {old} also has {', '.join([*others, *sending])}; a zone "
                           "with subdomains or sending domains cannot be renamed (create "
                           "the new zone and move the rules with `mta apply`)")
        every = await _rules(s, zone)
        rules = [r for r in every if _renamed(r.matchers, old, new) != r.matchers
                 or _renamed_pattern(r, old, new) != r.pattern]
        regexes = [r for r in every if r.pattern_type == "regex"]
        print(f"zone {old} ({zone.id}) becomes {new}; {len(rules)} rules then match "
              f"@{new} instead of @{old}:")
        for rule in rules:
            print(_rule_line(rule))
        if regexes:
            print(f"{len(regexes)} regex rules are not rewritten (edit any that name {old}):")
            for rule in regexes:
                print(_rule_line(rule))
        if (rules or regexes) and not args.yes:
            raise CliError(f"nothing renamed; run `mta zones rename {args.zone} {new} --yes` "
                           "to rename it")
        for rule in rules:
            rule.matchers = _renamed(rule.matchers, old, new)
            rule.pattern = _renamed_pattern(rule, old, new)
        await s.execute(RoutingDomain.__table__.update().where(
            RoutingDomain.zone_id == zone.id, RoutingDomain.name == old).values(name=new))
        zone.name = new
        audit.record(s, actor=audit.cli_actor(), action="update", resource_type="zone",
                     resource_id=zone.id, account_id=zone.account_id,
                     before={"name": old}, after={"name": new})
    print(f"renamed zone {old} -> {new} ({zone.id}); publish its DNS records: mta dns {new}")
    return 0


async def _cmd_list(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        query = select(Zone).order_by(Zone.name)
        if args.account:
            account = await find_account(s, args.account)
            query = query.where(Zone.account_id == account.id)
        rows = (await s.execute(query)).scalars().all()
    return print_list(
        args, [{"id": z.id, "name": z.name, "account_id": z.account_id,
                "routing_enabled": z.routing_enabled, "routing_status": z.routing_status,
                "created_at": z.created_at} for z in rows],
        [[z.id, z.account_id, "on" if z.routing_enabled else "off", z.routing_status, z.name]
         for z in rows], ["ID", "ACCOUNT", "ROUTING", "STATUS", "NAME"])


def register(sub) -> None:
    ps = CommandGroup(sub, "zones", "DNS zones (their ids are the API's zone_id)")
    c = ps.add("create", _cmd_create, "create a zone; prints its id")
    c.add_argument("--account", required=True, help="account id or name")
    c.add_argument("name", help="the zone apex, e.g. example.com")
    c = ps.add("delete", _cmd_delete, "delete a zone with its rules (says what first; "
                                      "deletes with --yes)")
    c.add_argument("zone", help="zone id or name")
    c.add_argument("--yes", action="store_true", help="delete without asking again")
    c = ps.add("rename", _cmd_rename, "rename a zone; its rules follow (says which first)")
    c.add_argument("zone", help="zone id or name")
    c.add_argument("new_name")
    c.add_argument("--yes", action="store_true", help="rename without asking again")
    c = ps.add("list", _cmd_list, "list zones with their ids", json=True)
    c.add_argument("--account", help="only this account's zones (id or name)")
