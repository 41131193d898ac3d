"""`mta keys list | show DOMAIN`: the DKIM keys we sign with, sending and forwarding alike.

`list` gives each key's domain, selector, algorithm and state (active, or retired and
since when); `show DOMAIN` the TXT record each of the domain's keys needs published
(`mta dns` checks them live). Private keys never leave the database (encrypted there
with secret_key).
"""

from __future__ import annotations

from sqlalchemy import select

from mta.commands._common import CommandGroup, open_database, print_json, print_table
from mta.commands._errors import CliError
from mta.config import Settings
from mta.store.models import DkimKey

__all__ = ["register"]

_K = {"rsa": "rsa", "ed25519": "ed25519"}


def _state(k: DkimKey) -> str:
    return "active" if k.active else (
        f"retired {k.retired_at:%Y-%m-%d}" if k.retired_at else "retired")


def _record(k: DkimKey) -> dict:
    return {"domain": k.domain, "selector": k.selector, "algorithm": k.algorithm,
            "state": _state(k), "created_at": k.created_at, "retired_at": k.retired_at,
            "name": f"{k.selector}._domainkey.{k.domain}",
            "content": f"v=DKIM1; k={_K[k.algorithm]}; p={k.public_key}"}


async def _keys(settings: Settings, domain: str | None) -> list[DkimKey]:
    async with open_database(settings) as db, db.session() as s:
        query = select(DkimKey).order_by(DkimKey.domain, DkimKey.created_at)
        if domain:
            query = query.where(DkimKey.domain == domain.strip().rstrip(".").lower())
        return list((await s.execute(query)).scalars().all())


async def _cmd_list(args, settings: Settings) -> int:
    keys = await _keys(settings, args.domain)
    if args.json:
        print_json([{k: v for k, v in _record(key).items() if k != "content"}
                    for key in keys])
        return 0
    print_table([[k.domain, k.selector, k.algorithm, _state(k), f"{k.created_at:%Y-%m-%d}"]
                 for k in keys], ["DOMAIN", "SELECTOR", "ALGORITHM", "STATE", "CREATED"],
                empty="no DKIM keys")
    return 0


async def _cmd_show(args, settings: Settings) -> int:
    keys = await _keys(settings, args.domain)
    if not keys:
        raise CliError(f"no DKIM key for {args.domain}; see `mta keys list`")
    if args.json:
        print_json([_record(k) for k in keys])
        return 0
    for k in keys:
        r = _record(k)
        print(f"{r['state']:8} TXT {r['name']} \"{r['content']}\"")
    return 0


def register(sub) -> None:
    ks = CommandGroup(sub, "keys", "DKIM keys (sending domains and forwarded mail)")
    c = ks.add("list", _cmd_list, "every DKIM key with its selector and state")
    c.add_argument("--domain", help="only this domain's keys")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = ks.add("show", _cmd_show, "a domain's keys as the TXT records to publish")
    c.add_argument("domain")
    c.add_argument("--json", action="store_true", help="machine-readable output")
