"""AuthResults: the Authentication-Results header, JSON storage, stripping forged fields."""

from __future__ import annotations

import json

from mta.checks.arc import (
    ArcResult,
    ArcSet,
    AuthResultsHeader,
    MethodResult,
    parse_authentication_results,
)
from mta.checks.dkim import DkimSignatureResult
from mta.checks.dmarc import DmarcResult
from mta.checks.results import (
    AuthResults,
    IprevResult,
    authserv_id_of,
    strip_our_auth_results,
)
from mta.checks.spf import SpfResult


def full_results() -> AuthResults:
    return AuthResults(
        spf=SpfResult("pass", "mailfrom", "a.test", "bounce@a.test", reason="ip4:192.0.2.1"),
        dkim=[DkimSignatureResult("pass", "a.test", "s1", "rsa-sha256", "abcd1234",
                                  auid="@a.test", key_bits=2048),
              DkimSignatureResult("fail", "list.test", "k", "ed25519-sha256", "zz/+9xyA",
                                  reason="body hash mismatch")],
        dmarc=DmarcResult("pass", "a.test", policy_domain="a.test", policy="reject",
                          spf_aligned=True, dkim_aligned=["a.test"]),
        arc=ArcResult("pass", 1, [ArcSet(1, "fwd.test", "arc1", "fwd.test", "none")], 0,
                      AuthResultsHeader("fwd.test", [MethodResult(
                          "dmarc", "pass", props={"header.from": "a.test"})])),
    )


def test_header_value() -> None:
    assert full_results().to_header("mx.example.test") == (
        "mx.example.test; spf=pass smtp.mailfrom=a.test; "
        "dkim=pass header.d=a.test header.s=s1 header.a=rsa-sha256 header.b=abcd1234; "
        'dkim=fail reason="body hash mismatch" header.d=list.test header.s=k '
        "header.a=ed25519-sha256 header.b=zz/+9xyA; "
        "dmarc=pass (p=reject dis=none) header.from=a.test; arc=pass")


def test_header_value_parses_back() -> None:
    """What we write is what an RFC 8601 reader (our AAR parser) reads."""
    value = full_results().to_header("mx.example.test", fold=True)
    assert "\r\n\t" in value
    parsed = parse_authentication_results(value)
    assert parsed is not None and parsed.authserv_id == "mx.example.test"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "pass"), ("dkim", "pass"), ("dkim", "fail"), ("dmarc", "pass"), ("arc", "pass")]
    assert parsed.results[2].reason == "body hash mismatch"
    assert parsed.results[1].props["header.b"] == "abcd1234"


def test_header_for_unsigned_failing_mail_and_helo_identity() -> None:
    results = AuthResults(
        spf=SpfResult("softfail", "helo", "mta.sender.test", "postmaster@mta.sender.test"),
        dmarc=DmarcResult("fail", "victim.test", policy_domain="victim.test",
                          policy="quarantine", disposition="quarantine"),
        arc=ArcResult("temperror", reason="key lookup failed: s._domainkey.fwd.test"),
        iprev=IprevResult("pass", "192.0.2.7", "mail.sender.test"),
    )
    assert results.to_header("MX.Example.Test") == (
        "MX.Example.Test; iprev=pass policy.iprev=192.0.2.7 (mail.sender.test); "
        "spf=softfail smtp.helo=mta.sender.test; dkim=none; "
        "dmarc=fail (p=quarantine dis=quarantine) header.from=victim.test; "
        "arc=temperror (key lookup failed: s._domainkey.fwd.test)")
    assert (results.spf_result, results.dkim_result, results.dmarc_result,
            results.arc_result) == ("softfail", "none", "fail", "temperror")
    assert AuthResults().to_header("mx.example.test") == "mx.example.test; none"


def test_dkim_summary() -> None:
    def sigs(*results: str) -> AuthResults:
        return AuthResults(dkim=[DkimSignatureResult(r, "d.test", "s", "rsa-sha256", "x")
                                 for r in results])
    assert sigs("fail", "pass").dkim_result == "pass"
    assert sigs("fail", "temperror").dkim_result == "temperror"
    assert sigs("permerror", "fail").dkim_result == "fail"
    assert sigs("neutral").dkim_result == "neutral"


def test_json_round_trip() -> None:
    original = full_results()
    original.iprev = IprevResult("fail", "2001:db8::1")
    stored = json.loads(json.dumps(original.to_json()))  # what JSONB gives back
    restored = AuthResults.from_json(stored)
    assert restored == original
    assert restored.arc is not None and restored.arc.trusted_pass({"fwd.test"})
    assert AuthResults.from_json(json.dumps(AuthResults().to_json())) == AuthResults()


RAW = (b"Received: from x by y; Tue, 1 Apr 2025 10:00:00 +0000\r\n"
       b"Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n"
       b"Authentication-Results: (forged) MX.EXAMPLE.TEST 1;\r\n"
       b"\tdkim=pass header.d=bank.test\r\n"
       b"authentication-results: mx.example.test.other; spf=pass\r\n"
       b"Authentication-Results: upstream.test; spf=fail smtp.mailfrom=bank.test\r\n"
       b"ARC-Authentication-Results: i=1; mx.example.test; spf=pass\r\n"
       b"From: bank@bank.test\r\n"
       b"Subject: hi\r\n"
       b"\r\n"
       b"Authentication-Results: mx.example.test; body text stays\r\n")


def test_strip_our_auth_results() -> None:
    stripped = strip_our_auth_results(RAW, "mx.example.TEST")
    assert stripped == (
        b"Received: from x by y; Tue, 1 Apr 2025 10:00:00 +0000\r\n"
        b"authentication-results: mx.example.test.other; spf=pass\r\n"
        b"Authentication-Results: upstream.test; spf=fail smtp.mailfrom=bank.test\r\n"
        b"ARC-Authentication-Results: i=1; mx.example.test; spf=pass\r\n"
        b"From: bank@bank.test\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.test; body text stays\r\n")
    # nothing to strip: byte for byte the same, LF-only input included
    assert strip_our_auth_results(RAW, "elsewhere.test") == RAW
    lf = RAW.replace(b"\r\n", b"\n")
    assert strip_our_auth_results(lf, "mx.example.test") == stripped.replace(b"\r\n", b"\n")


def test_authserv_id_of() -> None:
    assert authserv_id_of(" (c) Mx.Example.Test 1; none") == "mx.example.test"
    assert authserv_id_of("mx.example.test;spf=pass") == "mx.example.test"
    assert authserv_id_of("") == ""
