"""`mta webhooks create | list | test | delete | log`: an account's delivery-event
webhook endpoints (docs/webhooks.md).

`create` prints the endpoint's signing secret once (on stdout alone, last line, like
`mta tokens create`); it is not shown again. Every change is written to the audit log as
`cli:<unix user>`.
"""

from __future__ import annotations

import sys

from mta.commands._common import (
    CommandGroup,
    account_filter,
    find_account,
    open_database,
    positive,
    print_json,
    print_list,
)
from mta.commands._errors import CliError
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.observe import audit
from mta.webhooks import endpoints
from mta.webhooks.payload import EVENT_TYPES
from mta.webhooks.sender import send_test

__all__ = ["register"]

_AUDIT_FIELDS = ("url", "event_types", "description", "enabled")


async def _one(s, ident: str):
    row = await endpoints.get(s, ident)
    if row is None:
        raise CliError(f"no webhook {ident!r}; see `mta webhooks list`")
    return row


async def _cmd_create(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        try:
            row = await endpoints.create(s, account.id, args.url, event_types=args.event,
                                         description=args.description,
                                         settings=settings.webhooks)
        except endpoints.EndpointError as exc:
            raise CliError(str(exc), exit_code=2) from None
        audit.record_row(s, audit.cli_actor(), "create", "webhook", row, _AUDIT_FIELDS,
                         account_id=account.id)
        out = endpoints.to_dict(row, secret=True)
    if args.json:
        print_json(out)
        return 0
    print(f"webhook {out['id']} for account {account.id}: {out['url']} "
          f"({', '.join(out['event_types'])}); its signing secret is shown only now:",
          file=sys.stderr)
    print(out["secret"])
    return 0


async def _cmd_list(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        account_id = await account_filter(s, args.account)
        rows = await endpoints.list_for(s, account_id)
        counts = await endpoints.stats(s, [r.id for r in rows])
        items = [endpoints.to_dict(r, counts[r.id]) for r in rows]
    return print_list(args, items,
                      [[d["id"], d["account_id"], d["url"],
                        "all" if len(d["event_types"]) == len(EVENT_TYPES)
                        else ",".join(d["event_types"]),
                        d["deliveries"]["pending"], d["deliveries"]["delivered"],
                        d["deliveries"]["failed"], d["deliveries"]["last_status_code"] or "-"]
                       for d in items],
                      ["ID", "ACCOUNT", "URL", "EVENTS", "PENDING", "DELIVERED", "FAILED",
                       "LAST"], empty="no webhooks")


async def _cmd_test(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        row = await _one(s, args.id)
        account_id, url, secret = row.account_id, row.url, row.secret
    result = await send_test(account_id, url, secret, settings.webhooks,
                             DnsResolver.from_settings(settings.dns))
    out = {"id": args.id, "ok": result.ok, "status_code": result.status_code,
           "error": result.error, "duration_ms": round(result.seconds * 1000, 1)}
    if args.json:
        print_json(out)
    elif result.ok:
        print(f"{url} answered {result.status_code} in {out['duration_ms']} ms")
    else:
        print(f"{url} failed: {result.error} ({out['duration_ms']} ms)")
    return 0 if result.ok else 1


async def _cmd_delete(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        row = await _one(s, args.id)
        pending = (await endpoints.stats(s, [row.id]))[row.id]["pending"]
        audit.record_row(s, audit.cli_actor(), "delete", "webhook", row, _AUDIT_FIELDS,
                         account_id=row.account_id)
        await endpoints.delete(s, row)
    print(f"deleted webhook {args.id} ({row.url}); {pending} undelivered event(s) dropped")
    return 0


async def _cmd_log(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        row = await _one(s, args.id)
        try:
            rows, total = await endpoints.log_rows(s, row.id, status=args.status,
                                                   limit=args.limit)
        except endpoints.EndpointError as exc:
            raise CliError(str(exc), exit_code=2) from None
        items = [endpoints.log_to_dict(r) for r in rows]
    more = f"\n{len(items)} of {total}; more: --limit {total}" if total > len(items) else None
    return print_list(args, {"items": items, "total": total},
                      [[d["id"], d["created_at"], d["type"], d["recipient"] or "-", d["status"],
                        d["attempts"], d["last_status_code"] or "-",
                        (d["last_error"] or "")[:40]] for d in items],
                      ["ID", "CREATED", "TYPE", "RECIPIENT", "STATUS", "ATTEMPTS", "CODE",
                       "ERROR"], empty="no deliveries", footer=more)


def register(sub) -> None:
    g = CommandGroup(sub, "webhooks", "delivery-event webhook endpoints of accounts")

    c = g.add("create", _cmd_create, "add an endpoint; prints its signing secret once",
              json=True)
    c.add_argument("url", help="https:// (http:// only to a loopback address)")
    c.add_argument("--account", required=True, help="account id or name")
    c.add_argument("--event", action="append", choices=EVENT_TYPES,
                   help="an event type to send (repeat; default: all)")
    c.add_argument("--description")

    c = g.add("list", _cmd_list, "endpoints with their pending, delivered, failed counts",
              json=True)
    c.add_argument("--account", help="account id or name (default: every account)")

    c = g.add("test", _cmd_test, "POST a signed test event to an endpoint now", json=True)
    c.add_argument("id")

    c = g.add("delete", _cmd_delete, "delete an endpoint, its log and undelivered events")
    c.add_argument("id")

    c = g.add("log", _cmd_log, "an endpoint's delivery log, newest first", json=True)
    c.add_argument("id")
    c.add_argument("--status", choices=endpoints.LOG_STATUSES)
    c.add_argument("--limit", type=positive, default=50)
