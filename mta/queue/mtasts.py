"""MTA-STS (RFC 8461) policy discovery and cache for outbound delivery.

Job: given a destination domain, say which MTA-STS policy applies, if any. Inputs: the
`_mta-sts.<domain>` TXT record (through our DnsResolver) and the policy document at
`https://mta-sts.<domain>/.well-known/mta-sts.txt`, fetched with httpx and a verified
certificate. Side effects: an in-memory cache per domain, keyed on the TXT `id` and
honouring `max_age`. Nothing here connects to an MX or decides about retries; remote.py
applies the returned Policy.

Settings read (constructor arguments): the policy host's HTTPS port and the TLS context or
CA bundle that verifies it (both only differ from the defaults in tests, which serve the
policy on loopback), fetch timeout, maximum body size, clock.

Failure rules (RFC 8461 §3.3, §5.1): no usable TXT record, a DNS error or a failed fetch
with no unexpired cached policy means "no policy" (deliver as if the domain had no
MTA-STS); with an unexpired cached policy, that policy keeps applying, because an attacker
who can block DNS or HTTPS must not be able to switch enforcement off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx

from mta.dnscache import DnsError, DnsResolver

__all__ = ["MtaSts", "Policy", "PolicyError", "mx_matches", "parse_policy", "parse_txt"]

log = logging.getLogger(__name__)

Mode = Literal["enforce", "testing", "none"]

MAX_AGE_LIMIT = 31557600  # RFC 8461 §3.2: at most one year
MAX_POLICY_BYTES = 64 * 1024  # §3.3 suggests senders limit the body; 64 KiB as Postfix does
_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}")
_MX_PATTERN_RE = re.compile(
    r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*",
    re.IGNORECASE)


class PolicyError(Exception):
    """A TXT record or policy document that does not follow RFC 8461."""


class PolicyFetchError(PolicyError):
    """The policy could not be fetched (no address, no connection, not HTTP 200)."""


@dataclass(frozen=True)
class Policy:
    id: str
    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float = field(default=0.0, compare=False)

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def matches(self, host: str) -> bool:
        """Whether `host` (an MX host name) is allowed by one of the policy's mx patterns."""
        return any(mx_matches(p, host) for p in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact match, or `*.suffix` matching exactly one extra left label."""
    pattern = pattern.strip().rstrip(".").lower()
    host = host.strip().rstrip(".").lower()
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return host == pattern


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the `_mta-sts` TXT records, or None when there is no single
    valid STSv1 record (§3.1: several STSv1 records mean no policy)."""
    sts = [r for r in records if r.startswith("v=STSv1")]
    if len(sts) != 1:
        return None
    fields: dict[str, str] = {}
    for part in sts[0].split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            return None
        fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1":
        return None
    policy_id = fields.get("id", "")
    return policy_id if _ID_RE.fullmatch(policy_id) else None


def parse_policy(text: str, policy_id: str, fetched_at: float = 0.0) -> Policy:
    """Parse a policy document strictly; raises PolicyError on anything RFC 8461 forbids."""
    version = mode = max_age = None
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"policy line without a colon: {line[:80]!r}")
        key, value = key.strip(), value.strip()
        # §3.2: unknown fields are ignored; for a repeated known field the first one counts.
        if key == "version" and version is None:
            version = value
        elif key == "mode" and mode is None:
            mode = value
        elif key == "max_age" and max_age is None:
            max_age = value
        elif key == "mx":
            if not _MX_PATTERN_RE.fullmatch(value.rstrip(".")):
                raise PolicyError(f"bad mx pattern {value[:80]!r}")
            mx.append(value.rstrip(".").lower())
    if version != "STSv1":
        raise PolicyError(f"version must be STSv1, got {version!r}")
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode must be enforce, testing or none, got {mode!r}")
    if max_age is None or not re.fullmatch(r"\d{1,10}", max_age):
        raise PolicyError(f"max_age must be 1-10 digits, got {max_age!r}")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} needs at least one mx pattern")
    return Policy(id=policy_id, mode=mode, mx=tuple(mx),
                  max_age=min(int(max_age), MAX_AGE_LIMIT), fetched_at=fetched_at)


class MtaSts:
    """Finds the MTA-STS policy of destination domains, with a cache per domain."""

    def __init__(self, resolver: DnsResolver, *, https_port: int = 443,
                 ssl_context: ssl.SSLContext | None = None, ca_bundle: str | None = None,
                 fetch_timeout: float = 20.0, max_policy_bytes: int = MAX_POLICY_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self._resolver = resolver
        self._port = https_port
        # Certificate verification is the whole point of the HTTPS fetch (§3.3): the
        # context always verifies; tests pass one that trusts their own CA.
        self._ssl = ssl_context or ssl.create_default_context(cafile=ca_bundle)
        self._timeout = fetch_timeout
        self._max_bytes = max_policy_bytes
        self._clock = clock
        self._cache: dict[str, Policy] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # The RFC 8460 result type of the last failed fetch per domain (TLS reporting);
        # forgotten when a fetch succeeds.
        self.fetch_failures: dict[str, str] = {}

    def cached(self, domain: str) -> Policy | None:
        """The unexpired cached policy for `domain`, without any network access."""
        policy = self._cache.get(domain.lower().rstrip("."))
        if policy is not None and policy.expires_at > self._clock():
            return policy
        return None

    async def policy(self, domain: str) -> Policy | None:
        """The policy that applies to `domain` now, or None. Never raises for DNS or
        HTTPS trouble: those fall back to the cached policy (see the module docstring)."""
        domain = domain.lower().rstrip(".")
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:  # one fetch per domain even when many deliveries ask at once
            cached = self.cached(domain)
            try:
                policy_id = parse_txt(await self._resolver.txt(f"_mta-sts.{domain}"))
            except DnsError as exc:
                log.info("mta-sts: TXT lookup for %s failed: %s", domain, exc)
                return cached
            if policy_id is None:
                return cached
            if cached is not None and cached.id == policy_id:
                return cached
            try:
                policy = await self._fetch(domain, policy_id)
            except (PolicyError, httpx.HTTPError, DnsError, OSError) as exc:
                log.info("mta-sts: policy fetch for %s failed: %s", domain, exc)
                self.fetch_failures[domain] = _failure_type(exc)
                return cached
            self.fetch_failures.pop(domain, None)
            self._cache[domain] = policy
            return policy

    def fetch_failure(self, domain: str) -> str | None:
        """Why the last policy fetch for `domain` failed (an RFC 8460 result type)."""
        return self.fetch_failures.get(domain.lower().rstrip("."))

    async def _fetch(self, domain: str, policy_id: str) -> Policy:
        host = f"mta-sts.{domain}"
        # Resolve through our resolver (configured nameservers, test DNS) rather than the
        # system's, then connect to the address while TLS still checks `host` via SNI.
        addresses = (await self._resolver.addresses(host, "AAAA")
                     + await self._resolver.addresses(host, "A"))
        if not addresses:
            raise PolicyFetchError(f"{host} has no address")
        last: Exception | None = None
        for address in addresses:
            try:
                body = await self._get(host, address)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc  # try the next address; any other error is the policy host's
                continue
            return parse_policy(body, policy_id, fetched_at=self._clock())
        raise PolicyFetchError(f"could not connect to {host}: {last}") from last

    async def _get(self, host: str, address: str) -> str:
        literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        url = f"https://{literal}:{self._port}/.well-known/mta-sts.txt"
        # trust_env=False: a proxy from the environment must not see or alter the policy;
        # redirects are not followed (§3.3).
        async with httpx.AsyncClient(verify=self._ssl, timeout=self._timeout,
                                     follow_redirects=False, trust_env=False) as client:
            request = client.build_request("GET", url, headers={"Host": host},
                                           extensions={"sni_hostname": host})
            response = await client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise PolicyFetchError(f"{host} answered HTTP {response.status_code}")
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise PolicyError(f"{host} policy larger than {self._max_bytes} bytes")
            finally:
                await response.aclose()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{host} policy is not UTF-8") from exc


def _failure_type(exc: BaseException) -> str:
    """RFC 8460 §4.3.2: a certificate the fetch could not verify, a policy that does not
    parse, or any other trouble getting it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return "sts-webpki-invalid"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, PolicyError) and not isinstance(exc, PolicyFetchError):
        return "sts-policy-invalid"
    return "sts-policy-fetch-error"
