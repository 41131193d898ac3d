"""`mta rules list [--zone Z] | test ADDRESS | check --wildcard P | --regex P`: the
routing rules as the MX sees them.

`list` shows a zone's rules in the order the matcher tries them (priority, then age),
literal and pattern rules together, the catch-all last. `test` asks the same recipient
look-up the MX asks at RCPT (mta/routing/recipients.py) and says which rule takes the
address and how it matched. `check` validates a pattern with the limits of
mta/routing/patterns.py without saving anything. Rules are made with `mta apply` or the
admin API.
"""

from __future__ import annotations

from sqlalchemy import select

from mta.commands._common import CommandGroup, open_database, print_list
from mta.commands._errors import CliError
from mta.config import Settings
from mta.routing.patterns import Pattern, PatternError, compiled
from mta.routing.recipients import RecipientDirectory
from mta.store.models import RoutingRule, Zone
from mta.store.zones import zone_name

__all__ = ["register"]


def _kind(rule: RoutingRule) -> str:
    if rule.is_catch_all:
        return "catch-all"
    return rule.pattern_type or "literal"


def _match(rule: RoutingRule) -> str:
    if rule.pattern_type is not None:
        return rule.pattern or ""
    return ", ".join(str(m.get("value", m.get("type", ""))) for m in rule.matchers)


def _actions(rule: RoutingRule) -> str:
    return "; ".join(f"{a.get('type')} {','.join(a.get('value') or [])}".strip()
                     for a in rule.actions)


async def _cmd_list(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        query = select(RoutingRule, Zone).join(Zone, Zone.id == RoutingRule.zone_id)
        if args.zone:
            name = zone_name(args.zone) or args.zone
            query = query.where((Zone.id == args.zone) | (Zone.name == name))
        rows = (await s.execute(query.order_by(
            Zone.name, RoutingRule.is_catch_all, RoutingRule.priority,
            RoutingRule.created_at, RoutingRule.id))).all()
    if args.zone and not rows:
        raise CliError(f"zone {args.zone!r} has no rules, or no such zone; see "
                       "`mta zones list`")
    return print_list(
        args, [{"zone": z.name, "id": r.id, "name": r.name, "kind": _kind(r),
                "priority": None if r.is_catch_all else r.priority,
                "enabled": r.enabled, "matchers": r.matchers,
                "pattern": None if r.pattern_type is None else
                {"type": r.pattern_type, "value": r.pattern},
                "actions": r.actions} for r, z in rows],
        [[z.name, r.id, "-" if r.is_catch_all else r.priority, _kind(r),
          "on" if r.enabled else "off", r.name or "-", _match(r), _actions(r)]
         for r, z in rows],
        ["ZONE", "ID", "PRIORITY", "KIND", "ENABLED", "NAME", "MATCHES", "ACTIONS"],
        empty="no rules")


async def _cmd_test(args, settings: Settings) -> int:
    async with open_database(settings) as db:
        verdict = await RecipientDirectory(db, 0).lookup(args.address)
    if verdict.kind == "relay_denied":
        raise CliError(f"{verdict.domain} is not an enabled routing domain: the MX refuses "
                       f"<{verdict.address}> (550 5.7.1)")
    if verdict.match is None:
        raise CliError(f"no active rule and no active catch-all takes <{verdict.address}>: "
                       "the MX refuses it (550 5.1.1)")
    rule, match = verdict.match.rule, verdict.match
    how = match.kind + (f" via {match.matched}" if match.matched != match.address else "")
    target = f"{rule.pattern.kind} {rule.pattern.value}" if rule.pattern else \
        "catch-all" if rule.catch_all else ", ".join(rule.literal_targets())
    print(f"<{verdict.address}>: rule {rule.name or rule.id} ({rule.id}), {how}, "
          f"matching {target}")
    for action in rule.actions:
        print(f"  {action.type} {', '.join(action.value)}".rstrip())
    return 0


async def _cmd_check(args, settings: Settings) -> int:
    kind, value = ("wildcard", args.wildcard) if args.wildcard is not None else \
        ("regex", args.regex)
    try:
        pattern = Pattern.parse(kind, value)
    except PatternError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None
    size = compiled(pattern.kind, pattern.value).programsize
    print(f"{pattern.kind} {pattern.value}: ok ({size} instructions)")
    return 0


def register(sub) -> None:
    ps = CommandGroup(sub, "rules", "routing rules as the MX sees them (make them with "
                                    "`mta apply` or the admin API)")
    c = ps.add("list", _cmd_list, "rules in matching order, literal and pattern together",
               json=True)
    c.add_argument("--zone", help="only this zone (id or name)")
    c = ps.add("test", _cmd_test, "which rule takes ADDRESS now (the MX's own look-up)")
    c.add_argument("address")
    c = ps.add("check", _cmd_check, "validate a pattern without saving it")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--wildcard", help="e.g. 'sales-*@example.com'")
    g.add_argument("--regex", help="RE2, matched against the whole address")
