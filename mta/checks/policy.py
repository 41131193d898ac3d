"""The inbound authentication policy: one pure decision from check results.

Input: the verdicts of SPF, DKIM, DMARC and ARC for one message (`AuthVerdicts`, plain
strings so this module depends on no check implementation) and the effective policy
for the recipient domain (`EffectivePolicy`, settings `inbound.policy` merged with one
`inbound.domain_policies` entry). Output: a `Decision` value — accept / reject / tempfail,
a stable `reason` (a metric label and an event field), the facts a refusal names
(`detail`), and whether the message is marked (quarantine). It speaks no SMTP: the
listener turns a refusal into its reply (`mta.smtp.authcheck.policy_reply`). Side effects
happen in the caller, after this returns (mox `analyze()`; maddy's check/action split).

Order (RFC 7489 §6.6.1: first, a message without exactly one author domain is
refused, since DMARC cannot protect it; then MISSION R2, docs Postmaster "Mail authentication requirement", "DMARC enforcing"):
1. neither SPF pass nor a valid DKIM signature -> reject 550 5.7.26, unless a check
   that could still pass hit a temporary DNS error (-> 451 4.7.x), or a trusted ARC
   sealer recorded a pass;
2. DMARC temperror -> 451 4.7.0 (p=reject mail must not slip through a DNS fault);
3. DMARC fail with disposition reject (the DMARC check applied sp= and pct=) -> 550 5.7.1,
   unless a trusted ARC sealer's AAR shows dmarc=pass;
4. DMARC fail with disposition quarantine -> accept and mark;
5. monitor_only turns every reject/tempfail above into accept, keeping what it would
   have been in `would_be`.
Temporary DNS failures never become a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mta.config import InboundDomainPolicy, InboundPolicy

__all__ = ["AuthVerdicts", "Decision", "EffectivePolicy", "decide", "effective_policy"]

Verdict = Literal["accept", "reject", "tempfail"]


@dataclass(frozen=True)
class EffectivePolicy:
    require_spf_or_dkim: bool = True
    enforce_dmarc_reject: bool = True
    trusted_arc_sealers: frozenset[str] = frozenset()
    monitor_only: bool = False


def effective_policy(base: InboundPolicy, overrides: Sequence[InboundDomainPolicy],
                     domain: str) -> EffectivePolicy:
    """The policy for mail to `domain` (one of ours): the override for exactly that
    domain, falling back key by key to `inbound.policy`."""
    d = domain.lower().rstrip(".")
    over = next((o for o in overrides if o.domain.lower().rstrip(".") == d), None)

    def pick(name: str):
        value = getattr(over, name) if over is not None else None
        return getattr(base, name) if value is None else value

    return EffectivePolicy(
        require_spf_or_dkim=pick("require_spf_or_dkim"),
        enforce_dmarc_reject=pick("enforce_dmarc_reject"),
        trusted_arc_sealers=frozenset(s.lower().rstrip(".")
                                      for s in pick("trusted_arc_sealers")),
        monitor_only=pick("monitor_only"))


@dataclass(frozen=True)
class AuthVerdicts:
    """What the checks found, reduced to the facts the policy reads."""

    spf: str = "none"  # pass|fail|softfail|neutral|none|temperror|permerror
    dkim: tuple[str, ...] = ()  # one result per signature
    dmarc: str = "none"  # pass|fail|none|temperror|permerror
    dmarc_disposition: str = "none"  # none|quarantine|reject, after sp= and pct=
    dmarc_domain: str = ""
    arc: str = "none"  # none|pass|fail|temperror
    arc_sealer: str | None = None  # the newest ARC-Seal d=
    arc_aar: dict[str, str] = field(default_factory=dict)  # method -> result in that AAR
    from_problem: str | None = None  # no single author domain (RFC 7489 §6.6.1)

    @property
    def dkim_pass(self) -> bool:
        return "pass" in self.dkim

    @property
    def dkim_summary(self) -> str:
        if self.dkim_pass:
            return "pass"
        for r in ("temperror", "fail", "policy", "neutral", "permerror"):
            if r in self.dkim:
                return r
        return "none"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str  # stable: accepted|quarantined|arc_override|not_authenticated|dmarc_reject|
    #                      bad_from|spf_temperror|dns_temperror|monitor_only
    # What a refusal names (the values its reply text is filled with): `detail` for
    # bad_from / spf_temperror / dns_temperror, `spf` and `dkim` for not_authenticated,
    # `domain` for dmarc_reject.
    detail: dict[str, str] = field(default_factory=dict)
    quarantine: bool = False
    would_be: str | None = None  # monitor_only: the reason it would have been refused

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"


def _arc_trusted_pass(v: AuthVerdicts, policy: EffectivePolicy, methods: Iterable[str]) -> bool:
    if v.arc != "pass" or not v.arc_sealer:
        return False
    if v.arc_sealer.lower().rstrip(".") not in policy.trusted_arc_sealers:
        return False
    return any(v.arc_aar.get(m) == "pass" for m in methods)


def _strict(v: AuthVerdicts, policy: EffectivePolicy) -> Decision:
    """The decision without monitor_only."""
    if v.from_problem:
        return Decision("reject", "bad_from", {"detail": v.from_problem})
    arc_override = False
    if policy.require_spf_or_dkim and not (v.spf == "pass" or v.dkim_pass):
        if _arc_trusted_pass(v, policy, ("dmarc", "spf", "dkim")):
            arc_override = True
        elif v.spf == "temperror":
            return Decision("tempfail", "spf_temperror", {"detail": "spf"})
        elif "temperror" in v.dkim:
            return Decision("tempfail", "dns_temperror", {"detail": "dkim key"})
        else:
            return Decision("reject", "not_authenticated",
                            {"spf": v.spf, "dkim": v.dkim_summary})
    if v.dmarc == "temperror" and policy.enforce_dmarc_reject:
        if _arc_trusted_pass(v, policy, ("dmarc",)):
            return Decision("accept", "arc_override")
        return Decision("tempfail", "dns_temperror", {"detail": "dmarc"})
    if v.dmarc == "fail" and v.dmarc_disposition == "reject" and policy.enforce_dmarc_reject:
        if _arc_trusted_pass(v, policy, ("dmarc",)):
            return Decision("accept", "arc_override")
        return Decision("reject", "dmarc_reject", {"domain": v.dmarc_domain or "the sender"})
    if v.dmarc == "fail" and v.dmarc_disposition in ("quarantine", "reject"):
        # quarantine, or reject while enforcement is off: accept and mark.
        return Decision("accept", "quarantined", quarantine=True)
    return Decision("accept", "arc_override" if arc_override else "accepted")


def decide(v: AuthVerdicts, policy: EffectivePolicy) -> Decision:
    """The one inbound authentication decision for a message."""
    strict = _strict(v, policy)
    if strict.accepted or not policy.monitor_only:
        return strict
    return Decision("accept", "monitor_only", quarantine=False, would_be=strict.reason)
