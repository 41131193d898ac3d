"""`mta events list|stats`: the activity log from the command line.

The same queries as the activity API (mta/observe/analytics.py), without a token: the
operator sees every account unless `--account` (id or name) narrows it. `--since` and
`--until` take a time (`2024-07-15`, `2024-07-15T10:00:00Z`) or an age (`30m`, `24h`,
`7d`: that long ago); the default range is the last 24 hours.

    mta events list --status rejected --domain example.com
    mta events stats --by status --by date --since 7d
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mta.commands._common import (
    CommandGroup,
    account_filter,
    add_page_options,
    open_database,
    page_footer,
    page_query,
    parse_when,
    positive,
    print_list,
)
from mta.commands._errors import CliError
from mta.config import Settings
from mta.observe import analytics
from mta.observe.analytics import EventFilter

__all__ = ["register"]


def _range(args, now: datetime) -> tuple[datetime, datetime]:
    until = parse_when(args.until, now) if args.until else now
    since = parse_when(args.since, now) if args.since else until - timedelta(hours=24)
    return since, until


async def _filter(args, session, now: datetime) -> EventFilter:
    since, until = _range(args, now)
    return EventFilter(
        since=since, until=until, account_id=await account_filter(session, args.account),
        status=args.status, direction=args.direction, domain=args.domain,
        mail_from=getattr(args, "from"), rcpt_to=args.to, message_id=args.message_id,
        event_type=args.event_type, zone_id=args.zone)


async def _cmd_list(args, settings: Settings) -> int:
    now = datetime.now(UTC)
    async with open_database(settings) as db, db.session() as s:
        f = await _filter(args, s, now)
        rows, total = await analytics.list_events(
            s, f, **page_query(args))
    return print_list(args, {"events": rows, "total": total},
                      [[r["datetime"], r["direction"], r["status"], r["from"] or "-",
                        r["to"] or "-", _auth(r), r["action"] or "-",
                        (r["errorCause"] or "")[:30], r["queueId"] or "-"] for r in rows],
                      ["TIME", "DIR", "STATUS", "FROM", "TO", "SPF/DKIM/DMARC/ARC", "ACTION",
                       "CAUSE", "QUEUE ID"],
                      empty="no events", **page_footer(args, total))


def _auth(row: dict) -> str:
    return "/".join(row[k] or "-" for k in ("spf", "dkim", "dmarc", "arc"))


async def _cmd_stats(args, settings: Settings) -> int:
    dims: list[str] = []
    for part in (p for value in args.by or ["status"] for p in value.split(",")):
        name = analytics.canonical_dimension(part)
        if name is None:
            raise CliError(f"unknown dimension {part!r}; known: "
                           f"{', '.join(analytics.DIMENSIONS)}", exit_code=2)
        if name not in dims:
            dims.append(name)
    now = datetime.now(UTC)
    async with open_database(settings) as db, db.session() as s:
        f = await _filter(args, s, now)
        groups, total = await analytics.aggregate(s, f, dims, limit=args.limit)
    span = f"\n{total} event(s) from {f.since:%Y-%m-%d %H:%M} to {f.until:%Y-%m-%d %H:%M} UTC"
    return print_list(args, {"groups": groups, "total_events": total, "since": f.since,
                             "until": f.until},
                      [[*(g["dimensions"][d] if g["dimensions"][d] is not None else "-"
                          for d in dims), g["count"]] for g in groups],
                      [*(d.upper() for d in dims), "COUNT"],
                      empty="no events", footer=span if groups else None)


def _common(p) -> None:
    p.add_argument("--account", help="account id or name (default: every account)")
    p.add_argument("--since", help="start: a time, a date or an age such as 24h (default 24h)")
    p.add_argument("--until", help="end (exclusive): a time, a date or an age (default now)")
    p.add_argument("--status", help="e.g. Delivered, 'Delivery failed', rejected")
    p.add_argument("--direction", choices=["inbound", "outbound"])
    p.add_argument("--domain", help="recipient's or sender's domain")
    p.add_argument("--from", help="envelope sender")
    p.add_argument("--to", help="recipient")
    p.add_argument("--message-id", help="queue id (from the 250 reply) or Message-ID")
    p.add_argument("--event-type", choices=["incoming", "forward", "reply", "newEmail"])
    p.add_argument("--zone", help="zone id")


def register(sub) -> None:
    ev = CommandGroup(sub, "events", "the activity log (per-message events, aggregates)")
    lst = ev.add("list", _cmd_list, "events, newest first", json=True)
    _common(lst)
    add_page_options(lst, "events")
    st = ev.add("stats", _cmd_stats, "event counts grouped by dimensions", json=True)
    _common(st)
    st.add_argument("--by", action="append", metavar="DIMENSION",
                    help="status, date, hour, 5m, 15m, event_type, sending_domain, domain, "
                         "spf, dkim, dmarc, arc, rule, action ... (repeat or comma "
                         "separate; default status)")
    st.add_argument("--limit", type=positive, default=1000, help="at most this many groups")
