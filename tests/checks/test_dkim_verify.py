"""DKIM verification against keys served by the real loopback DNS server."""

from __future__ import annotations

import base64
import hashlib
import json

import dkim
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from mta.checks.dkim import verify_dkim
from mta.dnscache import DnsResolver
from tests.conftest import conformance_file

MESSAGE = (b"From: Alice <alice@signer.test>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject: quarterly numbers\r\n"
           b"Date: Tue, 01 Apr 2025 10:00:00 +0000\r\n"
           b"Message-ID: <1@signer.test>\r\n"
           b"\r\n"
           b"Numbers attached.\r\n"
           b"-- \r\nAlice\r\n")


def resolver(dns_server, timeout: float = 2.0) -> DnsResolver:
    return DnsResolver([dns_server.nameserver], timeout=timeout, cache_size=0)


def rfc8463_vector(dns_server) -> dict:
    vector = json.loads(conformance_file("dkim", "rfc8463-a3.json").read_text())[0]
    for name, _rdtype, value in vector["dns"]:
        dns_server.add_txt(name, "".join(value) if isinstance(value, list) else value)
    return vector


def make_key(bits: int = 2048) -> tuple[rsa.RSAPrivateKey, bytes, str]:
    """(key, PKCS#1 PEM private key for dkimpy, TXT key record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()


@pytest.fixture(scope="module")
def rsa_key() -> tuple[rsa.RSAPrivateKey, bytes, str]:
    return make_key()


def sign(message: bytes, pem: bytes, selector: bytes = b"sel1",
         domain: bytes = b"signer.test", **kw) -> bytes:
    header = dkim.sign(message, selector, domain, pem,
                       include_headers=[b"from", b"to", b"subject", b"date"], **kw)
    return header + message


async def test_rfc8463_both_signatures_pass(dns_server) -> None:
    vector = rfc8463_vector(dns_server)
    results = await verify_dkim(resolver(dns_server), vector["message"].encode())
    got = [(r.domain, r.selector, r.algorithm, r.result) for r in results]
    want = [(e["d"], e["s"], e["a"], e["result"]) for e in vector["expected"]["dkim"]]
    assert got == want
    assert results[0].header_b == "/gCrinpc" and results[1].header_b == "F45dVWDf"
    assert results[0].key_bits == 256


async def test_rfc8463_tampered_body_fails(dns_server) -> None:
    vector = rfc8463_vector(dns_server)
    raw = vector["message"].encode().replace(b"We lost the game", b"We won the game")
    results = await verify_dkim(resolver(dns_server), raw)
    assert [r.result for r in results] == ["fail", "fail"]
    assert all(r.reason == "body hash mismatch" for r in results)


async def test_rfc8463_tampered_header_fails(dns_server) -> None:
    vector = rfc8463_vector(dns_server)
    raw = vector["message"].encode().replace(b"Is dinner ready?", b"Is lunch ready?")
    results = await verify_dkim(resolver(dns_server), raw)
    assert [r.result for r in results] == ["fail", "fail"]
    assert all(r.reason == "signature did not verify" for r in results)


async def test_servfail_on_key_is_temperror_not_fail(dns_server) -> None:
    vector = rfc8463_vector(dns_server)
    dns_server.servfail("test._domainkey.football.example.com")
    results = await verify_dkim(resolver(dns_server), vector["message"].encode())
    assert [r.result for r in results] == ["pass", "temperror"]


async def test_key_lookup_timeout_is_temperror(dns_server) -> None:
    vector = rfc8463_vector(dns_server)
    dns_server.silence("brisbane._domainkey.football.example.com")
    results = await verify_dkim(resolver(dns_server, timeout=0.6), vector["message"].encode())
    assert [r.result for r in results] == ["temperror", "pass"]


async def test_dkimpy_signature_passes(dns_server, rsa_key) -> None:
    _key, pem, record = rsa_key
    dns_server.add_txt("sel1._domainkey.signer.test", record)
    raw = sign(MESSAGE, pem)
    results = await verify_dkim(resolver(dns_server), raw)
    assert len(results) == 1
    r = results[0]
    assert (r.result, r.domain, r.selector, r.algorithm, r.key_bits) == (
        "pass", "signer.test", "sel1", "rsa-sha256", 2048)
    b_value = dkim.util.parse_tag_value(raw.split(b"\r\n\r\n")[0].split(b"DKIM-Signature:")[1]
                                        .split(b"\r\nFrom:")[0])[b"b"]
    assert r.header_b == b"".join(b_value.split())[:8].decode()


@pytest.mark.parametrize("canon", [(b"simple", b"simple"), (b"relaxed", b"relaxed"),
                                   (b"relaxed", b"simple")])
async def test_canonicalisations_and_refolded_headers(dns_server, rsa_key, canon) -> None:
    _key, pem, record = rsa_key
    dns_server.add_txt("sel1._domainkey.signer.test", record)
    raw = sign(MESSAGE, pem, canonicalize=canon)
    results = await verify_dkim(resolver(dns_server), raw)
    assert results[0].result == "pass"
    # Whitespace changes survive relaxed header canonicalisation only.
    refolded = raw.replace(b"Subject: quarterly numbers", b"Subject:  quarterly\r\n numbers")
    results = await verify_dkim(resolver(dns_server), refolded)
    assert results[0].result == ("pass" if canon[0] == b"relaxed" else "fail")


async def test_added_second_from_breaks_signature(dns_server, rsa_key) -> None:
    _key, pem, record = rsa_key
    dns_server.add_txt("sel1._domainkey.signer.test", record)
    raw = sign(MESSAGE, pem)
    forged = raw.replace(b"From: Alice", b"From: CEO <ceo@victim.test>\r\nFrom: Alice", 1)
    assert (await verify_dkim(resolver(dns_server), forged))[0].result == "fail"


async def test_missing_and_revoked_keys_are_permerror(dns_server, rsa_key) -> None:
    _key, pem, _record = rsa_key
    raw = sign(MESSAGE, pem)
    results = await verify_dkim(resolver(dns_server), raw)
    assert results[0].result == "permerror"
    assert "no key" in results[0].reason
    dns_server.add_txt("sel1._domainkey.signer.test", "v=DKIM1; k=rsa; p=")
    results = await verify_dkim(resolver(dns_server), raw)
    assert (results[0].result, results[0].reason) == ("permerror", "key revoked")


async def test_rsa_sha1_is_policy(dns_server, rsa_key) -> None:
    _key, pem, record = rsa_key
    dns_server.add_txt("sel1._domainkey.signer.test", record)
    raw = sign(MESSAGE, pem, signature_algorithm=b"rsa-sha1")
    results = await verify_dkim(resolver(dns_server), raw)
    assert (results[0].result, results[0].algorithm) == ("policy", "rsa-sha1")


async def test_short_rsa_key_is_policy(dns_server, rsa_key) -> None:
    # Only the key size matters here (OpenSSL will not even make a 768-bit key), so the
    # record holds a 768-bit modulus that no signature will be checked against.
    small = rsa.RSAPublicNumbers(65537, (1 << 767) | (1 << 5) | 1).public_key()
    spki = small.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    dns_server.add_txt("sel1._domainkey.signer.test",
                       "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode())
    results = await verify_dkim(resolver(dns_server), sign(MESSAGE, rsa_key[1]))
    assert results[0].result == "policy"
    assert "768 bits is too small" in results[0].reason


async def test_malformed_signature_is_neutral_and_others_still_checked(dns_server,
                                                                        rsa_key) -> None:
    _key, pem, record = rsa_key
    dns_server.add_txt("sel1._domainkey.signer.test", record)
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=signer.test; s=sel1\r\n" + sign(MESSAGE, pem)
    results = await verify_dkim(resolver(dns_server), raw)
    assert [r.result for r in results] == ["neutral", "pass"]
    assert results[0].reason.startswith("missing")


def sign_by_hand(message: bytes, key, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A DKIM-Signature built from chosen tags (dkimpy offers no x= and no Ed25519
    without PyNaCl), signed through `cryptography`."""
    headers, body = dkim.rfc822_parse(message)
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    bh = base64.b64encode(hashlib.sha256(policy.canonicalize_body(body)).digest())
    algorithm = b"ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else b"rsa-sha256"
    fields = [(b"v", b"1"), (b"a", algorithm), (b"c", b"relaxed/relaxed"),
              (b"d", b"signer.test"), (b"s", b"sel1"), *tags,
              (b"h", b"from:to:subject"), (b"bh", bh), (b"b", b"")]
    value = b" " + b"; ".join(b"=".join(f) for f in fields)
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(headers),
                      [b"from", b"to", b"subject"], (b"DKIM-Signature", value), None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(hasher.digest())
    else:
        signature = key.sign(hasher.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return b"DKIM-Signature:" + value + base64.b64encode(signature) + b"\r\n" + message


async def test_expiry_judged_at_the_given_time(dns_server, rsa_key) -> None:
    dns_server.add_txt("sel1._domainkey.signer.test", rsa_key[2])
    raw = sign_by_hand(MESSAGE, rsa_key[0], [(b"t", b"1700000000"), (b"x", b"1700086400")])
    res = resolver(dns_server)
    assert (await verify_dkim(res, raw, now=1700000100))[0].result == "pass"
    late = (await verify_dkim(res, raw, now=1700086401))[0]
    assert (late.result, late.reason) == ("fail", "signature expired")


async def test_fresh_ed25519_signature_passes(dns_server) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    raw_pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    dns_server.add_txt("sel1._domainkey.signer.test",
                       "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw_pub).decode())
    raw = sign_by_hand(MESSAGE, key, [])
    results = await verify_dkim(resolver(dns_server), raw)
    assert [(r.result, r.algorithm) for r in results] == [("pass", "ed25519-sha256")]
    # An RSA signature cannot borrow an Ed25519 key record.
    rsa_signed = sign_by_hand(MESSAGE, rsa.generate_private_key(65537, 2048), [])
    results = await verify_dkim(resolver(dns_server), rsa_signed)
    assert results[0].result == "permerror" and "does not match" in results[0].reason


async def test_unsigned_message_has_no_results(dns_server) -> None:
    assert await verify_dkim(resolver(dns_server), MESSAGE) == []


async def test_agrees_with_dkimpy_verifier(dns_server, rsa_key) -> None:
    """An independent check of our crypto path: dkimpy's own verifier, fed the same key
    record from the same DNS server, agrees on pass and on fail."""
    _key, pem, record = rsa_key
    dns_server.add_txt("sel1._domainkey.signer.test", record)
    raw = sign(MESSAGE, pem)
    res = resolver(dns_server)
    txt = (await res.txt("sel1._domainkey.signer.test"))[0]

    def dnsfunc(name: bytes, timeout: float = 5) -> str:
        return txt

    for message in (raw, raw.replace(b"Numbers attached.", b"Numbers changed.")):
        ours = (await verify_dkim(res, message))[0].result == "pass"
        assert ours == dkim.verify(message, dnsfunc=dnsfunc)
