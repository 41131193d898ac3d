"""`mta reports tls send --date YYYY-MM-DD [--dry-run] [--json]`: one day's TLS reports
(RFC 8460, docs/tls-reporting.md), sent now to every domain that asks, or with
`--dry-run` printed (each domain's report and where it would go) without sending.

A day already sent (by a node's daily job or an earlier run) is not sent again: the
command exits 1 and says so.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta

from mta.commands._common import open_database, print_json, print_table
from mta.commands._errors import CliError
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.reports.tlsrpt_job import build_day, send_day
from mta.routing.forward import forwarding_signer

__all__ = ["register"]


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CliError(f"--date {value!r}: expected YYYY-MM-DD", exit_code=2) from None


async def _cmd_send(args, settings: Settings) -> int:
    day = _day(args.date) if args.date else (datetime.now(UTC) - timedelta(days=1)).date()
    resolver = DnsResolver.from_settings(settings.dns)
    async with open_database(settings) as db:
        sent = await send_day(db, settings, resolver, day, dry_run=args.dry_run,
                              owner=f"cli:{settings.node.hostname}",
                              sign=forwarding_signer(db, settings))
        reports = await build_day(db, settings, day) if args.dry_run else []
    if sent is None:
        raise CliError(f"the TLS reports of {day} were sent already (or are being sent)")
    if args.json:
        out = {"date": day.isoformat(), "sent": [s.__dict__ for s in sent]}
        if args.dry_run:
            out["reports"] = [r.body for r in reports]
        print_json(out)
        return 0
    print_table([[s.domain, s.destination or "-", s.status, s.detail] for s in sent],
                ["DOMAIN", "DESTINATION", "STATUS", "DETAIL"],
                empty=f"no domain to report to for {day}")
    failed = [s for s in sent if s.status == "failed"]
    if failed:
        print(f"{len(failed)} destination(s) failed", file=sys.stderr)
    return 0


def register(kinds) -> None:
    tls = kinds.add_parser("tls", help="TLS reports (RFC 8460) of our outbound sessions")
    sub = tls.add_subparsers(dest="reports_tls_command", required=True)
    send = sub.add_parser("send", help="send one day's reports now (default: yesterday)")
    send.add_argument("--date", help="the day, YYYY-MM-DD (UTC)")
    send.add_argument("--dry-run", action="store_true",
                      help="build the reports and show where they would go; send nothing")
    send.add_argument("--json", action="store_true")
    send.set_defaults(func=_cmd_send)
