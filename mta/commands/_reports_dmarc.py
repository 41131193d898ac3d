"""`mta reports dmarc list|show|send`.

`list [--days N] [--domain D] [--reports] [--json]`: the aggregate reports other domains
sent to our report mailboxes (`dmarc_reports.intake_addresses`), per day and policy
domain: reporters, messages, sources, aligned SPF / DKIM pass and fail (`--reports`: one
line per report file, invalid ones with why). `show ID [--json]`: one report's records.

`send [--date YYYY-MM-DD] [--domain D] [--dry-run] [--output DIR]`:
the DMARC aggregate reports of one UTC day (default: yesterday), built from what the MX
recorded and queued for the delivery workers, as the daily job does (mta/reports/).

A day already sent for a domain (by the job, by another node or by an earlier run) is
not sent again. `--dry-run` builds and checks the destinations without sending or
claiming anything; `--output DIR` also writes each report's .xml.gz there.
"""

from __future__ import annotations

import argparse
import socket
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from mta.commands._common import CommandGroup, open_database, print_json, print_table
from mta.commands._errors import CliError
from mta.commands._reports_received import (
    add_list_and_show,
    print_invalid_count,
    show_header,
)
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.node import NodeContext
from mta.reports.dmarc_aggregate import gzipped
from mta.reports.dmarc_received import (
    daily_summary,
    report_detail,
    report_list,
    report_summary,
)
from mta.reports.dmarc_send import day_period, send_reports

__all__ = ["register"]


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


async def _cmd_send(args, settings: Settings) -> int:
    from mta.sending.service import SendingService

    conf = settings.dmarc_reports
    if not args.dry_run and ("@" not in conf.sender or not conf.account):
        raise CliError("dmarc_reports.sender and dmarc_reports.account must be configured "
                       "to send reports (or use --dry-run)")
    day = args.date or (datetime.now(UTC).date() - timedelta(days=1))
    begin, end = day_period(day)
    async with open_database(settings) as db:
        ctx = NodeContext(settings=settings, db=db,
                          resolver=DnsResolver.from_settings(settings.dns),
                          node_id=f"cli@{socket.gethostname()}")
        # sync_timeout 0: the reports are queued, due at once, for the nodes' workers.
        service = None if args.dry_run else SendingService(ctx, sync_timeout=0)
        try:
            outcomes = await send_reports(ctx, service, begin, end, dry_run=args.dry_run,
                                          domain=args.domain)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        finally:
            if service is not None:
                await service.close()
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for o in outcomes:
            if o.xml:
                (out / f"{o.policy_domain}!{day.isoformat()}.xml.gz").write_bytes(
                    gzipped(o.xml))
    if args.json:
        print_json([o.to_json() for o in outcomes])
        return 0
    rows = []
    for o in outcomes:
        where = "; ".join(f"{d['address']} {d['outcome']}" + (
            f" ({d['why']})" if d["outcome"] not in ("queued", "would_send") else "")
            for d in o.destinations) or "-"
        rows.append([o.policy_domain, o.status, o.messages, o.records, o.size, where])
    print_table(rows, ["DOMAIN", "STATUS", "MESSAGES", "RECORDS", "BYTES", "DESTINATIONS"],
                empty=f"no DMARC results recorded for {day.isoformat()}")
    return 0


async def _cmd_list(args, settings: Settings) -> int:
    since = datetime.now(UTC) - timedelta(days=args.days)
    async with open_database(settings) as db:
        reports = await report_list(db, since, args.domain)
    if args.reports:
        rows = [report_summary(r) for r in reports]
        if args.json:
            print_json(rows)
            return 0
        print_table([[r["id"], r["received_at"].strftime("%Y-%m-%d %H:%M"), r["status"],
                      r["org_name"] or "-", r["policy_domain"] or "-",
                      r["begin"].date().isoformat() if r["begin"] else "-", r["messages"],
                      r["error"] or ""] for r in rows],
                    ["ID", "RECEIVED", "STATUS", "REPORTER", "DOMAIN", "DAY", "MESSAGES",
                     "ERROR"], empty="no DMARC reports received")
        return 0
    days = daily_summary(reports)
    if args.json:
        print_json(days)
        return 0
    print_table([[d["day"], d["policy_domain"], ", ".join(d["reporters"]), d["messages"],
                  d["sources"], d["dmarc_pass"], f"{d['spf_pass']}/{d['spf_fail']}",
                  f"{d['dkim_pass']}/{d['dkim_fail']}"] for d in days],
                ["DAY", "DOMAIN", "REPORTERS", "MESSAGES", "SOURCES", "DMARC PASS",
                 "SPF PASS/FAIL", "DKIM PASS/FAIL"], empty="no DMARC reports received")
    print_invalid_count(reports, "dmarc")
    return 0


async def _cmd_show(args, settings: Settings) -> int:
    detail = await show_header(args, settings, report_detail, kind="dmarc",
                               keys=("id", "status", "error", "org_name", "report_id",
                                     "policy_domain", "begin", "end", "messages",
                                     "filename"))
    if detail is None:
        return 0
    print_table([[r["source_ip"], r["count"], r["disposition"], r["spf"], r["dkim"],
                  r["header_from"], r["envelope_from"]] for r in detail["records"]],
                ["SOURCE", "COUNT", "DISPOSITION", "SPF", "DKIM", "HEADER FROM",
                 "ENVELOPE FROM"], empty="no records")
    return 0


def register(kinds) -> None:
    dmarc = CommandGroup(kinds, "dmarc", "DMARC aggregate reports (RFC 7489)")
    add_list_and_show(dmarc, _cmd_list, _cmd_show,
                      show_help="one received report and its records")
    c = dmarc.add("send", _cmd_send, "build and send one day's aggregate reports")
    c.add_argument("--date", type=_day, help="the UTC day (YYYY-MM-DD; default yesterday)")
    c.add_argument("--domain", help="only this policy domain")
    c.add_argument("--dry-run", action="store_true",
                   help="build and check destinations; send nothing")
    c.add_argument("--output", metavar="DIR", help="also write each report (.xml.gz) here")
    c.add_argument("--json", action="store_true", help="machine-readable output")
