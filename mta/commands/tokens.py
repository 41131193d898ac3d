"""`mta tokens create | list | revoke`: API tokens for the HTTP API and SMTP submission.

`create` prints the token once, on stdout alone (scriptable); only its SHA-256 is
stored. Permissions (repeat `--permission`): email_routing:read, email_routing:edit,
email_sending:send, email_sending:edit, analytics:read (see mta/tokens.py).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from mta.commands._common import account_ref, find_account, open_database
from mta.config import Settings, parse_duration
from mta.observe import audit
from mta.tokens import PERMISSIONS, check_permissions, create_token, list_tokens, revoke_token

__all__ = ["register"]


def _when(ts: datetime | None) -> str:
    return f"{ts:%Y-%m-%d %H:%M}" if ts else "-"


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
        if account is None:
            return 1
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
        try:
            account_id = await account_ref(s, args.account or None)
        except LookupError as exc:
            print(f"mta: {exc}", file=sys.stderr)
            return 1
        rows = await list_tokens(s, account_id)
    now = datetime.now(UTC)
    print(f"{'ID':32}  {'ACCOUNT':32}  {'STATE':8}  {'LAST USED':16}  {'EXPIRES':16}  "
          "NAME  PERMISSIONS")
    for t in rows:
        state = ("revoked" if t.revoked_at else
                 "expired" if t.expires_at and t.expires_at <= now else "active")
        print(f"{t.id:32}  {t.account_id:32}  {state:8}  {_when(t.last_used_at):16}  "
              f"{_when(t.expires_at):16}  {t.name}  {','.join(t.permissions)}")
    return 0


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
    p = sub.add_parser("tokens", help="API tokens")
    ps = p.add_subparsers(dest="tokens_command", required=True)
    c = ps.add_parser("create", help="create a token and print it (once)")
    c.add_argument("--account", required=True, help="account id or name")
    c.add_argument("--name", required=True)
    c.add_argument("--permission", action="append", choices=sorted(PERMISSIONS),
                   required=True, help="repeat for several")
    c.add_argument("--expires-in", help="lifetime such as 90d (default: no expiry)")
    c.set_defaults(func=_cmd_create)
    c = ps.add_parser("list", help="list tokens (never their secrets)")
    c.add_argument("--account", help="only this account's tokens (id or name)")
    c.set_defaults(func=_cmd_list)
    c = ps.add_parser("revoke", help="revoke a token at once")
    c.add_argument("id")
    c.set_defaults(func=_cmd_revoke)
