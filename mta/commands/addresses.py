"""`mta addresses verify TOKEN | --id ID` and `mta addresses list --account A`.

`verify TOKEN` does what the verification link does; `verify --id` is the operator
marking an address verified without the owner's token (audited as such).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from sqlalchemy import func, select

from mta.commands._common import CommandGroup, find_account, open_database, print_list
from mta.commands._errors import CliError
from mta.config import Settings
from mta.observe import audit
from mta.routing.destinations import mark_verified
from mta.routing.verification import send_pending_verifications, send_verification, verify
from mta.store.accounts import resolve_account
from mta.store.models import DestinationAddress

__all__ = ["register"]


async def _by_email(s, email: str, account_ref: str | None) -> DestinationAddress:
    """The one destination address `email` (of `account_ref` when given), locked."""
    query = select(DestinationAddress).where(
        func.lower(DestinationAddress.email) == email.strip().lower())
    if account_ref:
        account = await resolve_account(s, account_ref)
        if account is None:
            raise CliError(f"no single account matches {account_ref!r}; see `mta accounts "
                           "list`")
        query = query.where(DestinationAddress.account_id == account.id)
    rows = (await s.execute(query.with_for_update())).scalars().all()
    if not rows:
        raise CliError(f"no destination address {email}; see `mta addresses list --account A`")
    if len(rows) > 1:
        raise CliError(f"{email} is a destination of {len(rows)} accounts; say which with "
                       "--account")
    return rows[0]


async def _cmd_verify(args, settings: Settings) -> int:
    if sum(1 for v in (args.token, args.id, args.email) if v) != 1:
        raise CliError("give one of TOKEN, --id ID or --email ADDRESS", exit_code=2)
    now, actor = datetime.now(UTC), audit.cli_actor()
    async with open_database(settings) as db, db.session() as s:
        if args.token:
            try:
                # routing (issue 5): the token also expires (routing.verification_ttl)
                row = await verify(s, settings, args.token, now, actor)
            except LookupError as exc:
                print(f"mta: {exc}", file=sys.stderr)
                return 1
        else:
            if args.email:
                row = await _by_email(s, args.email, args.account)
            else:
                row = await s.get(DestinationAddress, args.id, with_for_update=True)
                if row is None:
                    raise CliError(f"no destination address {args.id}; see `mta addresses "
                                   "list --account A`")
            if row.verified_at is not None:
                print(f"{row.email} was already verified ({row.id})")
                return 0
            mark_verified(s, row, now, actor)
    print(f"verified {row.email} ({row.id})")
    return 0


async def _cmd_list(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        rows = (await s.execute(select(DestinationAddress).where(
            DestinationAddress.account_id == account.id)
            .order_by(DestinationAddress.created_at))).scalars().all()
    return print_list(args, [{"id": r.id, "email": r.email, "account_id": r.account_id,
                              "verified_at": r.verified_at, "created_at": r.created_at}
                             for r in rows],
                      [[r.id, f"{r.verified_at:%Y-%m-%d %H:%M}" if r.verified_at else "pending",
                        r.email] for r in rows], ["ID", "VERIFIED", "EMAIL"])


async def _cmd_send_verification(args, settings: Settings) -> int:
    """routing (issue 5): (re)send the verification mail; renews the token's lifetime."""
    from mta.routing.forward import KeyStore

    now = datetime.now(UTC)
    async with open_database(settings) as db:
        if args.pending:
            sent = await send_pending_verifications(db, settings, now)
        else:
            async with db.session() as s:
                row = await s.get(DestinationAddress, args.id or "", with_for_update=True)
                if row is None:
                    print(f"mta: no destination address {args.id}", file=sys.stderr)
                    return 1
                if row.verified_at is not None:
                    print(f"{row.email} is already verified")
                    return 0
                await send_verification(s, settings, row, now, KeyStore(db, settings))
                sent = [row.email]
    for email in sent:
        print(f"verification mail queued for {email}")
    return 0


def register(sub) -> None:
    ps = CommandGroup(sub, "addresses", "destination addresses of routing rules")
    c = ps.add("verify", _cmd_verify, "verify a destination address")
    c.add_argument("token", nargs="?", help="the token from the verification mail")
    c.add_argument("--id", help="operator override: verify this address id without a token")
    c.add_argument("--email", help="operator override: verify this address without a token")
    c.add_argument("--account", help="with --email: the account (id or name), when the "
                                     "address belongs to several")
    c = ps.add("send-verification", _cmd_send_verification,
               "(re)send the verification mail of an address")
    c.add_argument("--id", help="the destination address id")
    c.add_argument("--pending", action="store_true",
                   help="every unverified address that was never mailed")
    c.set_defaults(secrets="create")
    c = ps.add("list", _cmd_list, "list an account's destination addresses", json=True)
    c.add_argument("--account", required=True, help="account id or name")
