"""What the `mta` commands share: the database they work on, the account an `--account`
names, the time and number arguments, and plain-text tables.

Not a command itself (no `register`): `mta/cli.py` skips modules whose name starts with
an underscore.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mta.commands._errors import CliError
from mta.config import Settings, parse_duration
from mta.store.accounts import resolve_account
from mta.store.db import Database
from mta.store.models import Account

__all__ = ["CommandGroup", "account_filter", "account_ref", "add_json_option",
           "add_page_options", "find_account", "open_database", "page_footer", "page_query",
           "parse_when", "positive", "print_json", "print_list", "print_table", "table"]


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """The configured database. With the embedded cluster: the running one, untouched
    (a node owns it), or one started for this command and stopped after it."""
    from mta.node import database_url

    url, embedded = await asyncio.to_thread(database_url, settings)
    db = Database(url, pool_size=2, connect_timeout=settings.database.connect_timeout)
    try:
        await ensure_schema(db)
        yield db
    finally:
        await db.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.release)


async def ensure_schema(db: Database) -> None:
    """Apply pending migrations (what `mta db upgrade` does) so that no command meets a
    missing table; refuse a database newer than this code."""
    from sqlalchemy import text
    from sqlalchemy.exc import ProgrammingError

    from mta.store.migrate import head_revisions, known_revisions, upgrade

    try:
        async with db.engine.connect() as conn:
            current = set((await conn.execute(
                text("SELECT version_num FROM alembic_version"))).scalars())
    except ProgrammingError:  # no alembic_version table: a fresh database
        current = set()
    heads = await asyncio.to_thread(head_revisions)
    if current == heads:
        return
    unknown = current - await asyncio.to_thread(known_revisions)
    if unknown:
        raise CliError(f"the database schema ({', '.join(sorted(unknown))}) is newer than "
                       "this mta; upgrade mta on this machine")
    await asyncio.to_thread(upgrade, db.url)
    print(f"mta: applied database migrations (now at {', '.join(sorted(heads))})",
          file=sys.stderr)


# --- accounts ----------------------------------------------------------------------------


def _no_account(ref: str) -> str:
    return f"no single account matches {ref!r}; see `mta accounts list`"


async def find_account(session: AsyncSession, ref: str) -> Account:
    """The account `ref` (id or name) names; a CliError when none or several do."""
    account = await resolve_account(session, ref)
    if account is None:
        raise CliError(_no_account(ref))
    return account


async def account_ref(session: AsyncSession, ref: str | None) -> str | None:
    """The account id of an optional `ref` (id or name; None: every account); raises
    LookupError when none or several match."""
    if ref is None:
        return None
    account = await resolve_account(session, ref)
    if account is None:
        raise LookupError(_no_account(ref))
    return account.id


async def account_filter(session: AsyncSession, ref: str | None) -> str | None:
    """`account_ref` for a command's `--account` filter: a CliError when none matches."""
    try:
        return await account_ref(session, ref)
    except LookupError as exc:
        raise CliError(str(exc)) from None


# --- arguments ---------------------------------------------------------------------------


class CommandGroup:
    """`mta NAME SUBCOMMAND ...`: a command whose subcommands are declared with `add`."""

    def __init__(self, sub, name: str, help: str) -> None:
        parser = sub.add_parser(name, help=help)
        self._subparsers = parser.add_subparsers(dest=f"{name}_command", required=True)

    def add(self, name: str, func, help: str, *, json: bool = False) -> argparse.ArgumentParser:
        """One subcommand, run as `func(args, settings)`; its parser, for its arguments.
        `json`: it takes `--json` (`add_json_option`)."""
        parser = self._subparsers.add_parser(name, help=help)
        parser.set_defaults(func=func)
        if json:
            add_json_option(parser)
        return parser


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """`--json` (`args.json`): print JSON for programs instead of text for people."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_page_options(parser: argparse.ArgumentParser, what: str) -> None:
    """`--limit N` `what` a page (50), `--page N` (from 1), `--oldest-first`; a command
    reads them with `page_query` and passes `page_footer` to `print_list`."""
    parser.add_argument("--limit", type=positive, default=50,
                        help=f"{what} per page (default 50)")
    parser.add_argument("--page", type=positive, default=1)
    parser.add_argument("--oldest-first", action="store_true")


def page_query(args) -> dict[str, Any]:
    """The page the options ask for, as the analytics listings take it."""
    return {"offset": (args.page - 1) * args.limit, "limit": args.limit,
            "newest_first": not args.oldest_first}


def page_footer(args, total: int) -> dict[str, int]:
    """`print_table`'s options for the closing "more: --page N" line."""
    return {"page": args.page, "per_page": args.limit, "total": total}


def parse_when(value: str, now: datetime) -> datetime:
    """An age (`24h` = 24 hours ago), a date or an RFC 3339 time (UTC without offset)."""
    try:
        return now - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    if len(value) == 10:
        d = date.fromisoformat(value)
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    ts = datetime.fromisoformat(value)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def positive(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


# --- output ------------------------------------------------------------------------------


# Every list command prints through `print_list`: a table for people, `--json` for programs.


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Left-aligned columns two spaces apart, the header first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def print_table(rows: list[list[Any]], header: list[str], *, empty: str | None = None,
                page: int | None = None, per_page: int = 0, total: int = 0) -> None:
    """The table of `rows`; `empty` instead when there are none. With `page` (1-based), a
    last line says how to see the next page when there is one."""
    if not rows and empty is not None:
        print(empty)
        return
    print(table(rows, header))
    if page is not None and (shown := (page - 1) * per_page + len(rows)) < total:
        print(f"\n{shown} of {total}; more: --page {page + 1}")


def print_json(value: Any) -> None:
    """`--json` output: indented, times and ids as strings."""
    print(json.dumps(value, indent=2, default=str))


def print_list(args, value: Any, rows: list[list[Any]], header: list[str], *,
               footer: str | None = None, **table_options: Any) -> int:
    """A list command's output, and its exit code (0): `value` as JSON with `--json`, else
    the table of `rows` (`print_table`'s `table_options`) and `footer`, when there is one,
    after it."""
    if args.json:
        print_json(value)
        return 0
    print_table(rows, header, **table_options)
    if footer is not None:
        print(footer)
    return 0
