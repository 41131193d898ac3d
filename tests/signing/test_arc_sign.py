"""ARC sealing: the ValiMail signing suite reproduced byte for byte, and sets we
seal validated by dkimpy and Perl Mail::DKIM against keys served over DNS."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import dkim
import pytest
import yaml

from mta.signing.arc import ArcSealError, seal_arc
from mta.signing.dkim import normalize_line_endings, parse_message
from mta.signing.keys import SigningKey, generate_signing_key, load_private_key
from tests.conftest import CONFORMANCE, conformance_file
from tests.signing.test_dkim_sign import dns_txt_func, mail_dkim_verify

if TYPE_CHECKING:
    from tests.harness.dns_server import TestDnsServer

SUITE = ("arc", "arc-draft-sign-tests.yml")


def _suite_cases() -> list[tuple[int, str]]:
    path = CONFORMANCE.joinpath(*SUITE)
    if not path.exists():  # the test itself skips through conformance_file
        return [(-1, "suite-missing")]
    docs = list(yaml.safe_load_all(path.read_text()))
    return [(i, name) for i, doc in enumerate(docs) for name in doc["tests"]]


def _srv_results(headers: list[tuple[bytes, bytes]], srv_id: str) -> str:
    """Our Authentication-Results for `srv_id`, merged as a receiver records them."""
    results = []
    for name, value in headers:
        if name.lower() == b"authentication-results":
            authserv, _, rest = value.decode().partition(";")
            if authserv.strip() == srv_id:
                results.append(" ".join(rest.split()).strip(" ;"))
    return "; ".join(results)


def _flat(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize(("doc_index", "name"), _suite_cases())
def test_sign_suite(doc_index, name, dns_server):
    docs = list(yaml.safe_load_all(conformance_file(*SUITE).read_text()))
    doc, case = docs[doc_index], docs[doc_index]["tests"][name]
    key = SigningKey(doc["domain"], doc["sel"], load_private_key(doc["privatekey"]))
    for record, text in doc["txt-records"].items():
        dns_server.add_txt(record, "".join(text.split()))  # YAML lines = TXT strings
    message = normalize_line_endings(case["message"].encode())
    headers, _ = parse_message(message)
    results = _srv_results(headers, case["srv-id"])
    found = re.search(r"\barc=(\w+)", results)
    cv = found.group(1) if found else "none"

    arc_set = seal_arc(message, key, case["srv-id"], results, cv, timestamp=case["t"],
                       headers_to_sign=case["sig-headers"].split(":"), oversign=())

    expected = "".join(f"{field}: {case[k]}" for field, k in (
        ("ARC-Seal", "AS"), ("ARC-Message-Signature", "AMS"),
        ("ARC-Authentication-Results", "AAR")) if case[k].strip())
    # Same fields, same tags in the same order, same signatures; only folding differs.
    assert _flat(arc_set.decode()) == _flat(expected)
    if arc_set:
        # And a validator reading the keys over DNS accepts what we added.
        cv_out, results_out, reason = dkim.arc_verify(arc_set + message,
                                                      dnsfunc=dns_txt_func(dns_server))
        newest = results_out[0]
        assert newest["ams-valid"], reason
        if cv == "fail":
            # A cv=fail seal covers only its own set (as the suite and the reference
            # signers have it); validators stop at cv=fail without checking it, and
            # dkimpy says so by giving no chain result.
            assert cv_out is None, reason
        else:
            assert newest["as-valid"] and cv_out == b"pass", reason


# -- round trips with our own keys -----------------------------------------------------------

MESSAGE = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=orig.test; s=x; h=from; bh=AA==; b=AA==\r\n"
    b"From: Alice <alice@orig.test>\r\n"
    b"To: list@fwd.test\r\n"
    b"Subject: Meeting notes\r\n"
    b"Date: Tue, 02 Jan 2024 09:00:00 +0000\r\n"
    b"Message-ID: <m1@orig.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"See attached.\r\n"
)
RESULTS = ("spf=pass smtp.mailfrom=orig.test; dkim=pass header.d=orig.test header.s=x; "
           "dmarc=pass header.from=orig.test")


@pytest.fixture(scope="module")
def hop1() -> SigningKey:
    return generate_signing_key("fwd.test", "arc1")


@pytest.fixture(scope="module")
def hop2() -> SigningKey:
    return generate_signing_key("relay.test", "arc2")


@pytest.fixture
def dns(dns_server: TestDnsServer, hop1: SigningKey, hop2: SigningKey) -> TestDnsServer:
    for key in (hop1, hop2):
        dns_server.add_txt(key.dns_name, key.dns_txt_value())
    return dns_server


def _instances(arc_set: bytes) -> set[str]:
    return set(re.findall(r"(?:^|[\s;])i=(\d+);", arc_set.decode()))


def test_seal_then_verify_twice(dns, hop1, hop2, tmp_path):
    first = seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "none") + MESSAGE
    cv, results, reason = dkim.arc_verify(first, dnsfunc=dns_txt_func(dns))
    assert cv == b"pass", reason
    assert results[0]["as-domain"] == b"fwd.test"

    second_set = seal_arc(first, hop2, "mx.relay.test", "arc=pass; spf=fail", "pass")
    assert _instances(second_set) == {"2"}
    assert b"cv=pass" in second_set
    second = second_set + first
    cv, results, reason = dkim.arc_verify(second, dnsfunc=dns_txt_func(dns))
    assert cv == b"pass", reason
    assert [r["instance"] for r in results] == [2, 1]
    assert "result pass" in mail_dkim_verify(second, dns, tmp_path, mode="arc")


def test_aar_records_results_and_chain_state(hop1):
    arc_set = seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "none", timestamp=1704186000)
    headers, _ = parse_message(arc_set + b"\r\n")
    fields = dict(headers)
    aar = b" ".join(fields[b"ARC-Authentication-Results"].split()).decode()
    assert aar == f"i=1; mx.fwd.test; arc=none; {RESULTS}"
    ams = fields[b"ARC-Message-Signature"].decode()
    assert "dkim-signature" in ams and "arc-seal" not in ams.lower().split("h=")[1]
    assert "t=1704186000" in ams and "t=1704186000" in fields[b"ARC-Seal"].decode()
    assert [n for n, _ in headers] == [b"ARC-Seal", b"ARC-Message-Signature",
                                       b"ARC-Authentication-Results"]
    # Folded at 78 columns except the b= values, kept whole (see mta.signing.arc).
    assert all(len(line) <= 78 for line in arc_set.split(b"\r\n") if b"b=" not in line)


def test_mail_dkim_validates_our_seal(dns, hop1, tmp_path):
    sealed = seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "none") + MESSAGE
    assert "result pass" in mail_dkim_verify(sealed, dns, tmp_path, mode="arc")
    tampered = sealed.replace(b"See attached.", b"See nothing.")
    assert "result fail" in mail_dkim_verify(tampered, dns, tmp_path, mode="arc")


def test_tampering_breaks_the_chain(dns, hop1):
    sealed = seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "none") + MESSAGE
    cv, _, _ = dkim.arc_verify(sealed.replace(b"Meeting notes", b"Invoice"),
                               dnsfunc=dns_txt_func(dns))
    assert cv == b"fail"


def test_failed_chain_is_sealed_once_then_left(dns, hop1, hop2):
    first = seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "none") + MESSAGE
    broken = first.replace(b"See attached.", b"Changed.")
    fail_set = seal_arc(broken, hop2, "mx.relay.test", "arc=fail", "fail")
    assert _instances(fail_set) == {"2"} and b"cv=fail" in fail_set
    cv, results, _ = dkim.arc_verify(fail_set + broken, dnsfunc=dns_txt_func(dns))
    assert results[0]["ams-valid"] and results[0]["cv"] == b"fail"
    assert cv is None  # dkimpy's way of saying "the chain was declared failed"
    assert seal_arc(fail_set + broken, hop1, "mx.fwd.test", "arc=fail", "fail") == b""


def test_inconsistent_cv_is_refused(hop1):
    with pytest.raises(ArcSealError):
        seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "pass")
    sealed = seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "none") + MESSAGE
    with pytest.raises(ArcSealError):
        seal_arc(sealed, hop1, "mx.fwd.test", RESULTS, "none")
    with pytest.raises(ArcSealError):
        seal_arc(MESSAGE, hop1, "bad id", RESULTS, "none")
    with pytest.raises(ArcSealError):
        seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "maybe")  # type: ignore[arg-type]


def test_ed25519_is_not_used_for_arc():
    # RFC 8617 defines ARC for rsa-sha256 only; validators would reject anything else.
    with pytest.raises(ArcSealError):
        seal_arc(MESSAGE, generate_signing_key("fwd.test", "e", "ed25519-sha256"),
                 "mx.fwd.test", RESULTS, "none")


def test_unreadable_arc_fields(hop1, hop2):
    sealed = seal_arc(MESSAGE, hop1, "mx.fwd.test", RESULTS, "none") + MESSAGE
    junk = b"ARC-Seal: cv=pass; no instance here\r\n" + sealed
    with pytest.raises(ArcSealError):  # claiming pass over a chain with junk in it
        seal_arc(junk, hop2, "mx.relay.test", "arc=pass", "pass")
    fail_set = seal_arc(junk, hop2, "mx.relay.test", "arc=fail", "fail")
    assert _instances(fail_set) == {"2"} and b"cv=fail" in fail_set
