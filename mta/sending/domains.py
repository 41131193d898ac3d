"""Sending domains: onboarding, their DKIM keys, the DNS records to publish and their check.

[Domain configuration > Sending records], [Subdomains]: a domain (or a subdomain, which is
onboarded on its own) becomes a sending domain of the account owning its zone. Onboarding
creates
- an RSA-2048 DKIM key at selector `mtaYYYYMM` (the admin API's sending subdomains are
  onboarded here too) and, on request, an Ed25519 key at `mtaYYYYMMed` (RFC 8463 dual
  signatures need a second selector: one TXT record holds one key), private keys
  encrypted at rest with `secret_key` (mta.signing.keys);
- a return-path (bounce) subdomain `mta-bounce.<domain>`, the domain of every VERP
  MAIL FROM, whose MX points at our nodes so bounces come back to us;
- status `pending` until `check_domain` finds every record live (`ready`), or
  `misconfigured` when one is missing or wrong.

Private-key blobs are bound to their row with the associated data `b"<domain>/<selector>"`
(`key_associated_data`), so a blob copied onto another domain's row does not decrypt.
Keys are rotated (`mta keys rotate|import`, mta/store/dkimkeys.py): mail is signed with
the key of each algorithm that signs at that moment, and every published key is listed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import idna
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.dnscache import DnsResolver
from mta.dnsrecords import RecordCheck, check_records, sending_records, summarize
from mta.errors import MtaError
from mta.signing.keys import KeyVault, SigningKey, generate_private_key, public_key_b64
from mta.store import dkimkeys
from mta.store.dkimkeys import SENDING, Schedule
from mta.store.models import DkimKey, RoutingDomain, SendingDomain, Zone
from mta.store.zones import zone_domain_count

__all__ = [
    "RETURN_PATH_LABEL", "DomainError", "DomainCheck", "check_domain", "check_sender",
    "dkim_selector", "dkim_txt",
    "domain_records", "find_zone", "key_associated_data", "load_key_schedule",
    "load_signing_keys",
    "normalize_domain", "onboard_sending_domain", "sending_domain_for",
]

RETURN_PATH_LABEL = "mta-bounce"
_ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}


class DomainError(ValueError):
    """Onboarding cannot proceed (no zone, zone full, no secret key ...)."""


def normalize_domain(name: str) -> str:
    d = name.strip().rstrip(".").lower()
    try:
        d = idna.encode(d, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise DomainError(f"{name!r} is not a domain name") from None
    if "." not in d or len(d) > 253 - len(RETURN_PATH_LABEL) - 1:
        raise DomainError(f"{name!r} is not a usable domain name")
    return d


def dkim_selector(now: datetime) -> str:
    """The RSA selector of a domain onboarded at `now` (`mtaYYYYMM`)."""
    return f"mta{now:%Y%m}"


def key_associated_data(domain: str, selector: str) -> bytes:
    return f"{domain}/{selector}".encode()


async def find_zone(session: AsyncSession, domain: str, zone_id: str | None = None) -> Zone:
    """The zone `domain` belongs to: `zone_id` if given (it must contain the domain),
    else the zone with the longest name that is the domain or one of its parents."""
    if zone_id:
        zone = await session.get(Zone, zone_id)
        if zone is None:
            raise DomainError(f"no zone {zone_id}")
        if domain != zone.name and not domain.endswith("." + zone.name):
            raise DomainError(f"{domain} is not in zone {zone.name}")
        return zone
    labels = domain.split(".")
    candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)]
    rows = (await session.execute(select(Zone).where(Zone.name.in_(candidates)))).scalars()
    zones = sorted(rows, key=lambda z: len(z.name), reverse=True)
    if not zones:
        raise DomainError(f"no zone contains {domain}; add the zone first (mta zones add)")
    return zones[0]


async def sending_domain_for(session: AsyncSession, account_id: str,
                             domain: str) -> SendingDomain | None:
    """The sending domain named `domain` in one of `account_id`'s zones."""
    return (await session.execute(
        select(SendingDomain).join(Zone, Zone.id == SendingDomain.zone_id)
        .where(SendingDomain.name == domain, Zone.account_id == account_id))).scalar_one_or_none()


async def check_sender(session: AsyncSession, account_id: str,
                       domain: str) -> SendingDomain | None:
    """Who may send from `domain` for `account_id` (one rule for every front door: the
    sending pipeline and the MAIL FROM of SMTP submission): the account's enabled
    sending domain `domain`, or None when `domain` is one of its enabled routing domains
    (which may send only to the account's verified destination addresses: the sending
    pipeline enforces that). MtaError E_SENDER_NOT_VERIFIED when the sending domain is
    disabled, E_SENDER_DOMAIN_NOT_AVAILABLE when it is neither."""
    sd = await sending_domain_for(session, account_id, domain)
    if sd is not None:
        if not sd.enabled:
            raise MtaError("E_SENDER_NOT_VERIFIED", f"Sending from {domain} is "
                           "disabled for this account.", field="from")
        return sd
    routed = (await session.execute(select(RoutingDomain.zone_id).join(
        Zone, Zone.id == RoutingDomain.zone_id).where(
        RoutingDomain.name == domain, RoutingDomain.enabled.is_(True),
        Zone.account_id == account_id).limit(1))).first()
    if routed is None:
        raise MtaError("E_SENDER_DOMAIN_NOT_AVAILABLE", f"{domain} is not a sending "
                       "domain of this account.", field="from")
    return None


async def onboard_sending_domain(session: AsyncSession, settings: Any, name: str, *,
                                 zone_id: str | None = None, ed25519: bool = False,
                                 now: datetime | None = None) -> SendingDomain:
    """Create (or re-enable and complete) the sending domain `name`, in the caller's
    transaction. Idempotent: keys that exist are kept, a missing Ed25519 key is added."""
    now = now or datetime.now(UTC)
    if not getattr(settings, "secret_key", None):
        raise DomainError("secret_key (or MTA_SECRET_KEY) must be set: DKIM private keys "
                          "are encrypted with it")
    domain = normalize_domain(name)
    zone = await find_zone(session, domain, zone_id)
    row = (await session.execute(select(SendingDomain).where(
        SendingDomain.name == domain))).scalar_one_or_none()
    if row is not None and row.zone_id != zone.id:
        raise DomainError(f"{domain} is already a sending domain of another zone")
    if row is None:
        limit = settings.limits.domains_per_zone
        routed = (await session.execute(select(RoutingDomain.id).where(
            RoutingDomain.name == domain, RoutingDomain.zone_id == zone.id))
        ).first()  # already counted in the zone
        if not routed and await zone_domain_count(session, zone.id) >= limit:
            raise DomainError(f"zone {zone.name} already has {limit} domains "
                              "(limits.domains_per_zone)")
        row = SendingDomain(zone_id=zone.id, name=domain, dkim_selector=dkim_selector(now),
                            return_path_domain=f"{RETURN_PATH_LABEL}.{domain}",
                            enabled=True, status="pending")
        session.add(row)
    row.enabled = True
    wanted = [("rsa", row.dkim_selector)]
    if ed25519:
        wanted.append(("ed25519", f"{row.dkim_selector}ed"))
    # Only sending keys count (the forwarding key of a routing domain of the same name
    # is not this sending domain's), under whatever selector a rotation gave them.
    have = {k.algorithm for k in await dkimkeys.published(session, domain, SENDING, now)}
    vault = KeyVault(settings.secret_key)
    for algorithm, selector in wanted:
        if algorithm in have:
            continue
        key = await asyncio.to_thread(generate_private_key, _ALGORITHMS[algorithm])
        session.add(DkimKey(
            domain=domain, selector=selector, algorithm=algorithm, purpose=SENDING,
            private_key_encrypted=vault.encrypt(key, key_associated_data(domain, selector)),
            public_key=public_key_b64(key), active=True))
    await session.flush()
    return row


async def load_key_schedule(session: AsyncSession, vault: KeyVault, domain: str,
                            now: datetime) -> list[tuple[Schedule, SigningKey]]:
    """Every published sending key of `domain`, decrypted, with when it signs
    (`dkimkeys.signers` picks the ones for a given moment)."""
    return [(dkimkeys.schedule(r), SigningKey(domain, r.selector, vault.decrypt(
        r.private_key_encrypted, key_associated_data(r.domain, r.selector))))
        for r in await dkimkeys.published(session, domain, SENDING, now)]


async def load_signing_keys(session: AsyncSession, vault: KeyVault, domain: str,
                            now: datetime | None = None) -> list[SigningKey]:
    """The keys `domain` signs with at `now`: one per algorithm, RSA first."""
    now = now or datetime.now(UTC)
    return dkimkeys.signers(await load_key_schedule(session, vault, domain, now), now)


def dkim_txt(key: DkimKey) -> str:
    return f"v=DKIM1; k={key.algorithm}; p={key.public_key}"


async def domain_records(session: AsyncSession, settings: Any, domain: str,
                         now: datetime | None = None) -> tuple[SendingDomain, list[dict]]:
    """The sending domain and every record it needs: bounce-subdomain MX and SPF, one
    DKIM TXT per published key (during a rotation the new and the old one), DMARC."""
    domain = normalize_domain(domain)
    row = (await session.execute(select(SendingDomain).where(
        SendingDomain.name == domain))).scalar_one_or_none()
    if row is None:
        raise DomainError(f"{domain} is not a sending domain (mta domains onboard "
                          f"{domain} --sending)")
    keys = await dkimkeys.published(session, domain, SENDING, now or datetime.now(UTC))
    keys.sort(key=lambda k: k.algorithm, reverse=True)  # RSA first, then by start
    return row, sending_records(settings, domain, row.return_path_domain,
                                [(k.selector, dkim_txt(k)) for k in keys])


@dataclass(frozen=True)
class DomainCheck:
    domain: str
    status: str  # ready | misconfigured | pending (DNS could not say)
    checks: list[RecordCheck]


async def check_domain(session: AsyncSession, settings: Any, resolver: DnsResolver,
                       domain: str) -> DomainCheck:
    """Check every record in live DNS and store the domain's status (kept when DNS
    cannot answer)."""
    row, records = await domain_records(session, settings, domain)
    checks = await check_records(resolver, records)
    verdict = summarize(checks)
    if verdict is not None:
        status = "ready" if verdict else "misconfigured"
        if row.status != status:
            row.status = status
    return DomainCheck(row.name, row.status, checks)
