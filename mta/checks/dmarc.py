"""DMARC evaluation (RFC 7489) from the SPF and DKIM results of one message.

Policy discovery (§6.6.3): `_dmarc.<From domain>`, then `_dmarc.<organizational domain>`
(Public Suffix List, psl.py) where the subdomain policy `sp=` applies. A SERVFAIL or
timeout at either step is `temperror` — authheaders reads it as "no record", which would
let p=reject mail through during a DNS fault; here it becomes a 4xx later.

A failed DMARC check is also reported as `temperror` when an identifier that would have
aligned could not be checked for a temporary reason (a DKIM key lookup or SPF that got
SERVFAIL): a transient fault must never turn into a 5xx under p=reject.

The result reports; the caller decides. `disposition` is what the domain owner asked for
after `pct` sampling (§6.6.4: a message not sampled gets the next milder policy).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mta.checks.dkim import DkimSignatureResult
from mta.checks.psl import organizational_domain
from mta.dnscache import DnsPermError, DnsResolver, DnsTempError

__all__ = ["DmarcRecord", "DmarcResult", "check_dmarc", "parse_dmarc_record"]

_POLICIES = ("none", "quarantine", "reject")
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(frozen=True)
class DmarcRecord:
    p: str
    sp: str
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    rua: str = ""
    ruf: str = ""


def parse_dmarc_record(text: str) -> DmarcRecord:
    """Parse a `v=DMARC1; ...` record; raises ValueError when it is unusable."""
    tags: dict[str, str] = {}
    first = ""
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"malformed tag {part!r}")
        name = name.strip().lower()
        first = first or name
        if name not in tags:
            tags[name] = value.strip()
    if first != "v" or tags.get("v") != "DMARC1":
        raise ValueError("v=DMARC1 must be the first tag")
    p = tags.get("p", "").lower()
    if p not in _POLICIES:
        # §6.6.3 step 6: a record with a valid rua= but no usable p= is read as p=none.
        if tags.get("rua"):
            p = "none"
        else:
            raise ValueError(f"invalid or missing p= ({tags.get('p', '')!r})")
    sp = tags.get("sp", "").lower()
    if sp not in _POLICIES:
        sp = p
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    pct = min(max(pct, 0), 100)
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return DmarcRecord(p=p, sp=sp, pct=pct, adkim=adkim if adkim in ("r", "s") else "r",
                       aspf=aspf if aspf in ("r", "s") else "r",
                       rua=tags.get("rua", ""), ruf=tags.get("ruf", ""))


@dataclass
class DmarcResult:
    result: str  # pass | fail | none | temperror | permerror
    from_domain: str
    policy_domain: str = ""  # where the record was found (From domain or org domain)
    policy: str = ""  # the p= or sp= that applies to this From domain
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    spf_aligned: bool = False
    dkim_aligned: list[str] = field(default_factory=list)  # d= of aligned passing sigs
    disposition: str = "none"  # reject | quarantine | none, after pct sampling
    reason: str = ""
    record: str = ""

    @property
    def aligned(self) -> list[str]:
        """Which identifiers aligned: "spf", "dkim:<d>"..."""
        return (["spf"] if self.spf_aligned else []) + [f"dkim:{d}" for d in self.dkim_aligned]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DmarcResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _aligned(identifier: str, from_domain: str, mode: str) -> bool:
    identifier = identifier.lower().rstrip(".")
    if not identifier:
        return False
    if identifier == from_domain:
        return True
    return mode == "r" and organizational_domain(identifier) == organizational_domain(from_domain)


async def _discover(resolver: DnsResolver, domain: str) -> tuple[str, str] | None:
    """(record text, domain) of the DMARC record at _dmarc.<domain>; None when there is
    none; ("", domain) when there are several, which ends discovery without a policy
    (§6.6.3 step 4). DnsTempError propagates."""
    try:
        txts = await resolver.txt(f"_dmarc.{domain}")
    except DnsPermError:
        return None
    records = [t for t in txts if re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", t)]
    if not records:
        return None
    return (records[0] if len(records) == 1 else ""), domain


def _domain_of(value: str) -> str:
    return value.rpartition("@")[2].strip().lower().rstrip(".")


async def check_dmarc(resolver: DnsResolver, from_domain: str,
                      spf: tuple[str, str] | None,
                      dkim: Sequence[DkimSignatureResult],
                      sample: float | None = None) -> DmarcResult:
    """Evaluate DMARC for the RFC 5322 From domain.

    `spf` is (result, domain checked: MAIL FROM domain or HELO when MAIL FROM was empty).
    `sample` in [0, 100) decides pct sampling (random when None): the policy is applied
    when sample < pct.
    """
    domain = _domain_of(from_domain)
    out = DmarcResult("none", domain)
    if not domain or "." not in domain:
        out.result, out.reason = "permerror", "no usable From domain"
        return out
    org = organizational_domain(domain)
    try:
        found = await _discover(resolver, domain)
        if found is None and org and org != domain:
            found = await _discover(resolver, org)
    except DnsTempError as exc:
        out.result, out.reason = "temperror", f"DMARC record lookup failed: {exc}"
        return out
    if found is None:
        out.reason = "no DMARC record"
        return out
    text, out.policy_domain = found
    if not text:
        out.reason = f"several DMARC records at _dmarc.{out.policy_domain}"
        return out
    out.record = text
    try:
        record = parse_dmarc_record(text)
    except ValueError as exc:
        out.result, out.reason = "permerror", f"invalid DMARC record: {exc}"
        return out
    out.policy = record.sp if out.policy_domain != domain else record.p
    out.pct, out.adkim, out.aspf = record.pct, record.adkim, record.aspf

    spf_result, spf_domain = spf if spf else ("none", "")
    spf_result = spf_result.lower()
    out.spf_aligned = spf_result == "pass" and _aligned(_domain_of(spf_domain), domain,
                                                        record.aspf)
    out.dkim_aligned = sorted({s.domain for s in dkim if s.result == "pass"
                               and _aligned(s.domain, domain, record.adkim)})
    if out.spf_aligned or out.dkim_aligned:
        out.result = "pass"
        return out

    transient = [f"dkim d={s.domain}" for s in dkim if s.result == "temperror"
                 and _aligned(s.domain, domain, record.adkim)]
    if spf_result == "temperror" and _aligned(_domain_of(spf_domain), domain, record.aspf):
        transient.insert(0, "spf")
    if transient:
        out.result = "temperror"
        out.reason = "aligned identifier could not be checked: " + ", ".join(transient)
        return out

    out.result = "fail"
    out.reason = "no aligned SPF or DKIM pass"
    roll = random.random() * 100 if sample is None else sample
    out.disposition = out.policy if roll < record.pct else _MILDER[out.policy]
    return out
