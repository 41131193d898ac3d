"""`mta accounts create NAME | list | rename ACCOUNT NEW | delete ACCOUNT [--yes]`: the
tenants that own zones, addresses and tokens.

Names are unique (a database constraint), so `--account NAME` always names one account.
`delete` first says what goes with the account (its zones with their rules, its
addresses, tokens, sending domains and suppressions) and deletes only with `--yes`.
Every change is written to the audit log as `cli:<unix user>`.
"""

from __future__ import annotations

from sqlalchemy import func, select

from mta.commands._common import CommandGroup, find_account, open_database, print_list
from mta.commands._errors import CliError, confirm_delete
from mta.config import Settings
from mta.observe import audit
from mta.store.models import (
    Account,
    ApiToken,
    DestinationAddress,
    RoutingRule,
    SendingDomain,
    Suppression,
    Zone,
)

__all__ = ["register"]

# What an account owns besides its zones, as `delete` lists it: rows with its account_id,
# or (rules, sending domains) with the zone_id of one of its zones.
_OWNED = (("routing rules", RoutingRule), ("destination addresses", DestinationAddress),
          ("sending domains", SendingDomain), ("API tokens", ApiToken),
          ("suppressions", Suppression))


def _name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise CliError("an account needs a name", exit_code=2)
    return name


async def _refuse_taken(s, name: str) -> None:
    taken = (await s.execute(select(Account.id).where(Account.name == name))).scalar()
    if taken:
        raise CliError(f"an account named {name!r} exists ({taken}); pick another name")


async def _cmd_create(args, settings: Settings) -> int:
    name = _name(args.name)
    async with open_database(settings) as db, db.session() as s:
        await _refuse_taken(s, name)
        row = Account(name=name)
        s.add(row)
        await s.flush()
        audit.record(s, actor=audit.cli_actor(), action="create", resource_type="account",
                     resource_id=row.id, account_id=row.id, after={"name": name})
    print(row.id)
    return 0


async def _cmd_list(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        rows = (await s.execute(select(Account).order_by(Account.created_at))).scalars().all()
    return print_list(args, [{"id": r.id, "name": r.name, "created_at": r.created_at}
                             for r in rows],
                      [[r.id, f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.name] for r in rows],
                      ["ID", "CREATED", "NAME"])


async def _cmd_rename(args, settings: Settings) -> int:
    name = _name(args.new_name)
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        if account.name == name:
            print(f"account {account.id} is already named {name!r}")
            return 0
        await _refuse_taken(s, name)
        before, account.name = account.name, name
        audit.record(s, actor=audit.cli_actor(), action="update", resource_type="account",
                     resource_id=account.id, account_id=account.id,
                     before={"name": before}, after={"name": name})
    print(f"account {account.id} renamed {before!r} -> {name!r}; its id, zones, rules and "
          "tokens are unchanged")
    return 0


async def _count(s, model, account_id: str) -> int:
    """How many rows of `model` (one of `_OWNED`) the account owns."""
    query = select(func.count()).select_from(model)
    if hasattr(model, "account_id"):
        query = query.where(model.account_id == account_id)
    else:
        query = query.join(Zone, Zone.id == model.zone_id).where(Zone.account_id == account_id)
    return (await s.execute(query)).scalar_one()


async def _cmd_delete(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        account = await find_account(s, args.account)
        zones = (await s.execute(select(Zone.name).where(
            Zone.account_id == account.id).order_by(Zone.name))).scalars().all()
        counts = {"zones": len(zones)}
        for what, model in _OWNED:
            counts[what] = await _count(s, model, account.id)
        what = ", ".join(f"{n} {k}" for k, n in counts.items())
        print(f"account {account.name!r} ({account.id}) owns {what}"
              + (f" (zones: {', '.join(zones)})" if zones else ""))
        confirm_delete(args.yes, "deleting it deletes all of them: mail to its zones is "
                       "refused (550 5.1.1), its tokens stop working; stored messages and "
                       "the activity log are kept", f"mta accounts delete {args.account}")
        audit.record(s, actor=audit.cli_actor(), action="delete", resource_type="account",
                     resource_id=account.id, account_id=None,
                     before={"name": account.name, **{k: n for k, n in counts.items()}})
        await s.delete(account)
    print(f"deleted account {account.name!r} ({account.id})")
    return 0


def register(sub) -> None:
    ps = CommandGroup(sub, "accounts", "accounts (tenants)")
    c = ps.add("create", _cmd_create, "create an account; prints its id")
    c.add_argument("name", help="a name no other account has")
    ps.add("list", _cmd_list, "list accounts with their ids", json=True)
    c = ps.add("rename", _cmd_rename, "give an account another (unique) name")
    c.add_argument("account", help="account id or name")
    c.add_argument("new_name")
    c = ps.add("delete", _cmd_delete, "delete an account and everything it owns (says what "
                                        "first; deletes with --yes)")
    c.add_argument("account", help="account id or name")
    c.add_argument("--yes", action="store_true", help="delete without asking again")
