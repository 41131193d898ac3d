"""`mta suppression add|remove|list`: the operator's hand on the suppression list.

Entries belong to an account; `--account` takes its id or its name. Complaint entries are
read-only: `remove` refuses them unless `--force` is given (and says so).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mta.commands._common import CommandGroup, find_account, open_database, print_json, print_list
from mta.commands._errors import CliError
from mta.config import Settings, parse_duration
from mta.store import suppression

__all__ = ["register"]


def _expiry(value: str | None, now: datetime) -> datetime | None:
    if not value or value in ("never", "permanent"):
        return None
    try:
        return now + timedelta(seconds=parse_duration(value))
    except ValueError:
        ts = datetime.fromisoformat(value)
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


async def _cmd_add(args, settings: Settings) -> int:
    now = datetime.now(UTC)
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        acct = account.id
        try:
            entry = await suppression.add(
                s, acct, args.email, args.reason, now=now,
                scope_type=args.scope or ("sending_domain" if args.domain else "account"),
                scope_value=args.domain, note=args.note, expires_at=_expiry(args.expires, now))
        except suppression.SuppressionError as exc:
            raise CliError(str(exc), exit_code=2) from None
        out = suppression.to_dict(entry)
    if args.json:
        print_json(out)
        return 0
    print(f"suppressed {out['email']} ({out['reason']}, {_scope(out)}, "
          f"{'until ' + out['expires_at'] if out['expires_at'] else 'permanent'}) id {out['id']}")
    return 0


async def _cmd_remove(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        acct = account.id
        by_id = len(args.target) == 32 and "@" not in args.target
        try:
            removed = await suppression.remove(
                s, acct, suppression_id=args.target if by_id else None,
                email=None if by_id else args.target,
                scope_type=args.scope or ("sending_domain" if args.domain else None),
                scope_value=args.domain, force=args.force)
        except suppression.SuppressionProtected as exc:
            raise CliError(f"refused: {exc}; add --force to remove it anyway") from None
        except suppression.SuppressionError as exc:
            raise CliError(str(exc)) from None
    for e in removed:
        print(f"removed {e.email} ({e.reason}, {e.scope_type}"
              f"{':' + e.scope_value if e.scope_value else ''}) id {e.id}")
    return 0


def _scope(d: dict) -> str:
    scope = d["scope"]
    return scope["type"] + (f":{scope['value']}" if scope.get("value") else "")


async def _cmd_list(args, settings: Settings) -> int:
    now = datetime.now(UTC)
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        acct = account.id
        page = await suppression.list_entries(
            s, acct, now=now, reason=args.reason, search=args.search,
            scope_type=args.scope, scope_value=args.domain,
            include_expired=args.include_expired, cursor=args.cursor, per_page=args.limit)
    items = [suppression.to_dict(e) for e in page.items]
    more = f"\nmore: --cursor {page.cursor}" if items and page.cursor else None
    return print_list(args, {"items": items, "cursor": page.cursor},
                      [[d["id"], d["email"], d["reason"], _scope(d),
                        d["expires_at"] or "permanent", "yes" if d["read_only"] else "",
                        (d["note"] or "")[:40]] for d in items],
                      ["ID", "EMAIL", "REASON", "SCOPE", "EXPIRES", "READ-ONLY", "NOTE"],
                      empty="no suppressions", footer=more)


def register(sub) -> None:
    ps = CommandGroup(sub, "suppression", "recipients an account must not send to")

    def common(c) -> None:
        c.add_argument("--account", required=True, help="account id or name")
        c.add_argument("--scope", choices=suppression.SCOPES, default=None)
        c.add_argument("--domain", help="the sending domain of a sending_domain scope "
                                        "(implies --scope sending_domain)")

    c = ps.add("add", _cmd_add, "suppress an address", json=True)
    c.add_argument("email")
    common(c)
    c.add_argument("--reason", choices=suppression.REASONS, default="manual")
    c.add_argument("--expires", help="a duration (30d) or an ISO time; default permanent")
    c.add_argument("--note")

    c = ps.add("remove", _cmd_remove, "lift a suppression (by id or address)")
    c.add_argument("target", help="suppression id or email address")
    common(c)
    c.add_argument("--force", action="store_true",
                   help="also remove read-only (complaint) entries")

    c = ps.add("list", _cmd_list, "list suppressions, newest first", json=True)
    common(c)
    c.add_argument("--reason", choices=suppression.REASONS)
    c.add_argument("--search", help="part of the address")
    c.add_argument("--include-expired", action="store_true")
    c.add_argument("--cursor")
    c.add_argument("--limit", type=int, default=100)
