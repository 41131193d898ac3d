"""`mta tokens create | list | revoke`: API tokens for the HTTP API and SMTP submission.

`create` prints the token once, on stdout alone (scriptable); only its SHA-256 is
stored. Permissions (repeat `--permission`): email_routing:read, email_routing:edit,
email_sending:send, email_sending:edit, analytics:read (see mta/tokens.py).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from mta.commands._common import (
    CommandGroup,
    account_filter,
    find_account,
    open_database,
    print_list,
)
from mta.config import Settings, parse_duration
from mta.observe import audit
from mta.tokens import PERMISSIONS, check_permissions, create_token, list_tokens, revoke_token

__all__ = ["register"]


def _when(ts: datetime | None) -> str:
    return f"{ts:%Y-%m-%d %H:%M}" if ts else "-"


def _state(token, now: datetime) -> str:
    if token.revoked_at:
        return "revoked"
    return "expired" if token.expires_at and token.expires_at <= now else "active"


async def _cmd_create(args, settings: Settings) -> int:
    try:
        perms = check_permissions(args.permission or [])
        expires = (datetime.now(UTC) + timedelta(seconds=parse_duration(args.expires_in))
                   if args.expires_in else None)
    except ValueError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 2
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        row, secret = await create_token(s, account.id, args.name, perms, expires_at=expires)
        audit.record(s, actor=audit.cli_actor(), action="create", resource_type="api_token",
                     resource_id=row.id, account_id=account.id,
                     after={"name": row.name, "permissions": perms, "expires_at": expires})
    print(f"token {row.id} for account {account.id} ({', '.join(perms)}); "
          "it is shown only now:", file=sys.stderr)
    print(secret)
    return 0


async def _cmd_list(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        account_id = await account_filter(s, args.account or None)
        rows = await list_tokens(s, account_id)
    now = datetime.now(UTC)
    return print_list(
        args, [{"id": t.id, "account_id": t.account_id, "name": t.name,
                "permissions": list(t.permissions), "state": _state(t, now),
                "created_at": t.created_at, "last_used_at": t.last_used_at,
                "expires_at": t.expires_at, "revoked_at": t.revoked_at} for t in rows],
        [[t.id, t.account_id, _state(t, now), _when(t.last_used_at), _when(t.expires_at),
          t.name, ",".join(t.permissions)] for t in rows],
        ["ID", "ACCOUNT", "STATE", "LAST USED", "EXPIRES", "NAME", "PERMISSIONS"])


async def _cmd_revoke(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        try:
            row = await revoke_token(s, args.id, datetime.now(UTC))
        except LookupError as exc:
            print(f"mta: {exc}", file=sys.stderr)
            return 1
        audit.record(s, actor=audit.cli_actor(), action="revoke", resource_type="api_token",
                     resource_id=row.id, account_id=row.account_id,
                     after={"revoked_at": row.revoked_at})
    print(f"revoked {row.id}")
    return 0


def register(sub) -> None:
    ps = CommandGroup(sub, "tokens", "API tokens")
    c = ps.add("create", _cmd_create, "create a token and print it (once)")
    c.add_argument("--account", required=True, help="account id or name")
    c.add_argument("--name", required=True)
    c.add_argument("--permission", action="append", choices=sorted(PERMISSIONS),
                   required=True, help="repeat for several")
    c.add_argument("--expires-in", help="lifetime such as 90d (default: no expiry)")
    c = ps.add("list", _cmd_list, "list tokens (never their secrets)", json=True)
    c.add_argument("--account", help="only this account's tokens (id or name)")
    c = ps.add("revoke", _cmd_revoke, "revoke a token at once")
    c.add_argument("id")
