"""One asynchronous DNS resolver with a cache, used by every check and by delivery.

The one distinction every caller needs is kept explicit: a name that does not exist
or has no records of the type asked (an empty answer) is not an error, while SERVFAIL,
a timeout or no reachable server is `DnsTempError` — which checks must turn into a
temporary failure (4xx), never into "no record".

DNSSEC: we do not validate signatures ourselves. With `trust_ad` (`dns.dnssec: trust_ad`)
the configured nameservers are a validating resolver on this host that the operator
trusts: queries ask for the AD bit (RFC 6840 §5.7) and `authenticated()` reports it, so
DANE (mta/queue/dane.py) can tell records the resolver proved from ones it merely
passed on. Without `trust_ad` nothing counts as authenticated.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

__all__ = ["DnsError", "DnsPermError", "DnsResolver", "DnsTempError"]


class DnsError(Exception):
    pass


class DnsTempError(DnsError):
    """SERVFAIL, timeout, refused or unreachable server: try again later."""


class DnsPermError(DnsError):
    """A malformed name or answer that retrying cannot fix."""


@dataclass(frozen=True)
class NameserverAddress:
    address: str
    port: int = 53


class _BoundedTtlCache(dns.resolver.LRUCache):
    """The answer cache, keeping each answer at least `min_ttl` and at most `max_ttl`
    seconds whatever its TTL (dns.min_ttl / dns.max_ttl)."""

    def __init__(self, size: int, min_ttl: float, max_ttl: float) -> None:
        super().__init__(size)
        self.min_ttl, self.max_ttl = min_ttl, max_ttl

    def put(self, key, value) -> None:
        now = time.time()
        ttl = min(max(value.expiration - now, self.min_ttl), self.max_ttl)
        value.expiration = now + ttl
        super().put(key, value)


class DnsResolver:
    def __init__(self, nameservers: Sequence[NameserverAddress] | Sequence[dict] = (),
                 timeout: float = 5.0, cache_size: int = 10000, min_ttl: float = 0,
                 max_ttl: float = 86400, trust_ad: bool = False) -> None:
        self.trust_ad = trust_ad
        if nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [
                dns.nameserver.Do53Nameserver(ns["address"], ns.get("port", 53))
                if isinstance(ns, dict) else dns.nameserver.Do53Nameserver(ns.address, ns.port)
                for ns in nameservers]
        else:
            r = dns.asyncresolver.Resolver()
        r.lifetime = timeout
        r.timeout = min(timeout, max(timeout / 2, 0.5))
        r.retry_servfail = False
        if trust_ad:
            r.flags = dns.flags.RD | dns.flags.AD
        r.cache = (_BoundedTtlCache(cache_size, min_ttl, max_ttl) if cache_size > 0
                   else None)
        self._resolver = r
        # Answers by (name, type) as asked, in front of dnspython's cache: a hit there
        # still parses the name and builds a query, ~20 times what a dict look-up costs,
        # and every message asks the same few names. Same expiry as that cache.
        self._front: dict[tuple[str, str | int], dns.resolver.Answer] | None = (
            {} if cache_size > 0 else None)
        self._front_size = cache_size

    @classmethod
    def from_settings(cls, dns_settings) -> DnsResolver:
        return cls([{"address": ns.address, "port": ns.port} for ns in dns_settings.nameservers],
                   timeout=dns_settings.timeout, cache_size=dns_settings.cache_size,
                   min_ttl=dns_settings.min_ttl, max_ttl=dns_settings.max_ttl,
                   trust_ad=dns_settings.dnssec == "trust_ad")

    async def query(self, name: str, rdtype: str | int) -> dns.resolver.Answer | None:
        """The answer, or None when the name or the record type does not exist."""
        front = self._front
        if front is not None:
            hit = front.get((name, rdtype))
            if hit is not None:
                if hit.expiration > time.time():
                    return hit
                del front[(name, rdtype)]
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False,
                                                  raise_on_no_answer=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.resolver.NoNameservers, dns.exception.Timeout,
                dns.resolver.LifetimeTimeout) as exc:
            raise DnsTempError(f"{name}/{rdtype}: {exc}") from None
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong,
                dns.resolver.YXDOMAIN) as exc:
            raise DnsPermError(f"{name}/{rdtype}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{name}/{rdtype}: {exc}") from None
        if front is not None:
            if len(front) >= self._front_size:
                del front[next(iter(front))]  # the oldest entry
            front[(name, rdtype)] = answer
        return answer

    async def authenticated(self, name: str, rdtype: str | int
                            ) -> tuple[dns.resolver.Answer | None, bool]:
        """The answer (None when there is no such record) and whether the validating
        resolver authenticated it (its AD bit, believed only with `trust_ad`)."""
        answer = await self.query(name, rdtype)
        secure = (self.trust_ad and answer is not None
                  and bool(answer.response.flags & dns.flags.AD))
        return answer, secure

    async def txt(self, name: str) -> list[str]:
        """TXT records, each one's strings joined (RFC 7208 §3.3)."""
        answer = await self.query(name, "TXT")
        if answer is None:
            return []
        return [b"".join(rd.strings).decode("utf-8", "replace") for rd in answer]

    async def addresses(self, name: str, rdtype: str = "A") -> list[str]:
        answer = await self.query(name, rdtype)
        return [rd.address for rd in answer] if answer is not None else []

    async def mx(self, name: str) -> list[tuple[int, str]] | None:
        """(preference, host) pairs, or None when there is no MX record set."""
        answer = await self.query(name, "MX")
        if answer is None:
            return None
        return sorted((rd.preference, rd.exchange.to_text(omit_final_dot=True).lower())
                      for rd in answer)

    async def ptr(self, ip: str) -> list[str]:
        name = dns.reversename.from_address(str(ipaddress.ip_address(ip)))
        answer = await self.query(name.to_text(), "PTR")
        return [rd.target.to_text(omit_final_dot=True) for rd in answer] if answer else []
