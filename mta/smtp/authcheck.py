"""Running the authentication checks of one received message.

The MX session starts the SPF check and the client's PTR lookup early (at MAIL and at
connect: maddy's "start DNS early, wait at end of DATA"), then at the end of DATA calls
`run_checks`, which verifies every DKIM signature and the ARC chain concurrently, runs
DMARC from the SPF and DKIM results, and returns one `AuthResults` value (checks/results)
plus the reduced `AuthVerdicts` the policy reads. Checks never write replies; this module
never decides, it only speaks: `policy_reply` is the reply for a refusing `Decision`.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
from dataclasses import dataclass

from mta import replies
from mta.checks.arc import ArcResult, verify_arc
from mta.checks.dkim import verify_dkim
from mta.checks.dmarc import check_dmarc
from mta.checks.policy import AuthVerdicts, Decision, EffectivePolicy, decide
from mta.checks.results import AuthResults, IprevResult
from mta.checks.spf import SpfResult, check_spf
from mta.dnscache import DnsError, DnsResolver, DnsTempError
from mta.replies import Reply
from mta.routing.rules import normalize_domain

__all__ = ["FromHeader", "Reverse", "DECIDED_BY", "from_header", "judge", "lookup_reverse",
           "policy_reply", "run_checks", "start_spf", "verdicts_of"]

log = logging.getLogger("mta.smtp.auth")

# The reply for each reason the policy refuses with; its text is filled with the
# decision's `detail`.
_POLICY_REPLIES: dict[str, Reply] = {
    "bad_from": replies.BAD_FROM_HEADER,
    "spf_temperror": replies.SPF_TEMPERROR,
    "dns_temperror": replies.AUTH_TEMPERROR,
    "not_authenticated": replies.NOT_AUTHENTICATED,
    "dmarc_reject": replies.DMARC_REJECT,
}


def policy_reply(decision: Decision) -> Reply:
    """What the listener answers to a message the policy refused (reject or tempfail)."""
    return _POLICY_REPLIES[decision.reason].format(**decision.detail)


@dataclass(frozen=True)
class Reverse:
    """The client's PTR name and whether it resolves back to the client (iprev)."""

    ptr: str | None
    iprev: IprevResult


async def lookup_reverse(resolver: DnsResolver, ip: str, timeout: float) -> Reverse:
    """PTR of `ip`, forward-confirmed (RFC 8601 §3: iprev). Never raises."""
    try:
        async with asyncio.timeout(timeout):
            names = await resolver.ptr(ip)
            if not names:
                return Reverse(None, IprevResult("permerror", ip))
            addr = ipaddress.ip_address(ip)
            rdtype = "AAAA" if addr.version == 6 else "A"
            for name in names[:5]:
                found = await resolver.addresses(name, rdtype)
                if any(ipaddress.ip_address(a) == addr for a in found):
                    return Reverse(name.lower(), IprevResult("pass", ip, name.lower()))
            return Reverse(names[0].lower(), IprevResult("fail", ip, names[0].lower()))
    except (DnsTempError, TimeoutError):
        return Reverse(None, IprevResult("temperror", ip))
    except (DnsError, ValueError):
        return Reverse(None, IprevResult("permerror", ip))


def start_spf(resolver: DnsResolver, ip: str, mail_from: str, helo: str,
              receiver: str) -> asyncio.Task[SpfResult]:
    """SPF for MAIL FROM (the HELO identity for the null sender), running in the
    background while the client sends recipients and data."""
    return asyncio.ensure_future(check_spf(resolver, ip, mail_from, helo, receiver=receiver))


@dataclass(frozen=True)
class FromHeader:
    domain: str | None  # the RFC 5322 From domain DMARC evaluates
    problem: str | None = None  # why the message has no single usable author domain


def _header_section(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end + 2]


def from_header(raw: bytes) -> FromHeader:
    """The author domain. RFC 7489 §6.6.1: a message without a From field, with several
    From fields, or with authors in several domains cannot be evaluated reliably (a
    second From is the classic way to show one author and authenticate another)."""
    values: list[str] = []
    current: list[bytes] | None = None
    for line in _header_section(raw).split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        if current is not None:
            values.append(b"".join(current).decode("utf-8", "replace"))
            current = None
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"from":
            current = [value]
    if current is not None:
        values.append(b"".join(current).decode("utf-8", "replace"))
    if not values:
        return FromHeader(None, "the message has no From header")
    if len(values) > 1:
        return FromHeader(None, "the message has more than one From header")
    addresses = [a for _, a in email.utils.getaddresses(values) if a]
    domains = {normalize_domain(a.rpartition("@")[2]) for a in addresses if "@" in a}
    if not domains:
        return FromHeader(None, "the From header holds no address")
    if len(domains) > 1:
        return FromHeader(None, "the From header names authors in several domains")
    return FromHeader(domains.pop())


async def run_checks(resolver: DnsResolver, raw: bytes, spf_task: asyncio.Task[SpfResult],
                     author: FromHeader, iprev: IprevResult | None = None) -> AuthResults:
    """Every check of one message; DMARC last, from the SPF and DKIM results."""
    dkim_task = asyncio.ensure_future(verify_dkim(resolver, raw))
    arc_task = asyncio.ensure_future(verify_arc(resolver, raw))
    try:
        spf, dkim, arc = await asyncio.gather(spf_task, dkim_task, arc_task)
    except BaseException:
        for t in (dkim_task, arc_task):
            t.cancel()
        raise
    dmarc = None
    if author.domain:
        dmarc = await check_dmarc(resolver, author.domain, (spf.result, spf.domain), dkim)
    return AuthResults(spf=spf, dkim=list(dkim), dmarc=dmarc, arc=arc, iprev=iprev)


def _aar_results(arc: ArcResult | None) -> dict[str, str]:
    if arc is None or arc.aar is None:
        return {}
    out: dict[str, str] = {}
    for method in ("spf", "dkim", "dmarc"):
        result = arc.aar.result_of(method)
        if result:
            out[method] = result
    return out


def verdicts_of(results: AuthResults, author: FromHeader | None = None) -> AuthVerdicts:
    """What the policy reads of the results (and of the From field: no single author
    domain is a problem of its own, RFC 7489 §6.6.1)."""
    d = results.dmarc
    return AuthVerdicts(
        from_problem=author.problem if author is not None else None,
        spf=results.spf_result,
        dkim=tuple(s.result for s in results.dkim),
        dmarc=results.dmarc_result,
        dmarc_disposition=d.disposition if d else "none",
        dmarc_domain=(d.policy_domain or d.from_domain) if d else "",
        arc=results.arc_result,
        arc_sealer=results.arc.latest_sealer if results.arc else None,
        arc_aar=_aar_results(results.arc))


# Which check a decision's reason comes from, as `mta simulate` reports it.
DECIDED_BY = {
    "accepted": "SPF or DKIM passed and DMARC did not ask for rejection",
    "quarantined": "DMARC (p=quarantine: accepted and marked)",
    "arc_override": "ARC (a trusted sealer's pass overrode a failure)",
    "not_authenticated": "SPF and DKIM (neither passed; inbound.policy.require_spf_or_dkim)",
    "dmarc_reject": "DMARC (p=reject; inbound.policy.enforce_dmarc_reject)",
    "bad_from": "the From field (no single author domain, RFC 7489 §6.6.1)",
    "spf_temperror": "SPF (a DNS error: try again later)",
    "dns_temperror": "DNS (a temporary error: try again later)",
    "monitor_only": "nothing (inbound.policy.monitor_only records and accepts)",
}


def judge(verdicts: AuthVerdicts, policy: EffectivePolicy,
          results: AuthResults | None = None) -> tuple[Decision, Reply | None]:
    """The MX's decision on one message and, when it refuses, the reply (RFC 7208 §6.2:
    a refusal because SPF failed carries the domain's exp= text)."""
    decision = decide(verdicts, policy)
    if decision.accepted:
        return decision, None
    reply = policy_reply(decision)
    spf = results.spf if results is not None else None
    if decision.reason == "not_authenticated" and spf is not None and spf.result == "fail" \
            and spf.explanation:
        explained = replies.SPF_EXPLANATION.format(
            refusal=reply.text, explanation=replies.quoted(spf.explanation))
        reply = Reply(reply.code, reply.enhanced, explained.text)
    return decision, reply
