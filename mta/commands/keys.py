"""`mta keys list | show | rotate | import`: the DKIM keys we sign with, sending and
forwarding alike.

`list` gives each key's domain, selector, algorithm, purpose and state; `show DOMAIN`
the TXT record each of the domain's keys needs published (`mta dns` checks them live).

`rotate DOMAIN` makes a new key and `import DOMAIN --selector S --key FILE` stores one
made elsewhere; either way the new key's record is to be published now and the key signs
only from `--delay` later (its `not_before`), the old key keeps signing until then and
stays published for `--grace` after it, so mail signed with it in the meantime still
verifies (mta/store/dkimkeys.py has the rule). Private keys never leave the database
(encrypted there with secret_key).
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.commands._common import CommandGroup, open_database, print_json, print_list
from mta.commands._errors import CliError
from mta.config import Settings, parse_duration
from mta.observe import audit
from mta.routing.forward import forwarding_domain
from mta.sending.domains import DomainError, key_associated_data, normalize_domain
from mta.signing.keys import (
    MIN_RSA_BITS,
    RSA_BITS,
    KeyVault,
    PrivateKey,
    algorithm_of,
    generate_private_key,
    load_private_key,
    public_key_b64,
)
from mta.store import dkimkeys
from mta.store.dkimkeys import FORWARDING, SENDING
from mta.store.models import DkimKey, SendingDomain

__all__ = ["register"]

_ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
# RFC 6376 3.1: a selector is one or more dot-separated DNS labels.
_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}"
                       r"[a-z0-9])?)*")
DEFAULT_DELAY, DEFAULT_GRACE = "2d", "7d"


def _when(t: datetime | None) -> str:
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if t else "-"


def _record(k: DkimKey, family: list[DkimKey], now: datetime) -> dict:
    sched = dkimkeys.schedule(k)
    return {"domain": k.domain, "selector": k.selector, "algorithm": k.algorithm,
            "purpose": k.purpose,
            "state": dkimkeys.state(sched, [dkimkeys.schedule(f) for f in family], now),
            "created_at": k.created_at, "not_before": k.not_before,
            "retired_at": k.retired_at, "name": f"{k.selector}._domainkey.{k.domain}",
            "content": f"v=DKIM1; k={k.algorithm}; p={k.public_key}"}


async def _records(settings: Settings, domain: str | None) -> list[dict]:
    now = datetime.now(UTC)
    async with open_database(settings) as db, db.session() as s:
        query = select(DkimKey).order_by(DkimKey.domain, DkimKey.purpose, DkimKey.id)
        if domain:
            query = query.where(DkimKey.domain == domain.strip().rstrip(".").lower())
        rows = list((await s.execute(query)).scalars().all())
    families: dict[tuple[str, str], list[DkimKey]] = {}
    for r in rows:
        families.setdefault((r.domain, r.purpose), []).append(r)
    return [_record(r, families[(r.domain, r.purpose)], now) for r in rows]


async def _cmd_list(args, settings: Settings) -> int:
    records = await _records(settings, args.domain)
    return print_list(args, [{k: v for k, v in r.items() if k != "content"} for r in records],
                      [[r["domain"], r["selector"], r["algorithm"], r["state"], r["purpose"],
                        _when(r["not_before"] or r["created_at"]), _when(r["retired_at"])]
                       for r in records],
                      ["DOMAIN", "SELECTOR", "ALGORITHM", "STATE", "PURPOSE", "SIGNS FROM",
                       "PUBLISHED UNTIL"], empty="no DKIM keys")


async def _cmd_show(args, settings: Settings) -> int:
    records = await _records(settings, args.domain)
    if not records:
        raise CliError(f"no DKIM key for {args.domain}; see `mta keys list`")
    if args.json:
        print_json(records)
        return 0
    for r in records:
        note = {"pending": f" (publish now; signs from {_when(r['not_before'])})",
                "retiring": f" (keep published until {_when(r['retired_at'])})",
                "retired": f" (no longer needed since {_when(r['retired_at'])})",
                }.get(r["state"], "")
        print(f"{r['state']:8} TXT {r['name']} \"{r['content']}\"{note}")
    return 0


# --- rotate and import -------------------------------------------------------------------


def _duration(value: str) -> timedelta:
    try:
        seconds = 0.0 if value.strip() == "0" else parse_duration(value)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if seconds < 0:
        raise CliError(f"a duration cannot be negative: {value}")
    return timedelta(seconds=seconds)


async def _purpose(s: AsyncSession, settings: Settings, domain: str, forwarding: bool) -> str:
    """Which keys of `domain` the command is about: the sending domain's, or the ones
    forwarded mail (and replies, verification mail) is signed with."""
    if not forwarding and (await s.execute(select(SendingDomain.id).where(
            SendingDomain.name == domain))).first():
        return SENDING
    if domain == forwarding_domain(settings) or await dkimkeys.family(s, domain, FORWARDING):
        return FORWARDING
    raise CliError(f"unknown domain {domain}: neither a sending domain (mta domains list) "
                   f"nor the forwarding domain ({forwarding_domain(settings) or 'unset'})")


def _new_selector(base: str, taken: set[str], suffix: str = "") -> str:
    for extra in ["", *"bcdefghijklmnopqrstuvwxyz"]:
        if f"{base}{extra}{suffix}" not in taken:
            return f"{base}{extra}{suffix}"
    raise CliError(f"no free selector left for {base}; pass --selector")


async def _store_key(s: AsyncSession, settings: Settings, domain: str, purpose: str,
                     selector: str, key: PrivateKey, delay: timedelta, grace: timedelta,
                     now: datetime, action: str) -> dict:
    """Add `key` to its family: it signs from now + delay when another key signs now (the
    old ones stay published for `grace` after that), at once when none does."""
    algorithm = "rsa" if algorithm_of(key) == "rsa-sha256" else "ed25519"
    rows = await dkimkeys.family(s, domain, purpose, algorithm)
    pending = dkimkeys.rotation_pending(rows, now)
    if pending is not None:
        raise CliError(f"a rotation of {domain} is already under way: {pending.selector} "
                       f"signs from {_when(pending.not_before)}; rotate again after that")
    signing = dkimkeys.signers([(dkimkeys.schedule(r), r) for r in rows], now)
    not_before = now + delay if signing else now
    public = public_key_b64(key)
    if any(r.public_key == public for r in rows):
        raise CliError(f"this key is already stored for {domain}; see `mta keys show {domain}`")
    row = DkimKey(domain=domain, selector=selector, algorithm=algorithm, purpose=purpose,
                  private_key_encrypted=KeyVault(settings.secret_key).encrypt(
                      key, key_associated_data(domain, selector)),
                  public_key=public, active=True, not_before=not_before)
    replaced = dkimkeys.supersede(rows, not_before, not_before + grace, now)
    s.add(row)
    await s.flush()
    audit.record(s, actor=audit.cli_actor(), action=action, resource_type="dkim_key",
                 resource_id=str(row.id), after={
                     "domain": domain, "selector": selector, "algorithm": algorithm,
                     "purpose": purpose, "not_before": not_before,
                     "replaces": {r.selector: r.retired_at for r in replaced}})
    result = _record(row, [*rows, row], now)
    result["replaces"] = [{"selector": r.selector, "name": f"{r.selector}._domainkey.{domain}",
                           "retired_at": r.retired_at} for r in replaced]
    return result


def _print_stored(results: list[dict], as_json: bool) -> None:
    if as_json:
        print_json(results)
        return
    for r in results:
        print(f"{r['domain']}: new {r['algorithm']} key {r['selector']} ({r['purpose']})")
        print(f"  publish now: {r['name']} TXT \"{r['content']}\"")
        if not r["replaces"]:
            print(f"  it signs from now ({_when(r['not_before'])})")
        for old in r["replaces"]:
            print(f"  signing switches from {old['selector']} to {r['selector']} at "
                  f"{_when(r['not_before'])} (nodes learn of a rotation within 5 minutes); "
                  f"keep {old['name']} published until {_when(old['retired_at'])}")


def _settings_ready(settings: Settings) -> None:
    if not settings.secret_key:
        raise CliError("secret_key (or MTA_SECRET_KEY) must be set: DKIM private keys are "
                       "encrypted with it")


def _domain(raw: str) -> str:
    try:
        return normalize_domain(raw)
    except DomainError as exc:
        raise CliError(str(exc)) from None


async def _cmd_rotate(args, settings: Settings) -> int:
    _settings_ready(settings)
    domain, now = _domain(args.domain), datetime.now(UTC)
    delay, grace = _duration(args.delay), _duration(args.grace)
    if args.bits < MIN_RSA_BITS:
        raise CliError(f"--bits {args.bits}: verifiers refuse RSA keys under {MIN_RSA_BITS} "
                       f"bits (RFC 8301); use {RSA_BITS}")
    async with open_database(settings) as db, db.session() as s:
        purpose = await _purpose(s, settings, domain, args.forwarding)
        current = {k.algorithm for k in await dkimkeys.published(s, domain, purpose, now)}
        algorithms = [args.algorithm] if args.algorithm else sorted(current, reverse=True)
        if not current.issuperset(algorithms) or not algorithms:
            raise CliError(f"{domain} has no {args.algorithm or 'DKIM'} {purpose} key to "
                           f"rotate; see `mta keys list --domain {domain}`")
        if purpose == FORWARDING and algorithms != ["rsa"]:
            raise CliError("forwarded mail is signed with RSA only (ARC knows no other)")
        if args.selector and len(algorithms) > 1:
            raise CliError(f"{domain} has {' and '.join(algorithms)} keys: with --selector, "
                           "rotate one at a time (--algorithm)")
        taken = {k.selector for k in await dkimkeys.family(s, domain)}
        base = (f"mta{now:%Y%m%d}" if purpose == SENDING
                else f"{settings.routing.dkim_selector}-{now:%Y%m%d}")
        results = []
        for algorithm in algorithms:
            selector = _selector(args.selector, taken) if args.selector else _new_selector(
                base, taken, "ed" if algorithm == "ed25519" else "")
            taken.add(selector)
            key = generate_private_key(_ALGORITHMS[algorithm], args.bits)
            results.append(await _store_key(s, settings, domain, purpose, selector, key,
                                            delay, grace, now, "rotate"))
    _print_stored(results, args.json)
    return 0


def _selector(raw: str, taken: set[str]) -> str:
    selector = raw.strip().lower()
    if not _SELECTOR.fullmatch(selector) or len(selector) > 63:
        raise CliError(f"invalid selector {raw!r}: DNS labels of letters, digits and hyphens")
    if selector in taken:
        raise CliError(f"selector {selector} is already in use; choose another")
    return selector


def _read_key(path: str) -> PrivateKey:
    name = "standard input" if path == "-" else path
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror}") from None
    if b"ENCRYPTED" in data:
        raise CliError(f"{name} is an encrypted private key; decrypt it first "
                       "(openssl pkey -in KEY -out plain.pem)")
    try:
        key = load_private_key(data)
    except Exception:  # noqa: BLE001 - cryptography raises several types for bad input
        raise CliError(f"{name} is not a PEM private key of RSA or Ed25519 "
                       "(-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)"
                       ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise CliError(f"{name}: an RSA key of {key.key_size} bits is refused by "
                           f"verifiers (RFC 8301: at least {MIN_RSA_BITS}, {RSA_BITS} "
                           "recommended)")
        if key.key_size < RSA_BITS:
            print(f"mta: warning: an RSA key of {key.key_size} bits; {RSA_BITS} or more is "
                  "recommended", file=sys.stderr)
    return key


async def _cmd_import(args, settings: Settings) -> int:
    _settings_ready(settings)
    domain, now = _domain(args.domain), datetime.now(UTC)
    delay, grace = _duration(args.delay), _duration(args.grace)
    key = _read_key(args.key)
    async with open_database(settings) as db, db.session() as s:
        purpose = await _purpose(s, settings, domain, args.forwarding)
        if purpose == FORWARDING and not isinstance(key, rsa.RSAPrivateKey):
            raise CliError("forwarded mail is signed with RSA only (ARC knows no other); "
                           "import an RSA key")
        selector = _selector(args.selector, {k.selector for k in await dkimkeys.family(s, domain)})
        results = [await _store_key(s, settings, domain, purpose, selector, key, delay, grace,
                                    now, "import")]
    _print_stored(results, args.json)
    return 0


def register(sub) -> None:
    ks = CommandGroup(sub, "keys", "DKIM keys (sending domains and forwarded mail)")
    c = ks.add("list", _cmd_list, "every DKIM key with its selector and state", json=True)
    c.add_argument("--domain", help="only this domain's keys")
    c = ks.add("show", _cmd_show, "a domain's keys as the TXT records to publish", json=True)
    c.add_argument("domain")
    for name, func, text in (
            ("rotate", _cmd_rotate, "a new key: publish it now, it signs after --delay"),
            ("import", _cmd_import, "store a PEM private key (RSA or Ed25519) made elsewhere")):
        c = ks.add(name, func, text, json=True)
        c.add_argument("domain", help="a sending domain, or the forwarding domain")
        if name == "rotate":
            c.add_argument("--algorithm", choices=sorted(_ALGORITHMS),
                           help="rotate only this key (default: every key the domain has)")
            c.add_argument("--bits", type=int, default=RSA_BITS, help="RSA key size")
            c.add_argument("--selector", help="the new key's selector (default: mtaYYYYMMDD)")
        else:
            c.add_argument("--selector", required=True, help="the selector to publish it at")
            c.add_argument("--key", required=True, metavar="FILE",
                           help="unencrypted PEM private key (- for standard input)")
        c.add_argument("--delay", default=DEFAULT_DELAY,
                       help=f"publish first, sign from this long after (default "
                            f"{DEFAULT_DELAY})")
        c.add_argument("--grace", default=DEFAULT_GRACE,
                       help=f"how long the old key stays published after the switch "
                            f"(default {DEFAULT_GRACE})")
        c.add_argument("--forwarding", action="store_true",
                       help="the forwarding key of a domain that is also a sending domain")
