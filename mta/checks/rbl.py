"""DNS block lists (DNSBL/RBL) for the connecting address, IPv4 and IPv6.

The check reports; the SMTP layer decides the reply. Every configured zone is asked at
once, so a slow list costs one resolver timeout rather than one per zone. A list that
cannot be asked (SERVFAIL, timeout) fails open: refusing all mail because a block list
is down would hurt more than letting one listed host through, which is what MTAs
commonly do. Answers are cached by the shared resolver (positive and negative).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from mta.dnscache import DnsError, DnsResolver

__all__ = ["RblChecker", "RblResult", "rbl_query_name"]

log = logging.getLogger("mta.checks.rbl")

_LISTED = ipaddress.ip_network("127.0.0.0/8")
# Spamhaus and others answer 127.255.255.x for "query refused" (public resolver, over
# quota, typo zone): an operational error, not a listing of the client.
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RblResult:
    listed: bool
    zone: str | None = None  # the first zone, in configured order, that lists the address
    answer: str | None = None  # that zone's 127.x.y.z answer (its listing code)
    reason: str | None = None  # that zone's TXT text, when it publishes one
    listed_zones: list[str] = field(default_factory=list)  # every zone that lists it
    skipped_by_allowlist: bool = False
    errors: list[str] = field(default_factory=list)  # zones that could not be asked


def _client_address(ip: str) -> _Address:
    addr = ipaddress.ip_address(ip.strip().strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        # An IPv4 client seen through a dual-stack socket is listed under its IPv4 form.
        return addr.ipv4_mapped
    return addr


def rbl_query_name(ip: str, zone: str) -> str:
    """The DNSBL name for `ip` in `zone` (RFC 5782 §2.1 reversed octets, §2.4 nibbles)."""
    addr = _client_address(ip)
    if addr.version == 4:
        labels = reversed(str(addr).split("."))
    else:
        labels = reversed(addr.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.strip(".")


class RblChecker:
    def __init__(self, resolver: DnsResolver, zones: Iterable[str],
                 allowlist: Iterable[str] = ()) -> None:
        self._resolver = resolver
        self.zones = [z.strip().strip(".").lower() for z in zones if z.strip().strip(".")]
        # strict=False: "192.0.2.1/24" in a config file means the network around it.
        self.allowlist: list[_Network] = [ipaddress.ip_network(n.strip(), strict=False)
                                          for n in allowlist]

    def allowlisted(self, ip: str) -> bool:
        addr = _client_address(ip)
        return any(addr.version == net.version and addr in net for net in self.allowlist)

    async def check(self, ip: str) -> RblResult:
        """Ask every zone about `ip`; raises ValueError only for a malformed address."""
        addr = _client_address(ip)
        if any(addr.version == net.version and addr in net for net in self.allowlist):
            return RblResult(listed=False, skipped_by_allowlist=True)
        if not self.zones:
            return RblResult(listed=False)
        names = [rbl_query_name(str(addr), zone) for zone in self.zones]
        outcomes = await asyncio.gather(*(self._ask(addr, zone, name)
                                          for zone, name in zip(self.zones, names, strict=True)))
        errors = [zone for zone, (_, failed) in zip(self.zones, outcomes, strict=True) if failed]
        listings = [(zone, name, code)
                    for zone, name, (code, _) in zip(self.zones, names, outcomes, strict=True)
                    if code is not None]
        if not listings:
            return RblResult(listed=False, errors=errors)
        zone, name, code = listings[0]
        reason = await self._reason(name)
        log.info("%s listed by %s (%s)%s", addr, ", ".join(z for z, _, _ in listings), code,
                 f": {reason}" if reason else "")
        return RblResult(listed=True, zone=zone, answer=code, reason=reason,
                         listed_zones=[z for z, _, _ in listings], errors=errors)

    async def _ask(self, addr: _Address, zone: str, name: str) -> tuple[str | None, bool]:
        """(listing code or None, whether the zone failed)."""
        try:
            answers = await self._resolver.addresses(name, "A")
        except DnsError as exc:
            log.warning("DNSBL %s unavailable for %s, not counted as listed: %s",
                        zone, addr, exc)
            return None, True
        codes: list[str] = []
        for answer in answers:
            a = ipaddress.ip_address(answer)
            if a in _ERROR_CODES:
                log.warning("DNSBL %s refused the query for %s (answer %s), "
                            "not counted as listed", zone, addr, answer)
                return None, True
            if a in _LISTED:
                codes.append(answer)
            else:
                # Outside 127.0.0.0/8 is no listing code: a wildcard or a parked zone.
                log.warning("DNSBL %s answered %s for %s, outside 127.0.0.0/8: ignored",
                            zone, answer, addr)
        return (min(codes, key=ipaddress.ip_address) if codes else None), False

    async def _reason(self, name: str) -> str | None:
        try:
            texts = await self._resolver.txt(name)
        except DnsError:
            return None  # the listing stands; only its explanation is missing
        return " ".join(texts) if texts else None
