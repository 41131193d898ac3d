"""authheaders as an independent oracle for our ARC and DMARC evaluators
(mta/checks/arc.py, mta/checks/dmarc.py).

At run time our own evaluators are used: authheaders is measurably wrong where it
matters to an MX (../shared/notes/library-pitfalls.md: a SERVFAIL on `_dmarc.` reads as
"no record", so p=reject mail slips through during a DNS fault). Here it judges ours:
for each case both evaluate the same input against the same records, served by the same
loopback DNS server (authheaders through its own default resolver, pointed at that
server, nothing of it replaced), and must agree. Known differences are listed with their
RFC reason and asserted as such, so a change on either side is noticed.

Inputs: every vector of the ARC validation suite (../shared/conformance/arc), and the
DMARC cases below. As in tests/checks/test_spf_oracle.py for pyspf.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager

import authheaders
import dns.resolver
import pytest
from authres import DKIMAuthenticationResult, SPFAuthenticationResult

from mta.checks.arc import verify_arc
from mta.checks.dkim import DkimSignatureResult
from mta.checks.dmarc import check_dmarc
from mta.dnscache import DnsResolver
from tests.checks.test_arc_conformance import CASES as ARC_CASES
from tests.checks.test_arc_conformance import SUITE, _crlf
from tests.conftest import CONFORMANCE
from tests.harness import dns_server as harness_dns

_ARC_CV_FAIL = ("RFC 8617 §5.2: a chain in which an ARC-Seal says cv=fail (the newest, "
                "step 2, or i=1, which must say none) is fail (the suite leaves cv blank "
                "for these three); dkimpy returns no status and authheaders reports none")
_ARC_CRASH = ("RFC 8617 §4.1.2/§4.1.3 (tags of RFC 6376 §3.5): an empty or invalid d= or "
              "s= makes the signature invalid, the chain fail (the suite says fail); "
              "dkimpy raises, and authheaders' handler for that names CV_Fail, which it "
              "never imported: NameError")

# ARC vector id -> (ours, authheaders', why)
ARC_KNOWN_DIFFERENCES: dict[str, tuple[str, str, str]] = {
    "cv_fail_i1_as_cv_fail": ("fail", "none", _ARC_CV_FAIL),
    "cv_fail_i2_as2_fail": ("fail", "none", _ARC_CV_FAIL),
    "cv_fail_i2_as1_fail": ("fail", "none", _ARC_CV_FAIL),
    **{v: ("fail", "raises NameError", _ARC_CRASH) for v in (
        "ams_fields_d_empty", "ams_fields_d_invalid", "ams_fields_s_empty",
        "as_fields_d_empty", "as_fields_s_empty")},
}

# (name, TXT records {name: [values]} and "SERVFAIL:name" entries, From domain,
#  SPF (result, domain checked), DKIM (result, d=) or None)
DMARC_CASES = [
    ("no record", {}, "a.example", ("pass", "a.example"), None),
    ("spf aligned exactly", {"_dmarc.a.example": ["v=DMARC1; p=reject"]}, "a.example",
     ("pass", "a.example"), None),
    ("spf aligned relaxed", {"_dmarc.a.example": ["v=DMARC1; p=reject"]}, "a.example",
     ("pass", "bounce.a.example"), None),
    ("spf strict not aligned", {"_dmarc.a.example": ["v=DMARC1; p=reject; aspf=s"]},
     "a.example", ("pass", "bounce.a.example"), None),
    ("spf pass other domain", {"_dmarc.a.example": ["v=DMARC1; p=reject"]}, "a.example",
     ("pass", "b.example"), None),
    ("spf pass other domain (.com)", {"_dmarc.acorp.com": ["v=DMARC1; p=reject"]},
     "acorp.com", ("pass", "bcorp.com"), None),
    ("spf fail", {"_dmarc.a.example": ["v=DMARC1; p=quarantine"]}, "a.example",
     ("fail", "a.example"), None),
    ("dkim aligned", {"_dmarc.a.example": ["v=DMARC1; p=reject"]}, "a.example",
     ("fail", "a.example"), ("pass", "a.example")),
    ("dkim aligned relaxed", {"_dmarc.a.example": ["v=DMARC1; p=reject"]}, "a.example",
     ("none", ""), ("pass", "mail.a.example")),
    ("dkim strict not aligned", {"_dmarc.a.example": ["v=DMARC1; p=reject; adkim=s"]},
     "a.example", ("none", ""), ("pass", "mail.a.example")),
    ("dkim fail", {"_dmarc.a.example": ["v=DMARC1; p=reject"]}, "a.example",
     ("none", ""), ("fail", "a.example")),
    ("dkim pass unaligned", {"_dmarc.a.example": ["v=DMARC1; p=reject"]}, "a.example",
     ("none", ""), ("pass", "b.example")),
    ("dkim pass unaligned (.com)", {"_dmarc.acorp.com": ["v=DMARC1; p=reject"]},
     "acorp.com", ("none", ""), ("pass", "bcorp.com")),
    ("org domain record, sp", {"_dmarc.a.example": ["v=DMARC1; p=none; sp=reject"]},
     "shop.a.example", ("fail", "shop.a.example"), None),
    ("org domain record, pass", {"_dmarc.a.example": ["v=DMARC1; p=reject"]},
     "shop.a.example", ("pass", "a.example"), None),
    ("org domain record, sp (.com)", {"_dmarc.acorp.com": ["v=DMARC1; p=none; sp=reject"]},
     "shop.acorp.com", ("fail", "shop.acorp.com"), None),
    ("org domain record, pass (.com)", {"_dmarc.acorp.com": ["v=DMARC1; p=reject"]},
     "shop.acorp.com", ("pass", "acorp.com"), None),
    ("public suffix: co.uk", {"_dmarc.a.example.co.uk": ["v=DMARC1; p=reject"]},
     "mail.a.example.co.uk", ("pass", "bounce.a.example.co.uk"), None),
    ("public suffix: other co.uk domain", {"_dmarc.a.example.co.uk": ["v=DMARC1; p=reject"]},
     "a.example.co.uk", ("pass", "b.example.co.uk"), None),
    ("two records: none", {"_dmarc.a.example": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
     "a.example", ("fail", "a.example"), None),
    ("v= not first: none", {"_dmarc.a.example": ["p=reject; v=DMARC1"]}, "a.example",
     ("fail", "a.example"), None),
    ("other TXT beside the record", {"_dmarc.a.example": ["hello", "v=DMARC1; p=reject"]},
     "a.example", ("fail", "a.example"), None),
    ("spf aligned, hyphenated domain", {"_dmarc.a-corp.com": ["v=DMARC1; p=reject"]},
     "a-corp.com", ("pass", "a-corp.com"), None),
    ("SERVFAIL at _dmarc", {"SERVFAIL:_dmarc.a.example": []}, "a.example",
     ("fail", "a.example"), None),
    ("SERVFAIL at the org domain", {"SERVFAIL:_dmarc.a.example": []}, "shop.a.example",
     ("fail", "shop.a.example"), None),
    ("aligned SPF temperror", {"_dmarc.a.example": ["v=DMARC1; p=reject"]}, "a.example",
     ("temperror", "a.example"), None),
]

_TEMPERROR_DNS = ("RFC 7489 §6.6.3 and RFC 8601 §2.7.1: a DNS failure while looking for "
                  "the policy is a temporary error (temperror: the MX answers 4xx); "
                  "authheaders reads SERVFAIL as no record (none), letting p=reject mail "
                  "through during a DNS fault")
_UNLISTED_TLD = ("RFC 7489 §3.2 with the Public Suffix List's default rule `*`: a TLD the "
                 "list does not name (.example, RFC 2606) is itself a public suffix, so "
                 "a.example is an organizational domain; authheaders' publicsuffix2 "
                 "lookup makes `example` the organizational domain, so every .example "
                 "domain aligns with every other and the policy is sought at "
                 "_dmarc.example (the .com twins of these cases agree)")
# DMARC case name -> (ours, authheaders', why)
DMARC_KNOWN_DIFFERENCES: dict[str, tuple[str, str, str]] = {
    "spf pass other domain": ("fail", "pass", _UNLISTED_TLD),
    "dkim pass unaligned": ("fail", "pass", _UNLISTED_TLD),
    "org domain record, sp": ("fail", "none", _UNLISTED_TLD),
    "org domain record, pass": ("pass", "none", _UNLISTED_TLD),
    "spf aligned, hyphenated domain": (
        "pass", "fail",
        "RFC 1035 §2.3.1, RFC 5321 §4.1.2: domain labels are letters, digits and hyphens; "
        "authheaders reads the SPF domain with [a-z0-9.]+, so a-corp.com becomes `a` "
        "and aligned SPF no longer aligns"),
    "SERVFAIL at _dmarc": ("temperror", "none", _TEMPERROR_DNS),
    "SERVFAIL at the org domain": ("temperror", "none", _TEMPERROR_DNS),
    "aligned SPF temperror": (
        "temperror", "fail",
        "RFC 8601 §2.7.1: the aligned identifier's result is temperror, so whether it "
        "passes is unknown and DMARC cannot say fail (a 5xx under p=reject for a "
        "transient fault); authheaders counts only pass"),
}


@pytest.fixture(scope="module")
def server():
    s = harness_dns.TestDnsServer().start()
    s.loaded = None
    yield s
    s.stop()


@contextmanager
def library_resolver(server):
    """dnspython's default resolver (which authheaders and dkimpy use) pointed at the
    test DNS server: configuration of the libraries' own resolver, nothing replaced."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.nameserver["address"]]
    resolver.port = server.nameserver["port"]
    resolver.lifetime = 3
    saved, dns.resolver.default_resolver = dns.resolver.default_resolver, resolver
    try:
        yield
    finally:
        dns.resolver.default_resolver = saved


def _serve(server, records: dict) -> None:
    if server.loaded is records:
        return
    server.clear()
    for name, values in records.items():
        if name.startswith("SERVFAIL:"):
            server.servfail(name.partition(":")[2])
        for value in values if isinstance(values, list) else [values]:
            server.add_txt(name, value)
    server.loaded = records


def _ours_resolver(server) -> DnsResolver:
    return DnsResolver([server.nameserver], timeout=3, cache_size=0)


# -- ARC ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("test_id", "records", "case"), ARC_CASES or [
    pytest.param("missing", {}, {}, marks=pytest.mark.skip(
        reason=f"conformance suite not found at {CONFORMANCE.joinpath(*SUITE)}"))],
    ids=[c[0] for c in ARC_CASES] or ["missing"])
def test_our_arc_agrees_with_authheaders(server, test_id, records, case):
    _serve(server, records)
    message = _crlf(case["message"])
    ours = asyncio.run(verify_arc(_ours_resolver(server), message)).cv
    with library_resolver(server):
        try:
            theirs = authheaders.check_arc(message).result
        except Exception as exc:  # noqa: BLE001 - a crash is a verdict to compare too
            theirs = f"raises {type(exc).__name__}"
    if test_id in ARC_KNOWN_DIFFERENCES:
        expected_ours, expected_theirs, _why = ARC_KNOWN_DIFFERENCES[test_id]
        assert (ours, theirs) == (expected_ours, expected_theirs)
    else:
        assert ours == theirs, f"{test_id}: ours {ours}, authheaders {theirs}"


# -- DMARC ----------------------------------------------------------------------------------


def _theirs_dmarc(server, from_domain, spf, dkim_sig) -> str:
    spf_result = SPFAuthenticationResult(result=spf[0], smtp_mailfrom=f"x@{spf[1]}")
    dkim_result = (DKIMAuthenticationResult(result=dkim_sig[0], header_d=dkim_sig[1])
                   if dkim_sig else None)
    with library_resolver(server):
        result, _comment, _domain, _policy = authheaders.dmarc_per_from(
            from_domain, spf_result, dkim_result)
    return result


@pytest.mark.parametrize("name, records, from_domain, spf, dkim_sig", DMARC_CASES,
                         ids=[c[0] for c in DMARC_CASES])
def test_our_dmarc_agrees_with_authheaders(server, name, records, from_domain, spf,
                                           dkim_sig):
    _serve(server, records)
    sigs = [DkimSignatureResult(dkim_sig[0], dkim_sig[1], "s", "rsa-sha256", "")] \
        if dkim_sig else []
    ours = asyncio.run(check_dmarc(_ours_resolver(server), from_domain, spf, sigs,
                                   sample=0)).result
    theirs = _theirs_dmarc(server, from_domain, spf, dkim_sig)
    if name in DMARC_KNOWN_DIFFERENCES:
        expected_ours, expected_theirs, _why = DMARC_KNOWN_DIFFERENCES[name]
        assert (ours, theirs) == (expected_ours, expected_theirs)
    else:
        assert ours == theirs, f"{name}: ours {ours}, authheaders {theirs}"


def test_every_known_difference_is_a_case():
    assert set(DMARC_KNOWN_DIFFERENCES) <= {c[0] for c in DMARC_CASES}
    if ARC_CASES:
        assert set(ARC_KNOWN_DIFFERENCES) <= {c[0] for c in ARC_CASES}
