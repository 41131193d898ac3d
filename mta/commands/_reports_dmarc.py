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

import socket
from pathlib import Path

from mta.commands import _reports_received as shared
from mta.commands._common import CommandGroup, open_database, print_list, print_table
from mta.commands._errors import CliError
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.node import NodeContext
from mta.reports.dmarc_aggregate import gzipped
from mta.reports.dmarc_received import daily_summary, report_detail, report_list, report_summary
from mta.reports.dmarc_send import day_period, send_reports

__all__ = ["register"]


async def _cmd_send(args, settings: Settings) -> int:
    from mta.sending.service import SendingService

    conf = settings.dmarc_reports
    if not args.dry_run and ("@" not in conf.sender or not conf.account):
        raise CliError("dmarc_reports.sender and dmarc_reports.account must be configured "
                       "to send reports (or use --dry-run)")
    day = shared.day_to_send(args)
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
    return print_list(args, [o.to_json() for o in outcomes],
                      [[o.policy_domain, o.status, o.messages, o.records, o.size,
                        _destinations(o.destinations)] for o in outcomes],
                      ["DOMAIN", "STATUS", "MESSAGES", "RECORDS", "BYTES", "DESTINATIONS"],
                      empty=f"no DMARC results recorded for {day.isoformat()}")


def _destinations(destinations: list[dict]) -> str:
    """Where a report went, and why not where it did not."""
    return "; ".join(f"{d['address']} {d['outcome']}" + (
        f" ({d['why']})" if d["outcome"] not in ("queued", "would_send") else "")
        for d in destinations) or "-"


async def _cmd_list(args, settings: Settings) -> int:
    reports = await shared.received_reports(args, settings, report_list, args.domain)
    if args.reports:
        return shared.print_report_files(args, "dmarc", [report_summary(r) for r in reports],
                                         domains=("DOMAIN", lambda r: r["policy_domain"]),
                                         counts=("messages",))
    days = daily_summary(reports)
    return shared.print_reports(
        args, "dmarc", days,
        [[d["day"], d["policy_domain"], ", ".join(d["reporters"]), d["messages"], d["sources"],
          d["dmarc_pass"], f"{d['spf_pass']}/{d['spf_fail']}",
          f"{d['dkim_pass']}/{d['dkim_fail']}"] for d in days],
        ["DAY", "DOMAIN", "REPORTERS", "MESSAGES", "SOURCES", "DMARC PASS", "SPF PASS/FAIL",
         "DKIM PASS/FAIL"], footer=shared.invalid_count(reports, "dmarc"))


async def _cmd_show(args, settings: Settings) -> int:
    detail = await shared.show_header(args, settings, report_detail, kind="dmarc",
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
    shared.add_list_and_show(dmarc, _cmd_list, _cmd_show,
                             show_help="one received report and its records")
    c = dmarc.add("send", _cmd_send, "build and send one day's aggregate reports", json=True)
    c.add_argument("--date", type=shared.utc_day,
                   help="the UTC day (YYYY-MM-DD; default yesterday)")
    c.add_argument("--domain", help="only this policy domain")
    c.add_argument("--dry-run", action="store_true",
                   help="build and check destinations; send nothing")
    c.add_argument("--output", metavar="DIR", help="also write each report (.xml.gz) here")
