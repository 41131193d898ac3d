"""`mta reports tls send|list|show` (RFC 8460, docs/tls-reporting.md).

`send --date YYYY-MM-DD [--dry-run] [--json]`: one day's TLS reports, sent now to every
domain that asks, or with `--dry-run` printed (each domain's report and where it would
go) without sending. A day already sent (by a node's daily job or an earlier run) is not
sent again: the command exits 1 and says so.

`list [--days N] [--domain D] [--reports] [--json]`: the TLS reports other domains sent
to our report mailboxes (`tls_reports.intake_addresses`), per day, reporting
organization and policy: successful and failed sessions, failures per type
(`--reports`: one line per report file, invalid ones with why). `show ID [--json]`: one
report's policies.
"""

from __future__ import annotations

import sys

from mta.commands import _reports_received as shared
from mta.commands._common import CommandGroup, open_database, print_json, print_table
from mta.commands._errors import CliError
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.reports.tls_received import daily_summary, report_detail, report_list, report_summary
from mta.reports.tlsrpt_job import build_day, send_day
from mta.routing.forward import forwarding_signer

__all__ = ["register"]


async def _cmd_send(args, settings: Settings) -> int:
    day = shared.day_to_send(args)
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


def _failures(failures: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(failures.items())) or "-"


async def _cmd_list(args, settings: Settings) -> int:
    reports = await shared.received_reports(args, settings, report_list)
    if args.reports:
        files = [report_summary(r) for r in reports]
        if args.domain:
            files = [f for f in files if args.domain.lower() in f["policy_domains"]]
        return shared.print_report_files(
            args, "tls", files, domains=("DOMAINS", lambda f: ", ".join(f["policy_domains"])),
            counts=("successful", "failed"))
    days = daily_summary(reports, args.domain)
    return shared.print_reports(
        args, "tls", days,
        [[d["day"], d["org_name"] or "-", d["policy_domain"], d["policy_type"], d["successful"],
          d["failed"], _failures(d["failures"])] for d in days],
        ["DAY", "REPORTER", "DOMAIN", "POLICY", "SUCCESSFUL", "FAILED", "FAILURES"],
        footer=shared.invalid_count(reports, "tls"))


async def _cmd_show(args, settings: Settings) -> int:
    detail = await shared.show_header(args, settings, report_detail, kind="tls",
                                      keys=("id", "status", "error", "org_name", "report_id",
                                            "begin", "end", "successful", "failed", "filename"))
    if detail is None:
        return 0
    print_table([[p["policy_domain"], p["policy_type"], ", ".join(p["mx_host"]) or "-",
                  p["successful"], p["failed"], _failures(p["failures"])]
                 for p in detail["policies"]],
                ["DOMAIN", "POLICY", "MX", "SUCCESSFUL", "FAILED", "FAILURES"],
                empty="no policies")
    return 0


def register(kinds) -> None:
    tls = CommandGroup(kinds, "tls", "TLS reports (RFC 8460): ours, and those about us")
    send = tls.add("send", _cmd_send, "send one day's reports now (default: yesterday)",
                   json=True)
    send.add_argument("--date", type=shared.utc_day, help="the day, YYYY-MM-DD (UTC)")
    send.add_argument("--dry-run", action="store_true",
                      help="build the reports and show where they would go; send nothing")
    shared.add_list_and_show(tls, _cmd_list, _cmd_show,
                             show_help="one received report and its policies")
