"""What `mta reports dmarc` and `mta reports tls` share about the reports other domains
sent us: the `list` and `show` arguments, fetching one report for `show` and its header,
and the closing count of report files that could not be used."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from mta.commands._common import CommandGroup, open_database, positive, print_json
from mta.commands._errors import CliError
from mta.config import Settings

__all__ = ["add_list_and_show", "print_invalid_count", "show_header"]


def add_list_and_show(group: CommandGroup, list_cmd, show_cmd, *, show_help: str) -> None:
    """`list [--days N] [--domain D] [--reports] [--json]` and `show ID [--json]`."""
    c = group.add("list", list_cmd, "reports received about our domains, per day")
    c.add_argument("--days", type=positive, default=7, help="this many days back (7)")
    c.add_argument("--domain", help="only this policy domain")
    c.add_argument("--reports", action="store_true", help="one line per report file")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = group.add("show", show_cmd, show_help)
    c.add_argument("id", type=int)
    c.add_argument("--json", action="store_true", help="machine-readable output")


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


def print_invalid_count(reports: Iterable[Any], kind: str) -> None:
    """After the per-day table: how many report files were unusable, and where to look."""
    invalid = sum(1 for r in reports if r.status != "ok")
    if invalid:
        print(f"\n{invalid} report file(s) could not be used: mta reports {kind} list "
              "--reports")
