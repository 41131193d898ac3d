"""ARC chain validation against the ValiMail ARC test suite (../shared/conformance/arc).

Every vector's key records are served by a real loopback DNS server (one for the module,
reloaded per scenario). Three vectors carry a blank `cv` (the newest or an older ARC-Seal
says cv=fail); RFC 8617 §5.2 makes those chains `fail`, as the suite's SOURCE.md notes.
"""

from __future__ import annotations

import pytest
import yaml

from mta.checks.arc import parse_authentication_results, verify_arc
from mta.dnscache import DnsResolver
from tests.conftest import CONFORMANCE, conformance_file
from tests.harness import dns_server as dns_harness

SUITE = ("arc", "arc-draft-validation-tests.yml")


def _load_cases() -> list[tuple[str, dict, dict]]:
    path = CONFORMANCE.joinpath(*SUITE)
    if not path.exists():
        return []
    cases = []
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        records = doc.get("txt-records") or {}
        for test_id, case in doc["tests"].items():
            cases.append((test_id, records, case))
    return cases


CASES = _load_cases()


@pytest.fixture(scope="module")
def suite_dns() -> dns_harness.TestDnsServer:
    server = dns_harness.TestDnsServer().start()
    server.loaded = None  # which scenario's records are being served
    yield server
    server.stop()


def _serve(server: dns_harness.TestDnsServer, records: dict) -> None:
    if server.loaded is not records:
        server.clear()
        for name, value in records.items():
            server.add_txt(name, value)
        server.loaded = records


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def test_suite_is_complete() -> None:
    conformance_file(*SUITE)
    assert len(CASES) == 171
    assert len({c[0] for c in CASES}) == 171


@pytest.mark.parametrize(("test_id", "records", "case"), CASES or [
    pytest.param("missing", {}, {}, marks=pytest.mark.skip(
        reason=f"conformance suite not found at {CONFORMANCE.joinpath(*SUITE)}"))],
    ids=[c[0] for c in CASES] or ["missing"])
async def test_arc_validation(suite_dns, test_id: str, records: dict, case: dict) -> None:
    _serve(suite_dns, records)
    resolver = DnsResolver([suite_dns.nameserver], timeout=2.0, cache_size=0)
    expected = str(case.get("cv") or "fail").lower()  # blank cv: RFC 8617 §5.2 says fail
    result = await verify_arc(resolver, _crlf(case["message"]))
    assert result.cv == expected, f"{test_id}: {case.get('description')}: {result.reason}"


def _case(test_id: str) -> tuple[dict, dict]:
    conformance_file(*SUITE)
    for tid, records, case in CASES:
        if tid == test_id:
            return records, case
    raise AssertionError(f"{test_id} not in the suite")


async def test_passing_chain_reports_sealers_oldest_pass_and_aar(suite_dns) -> None:
    records, case = _case("cv_pass_i2_1")
    _serve(suite_dns, records)
    resolver = DnsResolver([suite_dns.nameserver], timeout=2.0, cache_size=0)
    result = await verify_arc(resolver, _crlf(case["message"]))
    assert result.cv == "pass"
    assert result.instances == 2
    assert [s.instance for s in result.sets] == [1, 2]
    assert result.sealing_domains == ["example.org", "example.org"]
    assert [s.cv for s in result.sets] == ["none", "pass"]
    assert result.oldest_pass == 0  # every AMS verified
    assert result.aar is not None and result.aar.authserv_id
    assert result.trusted_pass({"EXAMPLE.org"}, method=result.aar.results[0].method)
    assert not result.trusted_pass({"other.test"}, method=result.aar.results[0].method)


async def test_key_servfail_is_temperror_not_pass(suite_dns) -> None:
    records, case = _case("cv_pass_i1_1")
    _serve(suite_dns, records)
    suite_dns.loaded = None  # the SERVFAIL below must not leak into the next scenario
    for name in records:
        suite_dns.servfail(name)
    resolver = DnsResolver([suite_dns.nameserver], timeout=2.0, cache_size=0)
    result = await verify_arc(resolver, _crlf(case["message"]))
    assert result.cv == "temperror"
    assert "key lookup failed" in result.reason


async def test_unsealed_message_is_none(suite_dns) -> None:
    resolver = DnsResolver([suite_dns.nameserver], timeout=2.0, cache_size=0)
    result = await verify_arc(resolver, b"From: a@b.test\r\nSubject: x\r\n\r\nhello\r\n")
    assert (result.cv, result.instances, result.sets) == ("none", 0, [])


def test_aar_parsing() -> None:
    aar = parse_authentication_results(
        ' lists.example.org (comment; with ; semicolons);\r\n'
        '  spf=pass smtp.mailfrom=jqd@d1.example;\r\n'
        '  dkim=pass (1024-bit key) reason="good sig" header.i=@d1.example;\r\n'
        '  dmarc=FAIL header.from="d1.example"')
    assert aar is not None
    assert aar.authserv_id == "lists.example.org"
    assert [(r.method, r.result) for r in aar.results] == [
        ("spf", "pass"), ("dkim", "pass"), ("dmarc", "fail")]
    assert aar.results[0].props == {"smtp.mailfrom": "jqd@d1.example"}
    assert aar.results[1].reason == "good sig"
    assert aar.results[2].props == {"header.from": "d1.example"}
    assert aar.result_of("DMARC") == "fail" and aar.result_of("arc") is None


async def test_tab_folded_ams_still_validates(suite_dns) -> None:
    """dkimpy alone crashes when a tab precedes the AMS's i= tag; relaxed
    canonicalisation makes tab and space equivalent, so the chain still passes."""
    records, case = _case("cv_pass_i1_1")
    _serve(suite_dns, records)
    raw = _crlf(case["message"])
    folded = raw.replace(b"arc-authentication-results;\r\n    i=1;",
                         b"arc-authentication-results;\r\n\ti=1;")
    assert folded != raw
    resolver = DnsResolver([suite_dns.nameserver], timeout=2.0, cache_size=0)
    assert (await verify_arc(resolver, folded)).cv == "pass"
    # an AMS whose i= dkimpy cannot locate at all is a failed chain, not an exception
    glued = raw.replace(b"arc-authentication-results;\r\n    i=1;",
                        b"arc-authentication-results;i=1;")
    assert (await verify_arc(resolver, glued)).cv == "fail"
