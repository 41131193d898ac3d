"""Where a DMARC aggregate report may go: the `rua=` URIs of a policy record (RFC 7489
§6.4) and the external-destination verification of §7.1.

`rua=mailto:dmarc@example.com!10m, mailto:x@y.example` — a comma-separated list of URIs,
each with an optional size limit after `!` (a number with an optional k/m/g/t unit, in
bytes). Only `mailto:` is used for aggregate reports here; other schemes are skipped.

A destination whose organizational domain differs from the policy domain's must agree to
receive its reports: a TXT record `v=DMARC1...` at
`<policy domain>._report._dmarc.<destination domain>`. Without it the destination is
refused; a DNS failure refuses it for this run too (the report is not sent to an address
that has not been shown to want it).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from mta.checks.psl import organizational_domain
from mta.dnscache import DnsPermError, DnsResolver, DnsTempError

__all__ = ["Destination", "parse_rua", "rua_of", "verify_destination"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_LIMIT = re.compile(r"^(\d{1,15})([kmgt]?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Destination:
    uri: str  # as written in the record
    address: str  # the mailto address
    max_size: int | None  # bytes; None = no limit

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower().rstrip(".")


def parse_rua(value: str) -> list[Destination]:
    """The mailto destinations of a `rua=` value, in order, without duplicates; a URI
    that cannot be used is left out."""
    out: list[Destination] = []
    for part in value.split(","):
        uri = part.strip()
        if not uri:
            continue
        target, bang, limit = uri.rpartition("!") if "!" in uri else (uri, "", "")
        max_size = None
        if bang:
            m = _LIMIT.match(limit.strip())
            if not m:
                continue
            max_size = int(m.group(1)) * _UNITS[m.group(2).lower()]
        scheme, _, rest = target.partition(":")
        if scheme.strip().lower() != "mailto":
            continue
        address = urllib.parse.unquote(rest.split("?", 1)[0]).strip()
        local, at, domain = address.rpartition("@")
        if not at or not local or "." not in domain or any(c in address for c in " <>\r\n,"):
            continue
        if all(d.address.lower() != address.lower() for d in out):
            out.append(Destination(uri, address, max_size))
    return out


def rua_of(record: str) -> str:
    """The `rua=` value of a DMARC record text ("" when it has none)."""
    for part in record.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "rua":
            return value.strip()
    return ""


async def verify_destination(resolver: DnsResolver, policy_domain: str,
                             dest: Destination) -> tuple[bool, str]:
    """(allowed, why) for sending `policy_domain`'s reports to `dest` (§7.1)."""
    if organizational_domain(dest.domain) == organizational_domain(policy_domain):
        return True, "same organizational domain"
    name = f"{policy_domain}._report._dmarc.{dest.domain}"
    try:
        txts = await resolver.txt(name)
    except DnsPermError:
        return False, f"no authorising record at {name}"
    except DnsTempError as exc:
        return False, f"authorising record at {name} could not be looked up: {exc}"
    if any(re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", t) for t in txts):
        return True, f"authorised by {name}"
    return False, f"no v=DMARC1 record at {name}"
