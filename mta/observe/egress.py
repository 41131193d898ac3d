"""POSTs to URLs that others chose (webhook endpoints, TLS report `rua` URIs from DNS),
kept off the node's own network.

Whoever names the URL — a tenant's API token, any domain we deliver to — must not make
the node talk to its loopback services or internal hosts (SSRF). So the host is resolved
here, every address is checked, and the connection goes to the address that was checked
(the URL's host stays the TLS server name and the Host field), so a second resolution
cannot answer differently (DNS rebinding). Loopback, private, link-local, ULA, multicast,
unspecified and reserved addresses, also in their IPv4-mapped form, are refused unless
the operator allows private targets (`webhooks.allow_private_targets`,
`tls_reports.allow_private_targets`). Plain http goes to a loopback address only, and
only then. Redirects are not followed; one timeout bounds the whole POST, and the
answer's body is never read.
"""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import urlsplit, urlunsplit

import httpx

from mta.dnscache import DnsError, DnsResolver

__all__ = ["Refused", "check_url", "is_loopback_literal", "is_private", "post", "target"]


class Refused(Exception):
    """The URL may not be contacted; nothing was sent."""


def is_private(address: str) -> bool:
    """Whether the address is not a public unicast one (or not an address at all)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or ip.is_unspecified or ip.is_reserved


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "127.0.0.1" if host.lower().rstrip(".") == "localhost" else None


def is_loopback_literal(host: str) -> bool:
    literal = _literal(host)
    return literal is not None and ipaddress.ip_address(literal).is_loopback


def check_url(url: str, *, allow_private: bool) -> None:
    """What can be told from the URL alone (scheme, an address literal): Refused."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        raise Refused(f"{url}: no host")
    literal = _literal(host)
    if parts.scheme == "http":
        # Events and reports must not cross a network in clear: http only to a receiver
        # on this host, and only where private targets are allowed (tests, a lab).
        if not allow_private or (literal and not ipaddress.ip_address(literal).is_loopback):
            raise Refused(f"{url}: plain http is not allowed")
    elif parts.scheme != "https":
        raise Refused(f"{url}: only https URLs are allowed")
    if literal and not allow_private and is_private(literal):
        raise Refused(f"{url}: {host} is not a public address")


async def target(url: str, resolver: DnsResolver, *, allow_private: bool) -> str:
    """The address to connect to for `url`, checked; Refused when there is none."""
    check_url(url, allow_private=allow_private)
    host = urlsplit(url).hostname or ""
    literal = _literal(host)
    if literal:
        return literal
    try:
        found = (await resolver.addresses(host, "A")) + (await resolver.addresses(host, "AAAA"))
    except DnsError as exc:
        raise Refused(f"{url}: {host} did not resolve: {exc}") from None
    if not found:
        raise Refused(f"{url}: {host} has no address")
    # Any private address in the answer refuses the lot: which one a client would pick
    # is not ours to guess.
    if not allow_private and any(is_private(a) for a in found):
        raise Refused(f"{url}: {host} resolves to a non-public address")
    if urlsplit(url).scheme == "http" and not ipaddress.ip_address(found[0]).is_loopback:
        raise Refused(f"{url}: plain http is not allowed")
    return found[0]


def _pinned(url: str, address: str) -> tuple[str, str]:
    """`url` with its host replaced by `address`, and the Host field's value."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    hostname = parts.hostname or ""
    shown = f"[{hostname}]" if ":" in hostname else hostname
    return (urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
            f"{shown}:{parts.port}" if parts.port else shown)


async def post(client: httpx.AsyncClient, url: str, *, content: bytes,
               headers: dict[str, str], resolver: DnsResolver, allow_private: bool,
               timeout: float) -> int:
    """POST to the checked address of `url`; the answer's status. Refused before any
    connection; httpx.HTTPError or TimeoutError when the endpoint fails. `client` must
    not follow redirects."""
    async with asyncio.timeout(timeout):
        address = await target(url, resolver, allow_private=allow_private)
        pinned, host_field = _pinned(url, address)
        # The certificate is checked against the URL's host, named by SNI.
        async with client.stream("POST", pinned, content=content,
                                 headers={**headers, "Host": host_field},
                                 extensions={"sni_hostname": urlsplit(url).hostname or ""}
                                 ) as r:
            return r.status_code
