"""`mta accounts create NAME | list`: the tenants that own zones, addresses and tokens.

Every change is written to the audit log as `cli:<unix user>`.
"""

from __future__ import annotations

from sqlalchemy import select

from mta.commands._common import open_database
from mta.config import Settings
from mta.observe import audit
from mta.store.models import Account

__all__ = ["register"]


async def _cmd_create(args, settings: Settings) -> int:
    name = args.name.strip()
    if not name:
        print("mta: an account needs a name")
        return 2
    async with open_database(settings) as db, db.session() as s:
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
    print(f"{'ID':32}  {'CREATED':20}  NAME")
    for r in rows:
        print(f"{r.id:32}  {r.created_at:%Y-%m-%d %H:%M:%S}   {r.name}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("accounts", help="accounts (tenants)")
    ps = p.add_subparsers(dest="accounts_command", required=True)
    c = ps.add_parser("create", help="create an account; prints its id")
    c.add_argument("name")
    c.set_defaults(func=_cmd_create)
    c = ps.add_parser("list", help="list accounts with their ids")
    c.set_defaults(func=_cmd_list)
