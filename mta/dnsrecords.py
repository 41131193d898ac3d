"""The DNS records a domain must publish for routing or sending, and their live check.

Routing (on the routing domain itself, [Domain configuration > Routing records]):
  MX  <domain>  -> every MX host of this deployment (priority 10 each: the nodes are
                   equivalent, equal preference spreads load across them)
  TXT <domain>  "v=spf1 include:<spf include> ~all"  (forwarded mail leaves from our nodes)
Sending (per sending domain, [Domain configuration > Sending records]):
  MX  <return-path domain> -> the MX hosts (bounces come back to us)
  TXT <return-path domain> "v=spf1 include:<spf include> ~all"
  TXT <selector>._domainkey.<domain> "v=DKIM1; k=rsa; p=..."
  TXT _dmarc.<domain> "v=DMARC1; p=none; rua=mailto:postmaster@<domain>" (start with
      reports, tighten to quarantine and reject once they show your mail passing)

The MX hosts are `node.hostname` (or `node.mx_hosts` when the configuration has that
key); the SPF include is `_spf.<node.hostname>` (or `node.spf_include`), a record the
operator publishes once listing the nodes' addresses, like the reference's
`_spf.mx.cloudflare.net`.

`check_records` asks the node's resolver and says per record: ok, missing, wrong (a
record of that type exists with other content) or unknown (SERVFAIL/timeout: never
reported as missing).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from mta.config import Settings
from mta.dnscache import DnsError, DnsResolver

__all__ = ["RecordCheck", "check_records", "dmarc_value", "mx_hosts", "routing_records",
           "sending_records", "spf_include", "spf_include_value", "summarize"]

TTL_AUTO = 1
MX_PRIORITY = 10

State = Literal["ok", "missing", "wrong", "unknown"]


def mx_hosts(settings: Settings) -> list[str]:
    hosts = settings.node.mx_hosts or [settings.node.hostname]
    return [h.lower().rstrip(".") for h in hosts]


def spf_include(settings: Settings) -> str:
    return (settings.node.spf_include
            or f"_spf.{settings.node.hostname}").lower().rstrip(".")


def _spf_value(settings: Settings) -> str:
    return f"v=spf1 include:{spf_include(settings)} ~all"


def _mx(name: str, host: str) -> dict:
    return {"type": "MX", "name": name, "content": host, "priority": MX_PRIORITY,
            "ttl": TTL_AUTO}


def _txt(name: str, value: str) -> dict:
    return {"type": "TXT", "name": name, "content": value, "ttl": TTL_AUTO}


def routing_records(settings: Settings, domain: str) -> list[dict]:
    return [*(_mx(domain, h) for h in mx_hosts(settings)), _txt(domain, _spf_value(settings))]


def sending_records(settings: Settings, domain: str, return_path_domain: str,
                    dkim: list[tuple[str, str]]) -> list[dict]:
    """`dkim` is (selector, TXT value) for each active key of the domain."""
    return [*(_mx(return_path_domain, h) for h in mx_hosts(settings)),
            _txt(return_path_domain, _spf_value(settings)),
            *(_txt(f"{sel}._domainkey.{domain}", value) for sel, value in dkim),
            _txt(f"_dmarc.{domain}", dmarc_value(domain))]


def dmarc_value(domain: str) -> str:
    """The DMARC record a new sending domain starts with: p=none and reports (RFC 7489
    §6.3) to see who sends in its name; tighten to quarantine, then reject, once the
    reports show all of its mail passing."""
    return f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}"


def spf_include_value(settings: Settings) -> str:
    """What the SPF include target (node.spf_include) publishes: every MX host's
    addresses (`a:`), which are the nodes mail leaves from."""
    return "v=spf1 " + " ".join(f"a:{h}" for h in mx_hosts(settings)) + " -all"


@dataclass(frozen=True)
class RecordCheck:
    record: dict
    state: State
    found: tuple[str, ...] = ()


def _tags(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            out[k.strip().lower()] = "".join(v.split())
    return out


def _txt_state(wanted: str, found: list[str]) -> State:
    low = wanted.lower()
    if low.startswith("v=spf1"):
        spf = [t for t in found if t.lower().split(" ", 1)[0] == "v=spf1"]
        if not spf:
            return "missing"
        # The mechanisms we ask for (include:, a:, ...) must be there; others may be too.
        wanted_terms = [t for t in low.split()[1:] if t.startswith(("include:", "a:"))]
        terms = {t.lstrip("+") for t in spf[0].lower().split()}
        return "ok" if len(spf) == 1 and all(t in terms for t in wanted_terms) else "wrong"
    if low.startswith("v=dkim1"):
        keys = [t for t in found if "p=" in t.lower()]
        if not keys:
            return "missing"
        want = _tags(wanted).get("p")
        return "ok" if any(_tags(t).get("p") == want for t in keys) else "wrong"
    if low.startswith("v=dmarc1"):
        return "ok" if any(t.lower().replace(" ", "").startswith("v=dmarc1")
                           for t in found) else "missing"
    if not found:
        return "missing"
    return "ok" if wanted in found else "wrong"


async def _lookup(resolver: DnsResolver, name: str, rtype: str) -> list[str] | None:
    """The record contents at name/type ([] = none), or None on a DNS failure."""
    try:
        if rtype == "MX":
            mx = await resolver.mx(name)
            return [host for _, host in mx or []]
        if rtype == "TLSA":
            answer = await resolver.query(name, "TLSA")
            return [f"{rd.usage} {rd.selector} {rd.mtype} {rd.cert.hex()}"
                    for rd in answer or []]
        return await resolver.txt(name)
    except DnsError:
        return None


async def check_records(resolver: DnsResolver, records: list[dict]) -> list[RecordCheck]:
    keys = sorted({(r["name"], r["type"]) for r in records})
    answers = await asyncio.gather(*(_lookup(resolver, n, t) for n, t in keys))
    found = dict(zip(keys, answers, strict=True))
    checks: list[RecordCheck] = []
    for r in records:
        values = found[(r["name"], r["type"])]
        if values is None:
            state: State = "unknown"
        elif r["type"] == "MX":
            hosts = {v.lower().rstrip(".") for v in values}
            state = "ok" if r["content"] in hosts else ("wrong" if hosts else "missing")
        else:
            state = _txt_state(r["content"], values)
        checks.append(RecordCheck(r, state, tuple(values or ())))
    return checks


def summarize(checks: list[RecordCheck]) -> bool | None:
    """True when every record is in place, False when one is missing or wrong,
    None when DNS could not say."""
    if any(c.state in ("missing", "wrong") for c in checks):
        return False
    if any(c.state == "unknown" for c in checks):
        return None
    return True
