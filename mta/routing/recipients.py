"""Recipient validation at RCPT time: is this address one we accept mail for?

Reads the routing data of the recipient's domain from PostgreSQL (routing_domains +
zones + routing_rules + verified destination_addresses of the zone's account) and
asks the one matcher (`mta.routing.rules.match_rule`). The answer is a value:
- `relay_denied`: the domain is not an enabled routing domain of an enabled zone
  (we are never an open relay);
- `unknown`: our domain, but no active rule matches and there is no active catch-all;
- `accepted`: with the rule that matched (the routing pipeline matches again after
  acceptance, with the same function, so both agree).

A domain's routing data is cached for `inbound.recipient_cache_ttl` seconds (0 turns
the cache off): a busy MX would otherwise read the same rules for every RCPT. Pattern
rules are compiled once per pattern text in a process (mta.routing.patterns.compiled), not
at each reload. Several
nodes share the database, so the TTL bounds how stale a node can be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select

from mta.routing.rules import Rule, RuleMatch, match_rule, normalize_address, normalize_domain
from mta.store.db import Database
from mta.store.models import DestinationAddress, RoutingDomain, RoutingRule, Zone

__all__ = ["DomainRouting", "RecipientDirectory", "RecipientVerdict"]


@dataclass(frozen=True)
class DomainRouting:
    """What the matcher needs for one routing domain."""

    domain: str
    zone_id: str
    account_id: str
    subaddressing: bool
    rules: tuple[Rule, ...]
    verified: frozenset[str]


@dataclass(frozen=True)
class RecipientVerdict:
    kind: Literal["accepted", "unknown", "relay_denied"]
    address: str  # normalised (A-label domain, lower case)
    domain: str
    routing: DomainRouting | None = None
    match: RuleMatch | None = None
    # issue 4: a bounce/complaint to our return path, consumed by mta.queue.bounces (no rule)
    bounce: bool = False
    # a report mailbox, parsed and kept by the MX itself, no rule: "dmarc"
    # (dmarc_reports.intake_addresses, mta/reports/dmarc_intake.py) or "tls"
    # (tls_reports.intake_addresses, mta/reports/tls_intake.py)
    report_intake: str | None = None


class RecipientDirectory:
    def __init__(self, db: Database, cache_ttl: float = 5.0) -> None:
        self.db = db
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, DomainRouting | None]] = {}

    def forget(self) -> None:
        """Drop the cached routing data (SIGHUP): the next RCPT reads the rules afresh."""
        self._cache.clear()

    async def lookup(self, address: str) -> RecipientVerdict:
        """Raises on database errors (the caller answers 451 4.3.0)."""
        addr = normalize_address(address)
        domain = addr.rpartition("@")[2]
        routing = await self.domain(domain)
        if routing is None:
            return RecipientVerdict("relay_denied", addr, domain)
        match = match_rule(routing.rules, addr, subaddressing=routing.subaddressing,
                           verified=routing.verified)
        if match is None:
            return RecipientVerdict("unknown", addr, domain, routing)
        return RecipientVerdict("accepted", addr, domain, routing, match)

    async def domain(self, domain: str) -> DomainRouting | None:
        domain = normalize_domain(domain)
        now = time.monotonic()
        hit = self._cache.get(domain)
        if hit is not None and hit[0] > now:
            return hit[1]
        routing = await self._load(domain)
        if self.cache_ttl > 0:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[domain] = (now + self.cache_ttl, routing)
        return routing

    async def _load(self, domain: str) -> DomainRouting | None:
        async with self.db.session() as s:
            row = (await s.execute(
                select(RoutingDomain.name, Zone.id, Zone.account_id, Zone.support_subaddress)
                .join(Zone, Zone.id == RoutingDomain.zone_id)
                .where(func.lower(RoutingDomain.name).in_(_name_forms(domain)),
                       RoutingDomain.enabled.is_(True), Zone.routing_enabled.is_(True))
            )).first()
            if row is None:
                return None
            _, zone_id, account_id, subaddressing = row
            rule_rows = (await s.execute(
                select(RoutingRule).where(RoutingRule.zone_id == zone_id)
                .order_by(RoutingRule.priority, RoutingRule.created_at, RoutingRule.id)
            )).scalars().all()
            emails = (await s.execute(
                select(DestinationAddress.email).where(
                    DestinationAddress.account_id == account_id,
                    DestinationAddress.verified_at.is_not(None))
            )).scalars().all()
        # Rules of a zone may name any of its routing domains: keep this domain's ones
        # (a regex may match any of them, so it stays for each).
        rules = tuple(r for r in (Rule.from_row(x) for x in rule_rows)
                      if r.catch_all or _for_domain(r, domain))
        return DomainRouting(domain=domain, zone_id=zone_id, account_id=account_id,
                             subaddressing=subaddressing, rules=rules,
                             verified=frozenset(normalize_address(e) for e in emails))


def _for_domain(rule: Rule, domain: str) -> bool:
    if rule.pattern is not None:
        return rule.pattern.domain in (None, domain)
    return any(t.rpartition("@")[2] == domain for t in rule.literal_targets())


def _name_forms(domain: str) -> list[str]:
    """The A-label form and, for IDNs, the Unicode form an admin may have stored."""
    forms = [domain]
    if "xn--" in domain:
        try:
            import idna

            forms.append(idna.decode(domain).lower())
        except (ImportError, UnicodeError, ValueError):
            pass
    return forms
