"""DMARC evaluation with policy records served by the real loopback DNS server."""

from __future__ import annotations

import pytest

from mta.checks.dkim import DkimSignatureResult
from mta.checks.dmarc import check_dmarc, parse_dmarc_record
from mta.dnscache import DnsResolver


@pytest.fixture
def resolver(dns_server) -> DnsResolver:
    return DnsResolver([dns_server.nameserver], timeout=2.0, cache_size=0)


def sig(domain: str, result: str = "pass") -> DkimSignatureResult:
    return DkimSignatureResult(result, domain, "s1", "rsa-sha256", "abcd1234")


async def test_aligned_spf_pass(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.a.test", "v=DMARC1; p=reject")
    r = await check_dmarc(resolver, "a.test", ("pass", "a.test"), [])
    assert (r.result, r.policy, r.spf_aligned, r.dkim_aligned) == ("pass", "reject", True, [])
    assert r.disposition == "none" and r.aligned == ["spf"]


async def test_aligned_dkim_pass_when_spf_fails(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.a.test", "v=DMARC1; p=reject")
    r = await check_dmarc(resolver, "a.test", ("fail", "forwarder.test"),
                          [sig("other.test"), sig("a.test")])
    assert (r.result, r.spf_aligned, r.dkim_aligned) == ("pass", False, ["a.test"])


async def test_unaligned_passes_fail_with_reject(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.a.test", "v=DMARC1; p=reject; rua=mailto:d@a.test")
    r = await check_dmarc(resolver, "a.test", ("pass", "b.test"), [sig("b.test")],
                          sample=0.0)
    assert (r.result, r.policy, r.disposition) == ("fail", "reject", "reject")
    # a failing signature from the right domain does not align either
    r = await check_dmarc(resolver, "a.test", ("softfail", "a.test"),
                          [sig("a.test", "fail")], sample=0.0)
    assert (r.result, r.disposition) == ("fail", "reject")


async def test_relaxed_versus_strict_alignment(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.a.test", "v=DMARC1; p=quarantine")
    dns_server.add_txt("_dmarc.strict.test", "v=DMARC1; p=quarantine; adkim=s; aspf=s")
    relaxed = await check_dmarc(resolver, "a.test", ("pass", "bounce.a.test"),
                                [sig("mail.a.test")])
    assert relaxed.result == "pass"
    assert relaxed.spf_aligned and relaxed.dkim_aligned == ["mail.a.test"]
    strict = await check_dmarc(resolver, "strict.test", ("pass", "bounce.strict.test"),
                               [sig("mail.strict.test")], sample=0.0)
    assert (strict.result, strict.adkim, strict.aspf) == ("fail", "s", "s")
    assert strict.disposition == "quarantine"
    exact = await check_dmarc(resolver, "strict.test", ("pass", "STRICT.test"), [])
    assert exact.result == "pass"


async def test_relaxed_alignment_uses_public_suffix_list(dns_server, resolver) -> None:
    # mail.example.co.uk and other.co.uk share only the public suffix co.uk
    dns_server.add_txt("_dmarc.example.co.uk", "v=DMARC1; p=reject")
    r = await check_dmarc(resolver, "mail.example.co.uk", ("pass", "other.co.uk"), [],
                          sample=0.0)
    assert r.result == "fail"
    r = await check_dmarc(resolver, "mail.example.co.uk", ("pass", "bounce.example.co.uk"), [])
    assert r.result == "pass"


async def test_subdomain_policy_from_organizational_domain(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.org.test", "v=DMARC1; p=reject; sp=quarantine")
    sub = await check_dmarc(resolver, "news.org.test", ("fail", "x.test"), [], sample=0.0)
    assert (sub.result, sub.policy_domain, sub.policy, sub.disposition) == (
        "fail", "org.test", "quarantine", "quarantine")
    top = await check_dmarc(resolver, "org.test", ("fail", "x.test"), [], sample=0.0)
    assert (top.policy_domain, top.policy, top.disposition) == ("org.test", "reject", "reject")
    # without sp= the subdomain inherits p=
    dns_server.add_txt("_dmarc.plain.test", "v=DMARC1; p=reject")
    r = await check_dmarc(resolver, "a.b.plain.test", ("fail", "x.test"), [], sample=0.0)
    assert (r.policy_domain, r.policy) == ("plain.test", "reject")
    queried = [name for name, _t in dns_server.queries]
    assert "_dmarc.a.b.plain.test." in queried and "_dmarc.b.plain.test." not in queried


async def test_own_record_wins_over_organizational_domain(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.org.test", "v=DMARC1; p=reject; sp=reject")
    dns_server.add_txt("_dmarc.lax.org.test", "v=DMARC1; p=none")
    r = await check_dmarc(resolver, "lax.org.test", ("fail", "x.test"), [], sample=0.0)
    assert (r.result, r.policy_domain, r.policy, r.disposition) == (
        "fail", "lax.org.test", "none", "none")


async def test_pct_sampling_is_deterministic_with_a_given_value(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.zero.test", "v=DMARC1; p=reject; pct=0")
    dns_server.add_txt("_dmarc.half.test", "v=DMARC1; p=reject; pct=50")
    for sample in (0.0, 50.0, 99.9):
        r = await check_dmarc(resolver, "zero.test", ("fail", "x.test"), [], sample=sample)
        assert (r.result, r.pct, r.disposition) == ("fail", 0, "quarantine")
    low = await check_dmarc(resolver, "half.test", ("fail", "x.test"), [], sample=10.0)
    high = await check_dmarc(resolver, "half.test", ("fail", "x.test"), [], sample=75.0)
    assert (low.disposition, high.disposition) == ("reject", "quarantine")
    dns_server.add_txt("_dmarc.q.test", "v=DMARC1; p=quarantine; pct=0")
    r = await check_dmarc(resolver, "q.test", ("fail", "x.test"), [], sample=0.0)
    assert r.disposition == "none"


async def test_servfail_is_temperror(dns_server, resolver) -> None:
    dns_server.servfail("_dmarc.broken.test")
    r = await check_dmarc(resolver, "broken.test", ("fail", "x.test"), [])
    assert (r.result, r.disposition) == ("temperror", "none")
    # also when the failure is on the organizational-domain step
    dns_server.servfail("_dmarc.org2.test")
    r = await check_dmarc(resolver, "sub.org2.test", ("fail", "x.test"), [])
    assert r.result == "temperror"


async def test_no_record_is_none(dns_server, resolver) -> None:
    r = await check_dmarc(resolver, "sub.nodmarc.test", ("fail", "x.test"), [])
    assert (r.result, r.policy, r.disposition) == ("none", "", "none")
    # a TXT that is not a DMARC record does not count
    dns_server.add_txt("_dmarc.other.test", "v=spf1 -all")
    r = await check_dmarc(resolver, "other.test", ("pass", "other.test"), [])
    assert r.result == "none"


async def test_two_records_mean_no_policy(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.two.test", "v=DMARC1; p=reject")
    dns_server.add_txt("_dmarc.two.test", "v=DMARC1; p=none")
    r = await check_dmarc(resolver, "two.test", ("fail", "x.test"), [])
    assert r.result == "none"
    # several records at the From domain end discovery: no fallback to the org domain
    dns_server.add_txt("_dmarc.sub.two.test", "v=DMARC1; p=none")
    dns_server.add_txt("_dmarc.sub.two.test", "v=DMARC1; p=quarantine")
    r = await check_dmarc(resolver, "sub.two.test", ("fail", "x.test"), [])
    assert (r.result, r.policy_domain) == ("none", "sub.two.test")


async def test_invalid_policy_is_permerror(dns_server, resolver) -> None:
    dns_server.add_txt("_dmarc.bad.test", "v=DMARC1; p=bounce")
    r = await check_dmarc(resolver, "bad.test", ("fail", "x.test"), [])
    assert r.result == "permerror"
    # with a report address the record is read as p=none (RFC 7489 §6.6.3)
    dns_server.add_txt("_dmarc.rua.test", "v=DMARC1; p=bounce; rua=mailto:r@rua.test")
    r = await check_dmarc(resolver, "rua.test", ("fail", "x.test"), [])
    assert (r.result, r.policy, r.disposition) == ("fail", "none", "none")


async def test_temporary_failure_of_an_aligned_identifier_is_temperror(dns_server,
                                                                       resolver) -> None:
    """A DKIM key that got SERVFAIL must not turn into a p=reject 5xx."""
    dns_server.add_txt("_dmarc.a.test", "v=DMARC1; p=reject")
    r = await check_dmarc(resolver, "a.test", ("fail", "x.test"), [sig("a.test", "temperror")])
    assert (r.result, r.disposition) == ("temperror", "none")
    r = await check_dmarc(resolver, "a.test", ("temperror", "a.test"), [])
    assert r.result == "temperror"
    # an unrelated domain's temporary failure changes nothing
    r = await check_dmarc(resolver, "a.test", ("fail", "x.test"), [sig("x.test", "temperror")],
                          sample=0.0)
    assert (r.result, r.disposition) == ("fail", "reject")


def test_record_parsing_defaults() -> None:
    rec = parse_dmarc_record("v=DMARC1;p=Quarantine;pct=250;adkim=x")
    assert (rec.p, rec.sp, rec.pct, rec.adkim, rec.aspf) == ("quarantine", "quarantine",
                                                              100, "r", "r")
    with pytest.raises(ValueError):
        parse_dmarc_record("p=reject; v=DMARC1")
