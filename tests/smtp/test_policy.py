"""The inbound policy decision (mta/checks/policy.py): a pure function, table-driven."""

from __future__ import annotations

import pytest

from mta.checks.policy import AuthVerdicts, EffectivePolicy, decide, effective_policy
from mta.config import InboundDomainPolicy, InboundPolicy
from mta.smtp.authcheck import policy_reply

TRUST = EffectivePolicy(trusted_arc_sealers=frozenset({"sealer.test"}))
DEFAULT = EffectivePolicy()
LAX = EffectivePolicy(require_spf_or_dkim=False, enforce_dmarc_reject=False)
ARC_OK = {"arc": "pass", "arc_sealer": "sealer.test", "arc_aar": {"dmarc": "pass"}}

CASES = [
    ("all-pass", {"spf": "pass", "dkim": ("pass",), "dmarc": "pass"}, DEFAULT,
     "accept", "accepted", None),
    ("spf-only", {"spf": "pass"}, DEFAULT, "accept", "accepted", None),
    ("dkim-only", {"spf": "fail", "dkim": ("fail", "pass")}, DEFAULT, "accept", "accepted", None),
    ("neither", {"spf": "softfail", "dkim": ("fail",)}, DEFAULT, "reject", "not_authenticated",
     "5.7.26"),
    ("neither-lax", {"spf": "fail"}, LAX, "accept", "accepted", None),
    ("spf-temperror", {"spf": "temperror"}, DEFAULT, "tempfail", "spf_temperror", "4.7.24"),
    ("dkim-temperror", {"spf": "fail", "dkim": ("temperror",)}, DEFAULT, "tempfail",
     "dns_temperror", "4.7.0"),
    ("dmarc-temperror", {"spf": "pass", "dmarc": "temperror"}, DEFAULT, "tempfail",
     "dns_temperror", "4.7.0"),
    ("dmarc-reject", {"spf": "pass", "dmarc": "fail", "dmarc_disposition": "reject",
                      "dmarc_domain": "x.test"}, DEFAULT, "reject", "dmarc_reject", "5.7.1"),
    ("dmarc-reject-pct-sampled-out", {"spf": "pass", "dmarc": "fail",
                                      "dmarc_disposition": "quarantine"}, DEFAULT,
     "accept", "quarantined", None),
    ("dmarc-reject-not-enforced", {"spf": "pass", "dmarc": "fail",
                                   "dmarc_disposition": "reject"}, LAX,
     "accept", "quarantined", None),
    ("dmarc-none-policy", {"spf": "pass", "dmarc": "fail", "dmarc_disposition": "none"},
     DEFAULT, "accept", "accepted", None),
    ("arc-override-dmarc", {"spf": "pass", "dmarc": "fail", "dmarc_disposition": "reject",
                            **ARC_OK}, TRUST, "accept", "arc_override", None),
    ("arc-untrusted", {"spf": "pass", "dmarc": "fail", "dmarc_disposition": "reject",
                       **ARC_OK}, DEFAULT, "reject", "dmarc_reject", "5.7.1"),
    ("arc-chain-fail", {"spf": "pass", "dmarc": "fail", "dmarc_disposition": "reject",
                        **{**ARC_OK, "arc": "fail"}}, TRUST, "reject", "dmarc_reject", "5.7.1"),
    ("arc-aar-fail", {"spf": "pass", "dmarc": "fail", "dmarc_disposition": "reject",
                      **{**ARC_OK, "arc_aar": {"dmarc": "fail"}}}, TRUST, "reject",
     "dmarc_reject", "5.7.1"),
    ("arc-override-auth", {"spf": "fail", **ARC_OK}, TRUST, "accept", "arc_override", None),
    ("bad-from", {"spf": "pass", "from_problem": "two From"}, DEFAULT, "reject", "bad_from",
     "5.6.0"),
    ("monitor-only", {"spf": "fail"}, EffectivePolicy(monitor_only=True), "accept",
     "monitor_only", None),
]


@pytest.mark.parametrize(("verdicts", "policy", "verdict", "reason", "enhanced"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(verdicts, policy, verdict, reason, enhanced) -> None:
    d = decide(AuthVerdicts(**verdicts), policy)
    assert (d.verdict, d.reason) == (verdict, reason)
    reply = None if d.accepted else policy_reply(d)  # what the listener answers
    assert (reply.enhanced if reply else None) == enhanced
    if d.verdict == "tempfail":
        assert reply.code // 100 == 4  # DNS trouble is never a 5xx


def test_monitor_only_keeps_what_it_would_have_done() -> None:
    d = decide(AuthVerdicts(spf="fail"), EffectivePolicy(monitor_only=True))
    assert d.would_be == "not_authenticated"


def test_effective_policy_per_domain() -> None:
    base = InboundPolicy(trusted_arc_sealers=["Sealer.test"])
    over = [InboundDomainPolicy(domain="Lax.Test", require_spf_or_dkim=False)]
    assert effective_policy(base, over, "lax.test") == EffectivePolicy(
        require_spf_or_dkim=False, trusted_arc_sealers=frozenset({"sealer.test"}))
    assert effective_policy(base, over, "other.test").require_spf_or_dkim is True
