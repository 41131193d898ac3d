"""`mta apply FILE [--dry-run] [--prune]` and `mta export [--account ID]`.

`apply` makes the database match a routing document (config/routing.example.yaml) in
one transaction and prints each change: `+` create, `~` update with every changed field
as `before -> after`, `-` delete. Applying the same file again prints "no changes".
`--dry-run` computes and prints the same diff, then rolls back. `--prune` also deletes
what a managed collection of the file does not declare. Exit codes: 0 applied (or
nothing to do), 2 the file is invalid (the message names the key and line) or
contradicts the database, 1 the database could not be reached.

`export` prints the current state in the same format; `mta apply` of it is a no-op.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mta.commands._common import account_filter, open_database
from mta.config import ConfigError, Settings
from mta.declarative import Change, apply_document, export_document, export_yaml, load_document
from mta.observe import audit

__all__ = ["format_changes", "register"]

_SIGN = {"create": "+", "update": "~", "delete": "-"}


def _value(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False) if not isinstance(v, str) else v


def format_changes(changes: list[Change]) -> list[str]:
    lines: list[str] = []
    for c in changes:
        lines.append(f"{_SIGN.get(c.action, '~')} {c.action} {c.resource}: {c.key}")
        for name, (before, after) in sorted(c.fields.items()):
            if c.action == "create":
                lines.append(f"    {name}: {_value(after)}")
            elif c.action == "update":
                lines.append(f"    {name}: {_value(before)} -> {_value(after)}")
    counts = {a: sum(1 for c in changes if c.action == a) for a in ("create", "update", "delete")}
    if changes:
        lines.append(f"{len(changes)} change{'s' if len(changes) != 1 else ''}: "
                     + ", ".join(f"{n} {a}" for a, n in counts.items()))
    else:
        lines.append("no changes")
    return lines


async def _cmd_apply(args, settings: Settings) -> int:
    try:
        loaded = load_document(args.file)
    except ConfigError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 2
    try:
        async with open_database(settings) as db:
            changes = await apply_document(db, settings, loaded, prune=args.prune,
                                           dry_run=args.dry_run, actor=audit.cli_actor())
    except ConfigError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mta: cannot reach the database: {exc}", file=sys.stderr)
        return 1
    for line in format_changes(changes):
        print(line)
    if args.dry_run:
        print("dry run: nothing was written")
    elif any(c.resource == "destination_address" and c.action == "create" for c in changes):
        print("new destination addresses need verifying: mta addresses send-verification "
              "--pending")
    return 0


async def _cmd_export(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        account_id = await account_filter(s, args.account or None)
        document = await export_document(s, account_id)
    sys.stdout.write(export_yaml(document))
    return 0


def register(sub) -> None:
    p = sub.add_parser("apply", help="make routing and sending configuration match a YAML file")
    p.add_argument("file", help="routing document (see config/routing.example.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    p.add_argument("--prune", action="store_true",
                   help="delete what the file's managed collections do not declare")
    p.set_defaults(func=_cmd_apply, secrets="create")
    p = sub.add_parser("export", help="print routing and sending configuration as YAML")
    p.add_argument("--account", help="only this account (id or name)")
    p.set_defaults(func=_cmd_export)
