"""What `mta reports dmarc` and `mta reports tls` share: the day `send --date` names, the
`list` and `show` arguments, the reports `list` reads, its tables, fetching one report
for `show` and its header, and the closing count of report files that could not be used."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from mta.commands._common import CommandGroup, open_database, positive, print_json, print_list
from mta.commands._errors import CliError
from mta.config import Settings

__all__ = ["add_list_and_show", "day_to_send", "invalid_count", "print_report_files",
           "print_reports", "received_reports", "show_header", "utc_day"]


def utc_day(value: str) -> date:
    """An argparse type: a day as YYYY-MM-DD."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def day_to_send(args) -> date:
    """The day `send` reports on: `--date`, or yesterday (UTC)."""
    return args.date or (datetime.now(UTC).date() - timedelta(days=1))


def add_list_and_show(group: CommandGroup, list_cmd, show_cmd, *, show_help: str) -> None:
    """`list [--days N] [--domain D] [--reports] [--json]` and `show ID [--json]`."""
    c = group.add("list", list_cmd, "reports received about our domains, per day", json=True)
    c.add_argument("--days", type=positive, default=7, help="this many days back (7)")
    c.add_argument("--domain", help="only this policy domain")
    c.add_argument("--reports", action="store_true", help="one line per report file")
    c = group.add("show", show_cmd, show_help, json=True)
    c.add_argument("id", type=int)


async def received_reports(args, settings: Settings,
                           report_list: Callable[..., Awaitable[list]], *filters: Any) -> list:
    """`list`: the reports received in the last `--days` days (`report_list(db, since,
    *filters)`)."""
    since = datetime.now(UTC) - timedelta(days=args.days)
    async with open_database(settings) as db:
        return await report_list(db, since, *filters)


def print_reports(args, kind: str, value: Any, rows: list[list[Any]], header: list[str],
                  **options: Any) -> int:
    """`list`'s output (`print_list`), saying so when no report was received."""
    return print_list(args, value, rows, header, empty=f"no {kind.upper()} reports received",
                      **options)


def print_report_files(args, kind: str, files: list[dict], *,
                       domains: tuple[str, Callable[[dict], str | None]],
                       counts: tuple[str, ...]) -> int:
    """`list --reports`: a line per report file, invalid ones with why. `domains`: the
    header of the policy domain column and the column's value for a file; `counts`: the
    keys of the numbers shown (their header the key in capitals)."""
    domain_header, domains_of = domains
    return print_reports(
        args, kind, files,
        [[f["id"], f["received_at"].strftime("%Y-%m-%d %H:%M"), f["status"],
          f["org_name"] or "-", domains_of(f) or "-",
          f["begin"].date().isoformat() if f["begin"] else "-", *(f[k] for k in counts),
          f["error"] or ""] for f in files],
        ["ID", "RECEIVED", "STATUS", "REPORTER", domain_header, "DAY",
         *(k.upper() for k in counts), "ERROR"])


async def show_header(args, settings: Settings,
                      report_detail: Callable[[Any, int], Awaitable[dict | None]], *,
                      kind: str, keys: Iterable[str]) -> dict | None:
    """`show ID`: the report (an error if there is none), printed whole with `--json`
    (then None: nothing left to print) or else its fields `keys` that are set, one a line,
    the caller then printing its rows."""
    async with open_database(settings) as db:
        detail = await report_detail(db, args.id)
    if detail is None:
        raise CliError(f"no received {kind.upper()} report {args.id} (see mta reports "
                       f"{kind} list --reports)")
    if args.json:
        print_json(detail)
        return None
    for key in keys:
        if detail[key] is not None:
            print(f"{key}: {detail[key]}")
    print()
    return detail


def invalid_count(reports: Iterable[Any], kind: str) -> str | None:
    """The footer of the per-day table: how many report files were unusable, and where
    to look (None: none was)."""
    invalid = sum(1 for r in reports if r.status != "ok")
    if not invalid:
        return None
    return f"\n{invalid} report file(s) could not be used: mta reports {kind} list --reports"
