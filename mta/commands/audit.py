"""`mta audit list`: who changed which configuration, when (the audit log).

Every account unless `--account` (id or name) narrows it; `--since`/`--until` take a
time, a date or an age (`7d`: seven days ago). Entries come from the API (`token:<id>`),
the command line (`cli:<user>`) and YAML apply, newest first.

    mta audit list --since 7d --resource-type routing_rule
"""

from __future__ import annotations

from datetime import UTC, datetime

from mta.commands._common import (
    CommandGroup,
    account_filter,
    add_page_options,
    open_database,
    page_footer,
    page_query,
    parse_when,
    print_list,
)
from mta.config import Settings
from mta.observe import analytics

__all__ = ["register"]


async def _cmd_list(args, settings: Settings) -> int:
    now = datetime.now(UTC)
    async with open_database(settings) as db, db.session() as s:
        account_id = await account_filter(s, args.account)
        f = analytics.AuditFilter(
            since=parse_when(args.since, now) if args.since else None,
            until=parse_when(args.until, now) if args.until else None,
            account_id=account_id, actor=args.actor, action=args.action,
            resource_type=args.resource_type, resource_id=args.resource_id)
        rows, total = await analytics.list_audit(
            s, f, **page_query(args))
    return print_list(args, {"entries": rows, "total": total},
                      [[r["when"], f"{r['actor']['type']}:{r['actor']['id']}",
                        r["action"]["type"], r["resource"]["type"], r["resource"]["id"] or "-",
                        _change(r)] for r in rows],
                      ["WHEN", "ACTOR", "ACTION", "RESOURCE", "ID", "CHANGE"],
                      empty="no audit entries", **page_footer(args, total))


def _change(row: dict) -> str:
    """The CHANGE column: the fields an update changed, old -> new (cut at 100 characters)."""
    before, after = row["oldValueJson"], row["newValueJson"]
    if not isinstance(before, dict) or not isinstance(after, dict):
        return ""  # a create or a delete: nothing to compare
    keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    return ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys)[:100]


def register(sub) -> None:
    au = CommandGroup(sub, "audit", "the audit log of configuration changes")
    lst = au.add("list", _cmd_list, "audit entries, newest first", json=True)
    lst.add_argument("--account", help="account id or name (default: every account)")
    lst.add_argument("--since", help="a time, a date or an age such as 7d")
    lst.add_argument("--until", help="end (exclusive): a time, a date or an age")
    lst.add_argument("--actor", help="token:<id>, cli:<user>, or just the id or user")
    lst.add_argument("--action", help="create, update, delete, enable, verify ...")
    lst.add_argument("--resource-type", help="routing_rule, destination_address, ...")
    lst.add_argument("--resource-id")
    add_page_options(lst, "entries")
