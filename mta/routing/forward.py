"""The forwarded copy of one received message (MISSION R6, docs "Postmaster").

Job: turn the message as we stored it (our Received and Authentication-Results on top)
into what goes to a forwarding destination, and say which envelope sender it goes with:

- envelope sender: SRS (`settings.srs`): SRS0 for a first hop, SRS1 when the sender is
  already someone's SRS address, the null sender stays null;
- From: untouched, except the DMARC-safe case: the From domain publishes
  p=quarantine/reject and the message has no valid DKIM signature aligned with it, so
  forwarding it unchanged would fail DMARC downstream (SRS fixes SPF, not alignment).
  `routing.dmarc_safe_from` then says rewrite (From: at our forwarding domain, the
  display name kept, X-Original-From and Reply-To added), forward anyway, or reject;
- a DKIM signature for the forwarding domain (`routing.forwarding_domain`, default
  `srs.domain`) and, with `routing.sign_routing_domain`, one for the routing domain;
- an ARC set on top (AAR with the results recorded at receipt, AMS, AS with cv from the
  chain validation at receipt and instance = highest + 1).
Everything else, body included, is left as it is; line ends are normalised to CRLF, as
signing and relaying require.

Loop protection (`loop_problem`): more than `routing.max_received` Received fields or
`routing.max_arc_instances` ARC sets -> 554 5.4.6.

Keys (`KeyStore`): the RSA key of a domain in `dkim_keys` that signs at that moment
(decrypted with `secret_key`; a rotation's new key only from its `not_before`, see
mta/store/dkimkeys.py); for the forwarding domain one is generated at start (or on first
use) and the TXT record to publish is logged. Signing runs in a thread (RSA through
OpenSSL, three signatures).

Settings read: `srs.*`, `routing.*`, `secret_key`, `inbound.authserv_id`, `node.hostname`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import formataddr, parseaddr

from sqlalchemy.dialects.postgresql import insert

from mta.checks.results import AuthResults
from mta.config import Settings
from mta.cpuwork import run_cpu
from mta.queue.queue import utcnow
from mta.signing.arc import ArcSealError, existing_instances, seal_arc
from mta.signing.dkim import (
    DkimSignError,
    ParsedMessage,
    normalize_line_endings,
    parse_message,
    sign_dkim,
    sign_message,
)
from mta.signing.keys import KeyVault, SigningKey, generate_private_key, public_key_b64
from mta.signing.srs import Srs
from mta.store import dkimkeys
from mta.store.db import Database
from mta.store.dkimkeys import FORWARDING, SENDING, Schedule
from mta.store.models import DkimKey

__all__ = [
    "ForwardCopy", "ForwardError", "Forwarder", "KeyStore", "arc_instances",
    "dmarc_rewrite_needed", "ensure_forwarding_key", "forwarding_domain", "loop_problem",
    "make_srs",
    "received_count", "rewrite_from", "seal_and_sign",
]

log = logging.getLogger("mta.routing")

_KEY_TTL = 300.0  # seconds a decrypted key is reused before dkim_keys is read again


class ForwardError(Exception):
    """The copy cannot be made here (no SRS secret, no key, no secret_key): a local,
    temporary problem; the sender is told 451 and the operator reads the log."""


# -- pure helpers -------------------------------------------------------------------------------


def _header_fields(raw: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, each with its continuation lines and CRLF; the rest from the
    blank line on) of a CRLF message."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, body = raw, b""
    fields: list[bytes] = []
    for line in (head + b"\r\n").split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, (b"\r\n" + body if sep else b"")


def _name(field_: bytes) -> bytes:
    return field_.split(b":", 1)[0].strip().lower()


def received_count(raw: bytes) -> int:
    fields, _ = _header_fields(normalize_line_endings(raw))
    return sum(1 for f in fields if _name(f) == b"received")


def arc_instances(raw: bytes) -> int:
    msg = normalize_line_endings(raw)
    if b"arc-" not in msg.partition(b"\r\n\r\n")[0].lower():
        return 0  # no ARC field name in the header section: nothing to parse
    headers, _ = parse_message(msg)
    return max(existing_instances(headers), default=0)


def loop_problem(raw: bytes, max_received: int, max_arc: int) -> str | None:
    """Why forwarding this message again looks like a loop, or None."""
    received = received_count(raw)
    if received > max_received:
        return f"{received} Received header fields (more than {max_received})"
    try:
        arc = arc_instances(raw)
    except DkimSignError:
        return None
    if arc > max_arc:
        return f"{arc} ARC sets (more than {max_arc})"
    return None


def dmarc_rewrite_needed(auth: AuthResults) -> tuple[str, str] | None:
    """(policy, From domain) when forwarding unchanged would fail DMARC downstream:
    the From domain asks for quarantine/reject and no valid DKIM signature aligned with
    it survives forwarding (an SPF pass does not: the envelope sender becomes ours)."""
    d = auth.dmarc
    if d is None or d.policy not in ("quarantine", "reject") or d.dkim_aligned:
        return None
    return d.policy, d.from_domain


def rewrite_from(raw: bytes, new_address: str) -> bytes:
    """From: <new_address> with the original display name (or, without one, the
    original address as display name); the original From value goes to
    X-Original-From and, when the author set no Reply-To, to Reply-To."""
    fields, rest = _header_fields(normalize_line_endings(raw))
    index = next((i for i, f in enumerate(fields) if _name(f) == b"from"), None)
    if index is None:
        raise DkimSignError("the message has no From header field")
    value = fields[index].split(b":", 1)[1].decode("utf-8", "replace")
    value = re.sub(r"\r\n[ \t]", " ", value).strip()
    name, address = parseaddr(value)
    display = name or address or value
    new_from = formataddr((display, new_address)) if display.isascii() else \
        f'"{display}" <{new_address}>'
    added = [f"X-Original-From: {value}\r\n".encode()]
    if not any(_name(f) == b"reply-to" for f in fields):
        added.append(f"Reply-To: {value}\r\n".encode())
    fields[index] = f"From: {new_from}\r\n".encode()
    # The new fields go right after From, so they read together and the header keeps
    # its order otherwise.
    fields[index + 1:index + 1] = added
    return b"".join(fields) + rest


def _aar_text(auth: AuthResults, authserv_id: str) -> str:
    header = auth.to_header(authserv_id)
    return header[len(authserv_id):].lstrip("; ").strip() or "none"


def _chain_validation(auth: AuthResults, message: ParsedMessage) -> str:
    if max(existing_instances(message.headers), default=0) == 0:
        return "none"
    return "pass" if auth.arc is not None and auth.arc.cv == "pass" else "fail"


def seal_and_sign(raw: bytes, *, auth: AuthResults, authserv_id: str,
                  forwarding_key: SigningKey, extra_keys: tuple[SigningKey, ...] = (),
                  new_from: str | None = None, timestamp: int | None = None) -> bytes:
    """The forwarded bytes: normalised, From rewritten when `new_from` is given, DKIM
    signed by every key, then ARC-sealed by the forwarding key. CPU only."""
    msg = normalize_line_endings(raw)
    if new_from is not None:
        msg = rewrite_from(msg, new_from)
    stamp = int(time.time()) if timestamp is None else timestamp
    # Parsed once; the signatures only add header fields, so the body and its hash
    # are shared by the DKIM signatures and the ARC-Message-Signature.
    parsed = ParsedMessage.of(msg)
    signatures = b"".join(sign_dkim(msg, k, timestamp=stamp, parsed=parsed)
                          for k in (forwarding_key, *extra_keys))
    msg = signatures + msg
    parsed = parsed.with_fields_on_top(signatures)
    cv = _chain_validation(auth, parsed)
    aar = _aar_text(auth, authserv_id)
    try:
        arc = seal_arc(msg, forwarding_key, authserv_id, aar, cv, stamp,  # type: ignore[arg-type]
                       parsed=parsed)
    except ArcSealError as exc:
        if cv == "fail":
            raise
        # A chain we could not re-seal as it was recorded (e.g. fields without i=) is
        # declared failed rather than forwarded without our set.
        log.info("ARC chain not sealable as %s (%s); sealing cv=fail", cv, exc)
        arc = seal_arc(msg, forwarding_key, authserv_id, aar, "fail", stamp, parsed=parsed)
    return arc + msg


def forwarding_domain(settings: Settings) -> str | None:
    return (settings.routing.forwarding_domain or settings.srs.domain or "").lower() or None


async def ensure_forwarding_key(db: Database, settings: Settings) -> SigningKey | None:
    """The forwarding domain's DKIM key, generated now when there is none, so that it
    exists (and its TXT record is printed, by `mta dns --node` too) before the first
    forward is signed with it. None when forwarding is not configured."""
    domain = forwarding_domain(settings)
    if domain is None or not settings.secret_key:
        return None
    return await KeyStore(db, settings).key_for(domain, generate=True)


def make_srs(settings: Settings, clock=time.time) -> Srs | None:
    srs = settings.srs
    if not srs.domain or not srs.secrets:
        return None
    return Srs(srs.secrets, srs.domain, srs.max_age_days, clock=clock)


# -- keys ---------------------------------------------------------------------------------------


_Family = list[tuple[Schedule, SigningKey]]


class KeyStore:
    """RSA signing keys per domain from `dkim_keys`, decrypted once and cached with
    their schedules: the key that signs is chosen at each use, so a rotation switches
    at its `not_before` (a rotation made after the cache was filled is seen within
    `_KEY_TTL`; the old key stays published for its grace period meanwhile).

    A domain's forwarding keys are used when it has any, else its sending keys (a
    routing domain that is also a sending domain, for `routing.sign_routing_domain`)."""

    def __init__(self, db: Database, settings: Settings,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._vault = KeyVault(settings.secret_key) if settings.secret_key else None
        self._cache: dict[str, tuple[float, _Family]] = {}
        self._lock = asyncio.Lock()

    async def key_for(self, domain: str, *, generate: bool = False) -> SigningKey | None:
        domain = domain.lower()
        now = self.clock()
        hit = self._cache.get(domain)
        if hit is not None and hit[0] > time.monotonic() and (hit[1] or not generate):
            return _signer(hit[1], now)
        async with self._lock:
            keys = await self._load(domain, now)
            if not keys and generate:
                keys = await self._generate(domain, now)
            self._cache[domain] = (time.monotonic() + _KEY_TTL, keys)
            return _signer(keys, now)

    def _ad(self, domain: str, selector: str) -> bytes:
        return f"{domain}/{selector}".encode()  # as mta.sending.domains.key_associated_data

    async def _load(self, domain: str, now: datetime) -> _Family:
        async with self.db.session() as s:
            rows = [r for r in await dkimkeys.family(s, domain, algorithm="rsa")
                    if dkimkeys.schedule(r).published(now)]
        rows = [r for r in rows if r.purpose == FORWARDING] or [
            r for r in rows if r.purpose == SENDING]
        if not rows:
            return []
        if self._vault is None:
            raise ForwardError(f"secret_key is not set: the DKIM key of {domain} cannot be "
                               "decrypted")
        return [(dkimkeys.schedule(r), SigningKey(domain, r.selector, self._vault.decrypt(
            r.private_key_encrypted, self._ad(domain, r.selector)))) for r in rows]

    async def _generate(self, domain: str, now: datetime) -> _Family:
        if self._vault is None:
            raise ForwardError("secret_key is not set: no DKIM key can be stored for "
                               f"{domain}")
        selector = self.settings.routing.dkim_selector
        private = await asyncio.to_thread(generate_private_key, "rsa-sha256")
        async with self.db.session() as s:
            await s.execute(insert(DkimKey).values(
                domain=domain, selector=selector, algorithm="rsa", purpose=FORWARDING,
                private_key_encrypted=self._vault.encrypt(private, self._ad(domain, selector)),
                public_key=public_key_b64(private), active=True,
            ).on_conflict_do_nothing())
        keys = await self._load(domain, now)  # another node may have won the race
        key = _signer(keys, now)
        if key is not None:
            log.warning("generated the DKIM key for forwarded mail; publish %s TXT "
                        "\"v=DKIM1; k=rsa; p=%s\"", key.dns_name,
                        public_key_b64(key.private_key),
                        extra={"event": "routing.key_generated", "domain": domain,
                               "selector": key.selector})
        return keys


def _signer(keys: _Family, now: datetime) -> SigningKey | None:
    chosen = dkimkeys.signers(keys, now)
    return chosen[0] if chosen else None


# -- the forwarder ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardCopy:
    raw: bytes  # what goes on the wire
    envelope_from: str  # SRS-rewritten ("" stays "")
    from_rewritten: bool
    signed_by: tuple[str, ...]  # d= of our DKIM signatures


class Forwarder:
    def __init__(self, settings: Settings, db: Database, srs: Srs | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.keys = KeyStore(db, settings, clock)
        self.srs = srs if srs is not None else make_srs(settings)
        self.authserv_id = settings.inbound.authserv_id or settings.node.hostname
        self.domain = forwarding_domain(settings)

    def envelope_from(self, mail_from: str) -> str:
        if self.srs is None:
            raise ForwardError("srs.domain and srs.secrets must be set to forward mail")
        return self.srs.forward(mail_from)

    async def copy(self, raw: bytes, mail_from: str, auth: AuthResults, *,
                   routing_domain: str | None = None, rewrite_from: bool = False) -> ForwardCopy:
        """The forwarded copy; `rewrite_from` applies the DMARC-safe From rewrite (the
        caller decided with `dmarc_rewrite_needed` and `routing.dmarc_safe_from`)."""
        env_from = self.envelope_from(mail_from)
        if self.domain is None:
            raise ForwardError("routing.forwarding_domain (or srs.domain) must be set")
        key = await self.keys.key_for(self.domain, generate=True)
        if key is None:
            raise ForwardError(f"no DKIM key for {self.domain}")
        extra: tuple[SigningKey, ...] = ()
        if (self.settings.routing.sign_routing_domain and routing_domain
                and routing_domain.lower() != self.domain):
            other = await self.keys.key_for(routing_domain)
            if other is not None:
                extra = (other,)
        new_from = (f"{self.settings.routing.rewritten_from_local}@{self.domain}"
                    if rewrite_from else None)
        out = await run_cpu(len(raw), seal_and_sign, raw, auth=auth,
                            authserv_id=self.authserv_id, forwarding_key=key,
                            extra_keys=extra, new_from=new_from)
        return ForwardCopy(out, env_from, new_from is not None,
                           tuple(k.domain for k in (key, *extra)))


def forwarding_signer(db: Database, settings: Settings):
    """An async `raw -> raw` that DKIM-signs with the forwarding domain's key (generated
    when missing), for mail the node itself sends (TLS reports); None when there is no
    forwarding domain or no secret_key to keep a key with."""
    domain = forwarding_domain(settings)
    if domain is None or not settings.secret_key:
        return None
    keys = KeyStore(db, settings)

    async def sign(raw: bytes) -> bytes:
        key = await keys.key_for(domain, generate=True)
        return sign_message(raw, [key]) if key is not None else raw

    return sign
