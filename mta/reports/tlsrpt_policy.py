"""Where a domain wants its TLS reports: the `_smtp._tls.<domain>` TXT record
(RFC 8460 §3): `v=TLSRPTv1; rua=mailto:reports@example.com,https://example.com/tlsrpt`."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from mta.dnscache import DnsResolver

__all__ = ["parse_tlsrpt", "report_destinations"]

MAX_DESTINATIONS = 5  # a record cannot make us send one report to many places


def parse_tlsrpt(records: list[str]) -> list[str]:
    """The `rua` URIs of the one TLSRPTv1 record (none when there is no record, or
    several: §3, like MTA-STS, treats that as no record). Only mailto: and https: URIs
    (and http:, which the sender refuses unless private targets are allowed) are kept."""
    found = [r for r in records if r.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(found) != 1:
        return []
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    out: list[str] = []
    for uri in fields.get("rua", "").split(","):
        uri = uri.strip()
        scheme = urlsplit(uri).scheme.lower()
        if scheme == "mailto" and "@" in unquote(uri[7:]):
            out.append(uri)
        elif scheme in ("https", "http") and urlsplit(uri).hostname:
            out.append(uri)
    return list(dict.fromkeys(out))[:MAX_DESTINATIONS]


async def report_destinations(resolver: DnsResolver, domain: str) -> list[str]:
    """The rua URIs `domain` publishes; DnsTempError propagates (try again later)."""
    return parse_tlsrpt(await resolver.txt(f"_smtp._tls.{domain}"))
