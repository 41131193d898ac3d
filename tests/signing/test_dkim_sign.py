"""DKIM signatures made through OpenSSL, checked by two independent verifiers
(dkimpy, Perl Mail::DKIM) that fetch the keys from the real test DNS server."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from mta.signing.dkim import (
    DkimSignError,
    body_hash,
    normalize_line_endings,
    parse_message,
    pick_signed_fields,
    sign_dkim,
    sign_header_fields,
    sign_message,
)
from mta.signing.keys import SigningKey, generate_signing_key, load_private_key
from tests.conftest import conformance_file

if TYPE_CHECKING:  # a plain import would make pytest try to collect the Test* class
    from tests.harness.dns_server import TestDnsServer

# -- verifiers shared with test_arc_sign ------------------------------------------------------


def dns_txt_func(server: TestDnsServer):
    """A dkimpy `dnsfunc` that really queries the test DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.address]
    resolver.port = server.port

    def txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        qname = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(qname, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    return txt


PERL_VERIFIER = r"""
use strict; use warnings;
use Net::DNS::Resolver; use Mail::DKIM; use Mail::DKIM::DNS;
use Mail::DKIM::Verifier; use Mail::DKIM::ARC::Verifier;
my ($mode, $port) = @ARGV;
my $res = Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port,
    recurse => 1, retry => 1, udp_timeout => 5, tcp_timeout => 5);
Mail::DKIM::DNS::resolver($res);
my $v = $mode eq 'arc' ? Mail::DKIM::ARC::Verifier->new() : Mail::DKIM::Verifier->new();
binmode STDIN; local $/; my $msg = <STDIN>;
$v->PRINT($msg); $v->CLOSE;
if ($mode ne 'arc') {
    foreach my $sig ($v->signatures) {
        printf "sig %s %s %s %s\n", $sig->result, $sig->domain, $sig->selector,
            ($sig->result_detail // '');
    }
}
printf "result %s %s\n", $v->result, ($v->result_detail // '');
"""


def mail_dkim_verify(message: bytes, server: TestDnsServer, tmp_path: Path,
                     mode: str = "dkim") -> str:
    """Run Perl Mail::DKIM (Debian libmail-dkim-perl) on `message`; its stdout."""
    if shutil.which("perl") is None or subprocess.run(
            ["perl", "-MMail::DKIM::ARC::Verifier", "-e1"], capture_output=True).returncode:
        pytest.skip("Perl Mail::DKIM not installed (apt-get install libmail-dkim-perl)")
    script = tmp_path / "verify.pl"
    script.write_text(PERL_VERIFIER)
    done = subprocess.run(["perl", str(script), mode, str(server.port)], input=message,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


# -- fixtures ---------------------------------------------------------------------------------

MESSAGE = (
    b"From: Alice Example <alice@sender.test>\r\n"
    b"To: bob@rcpt.test\r\n"
    b"Subject: Your receipt\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <r1@sender.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <https://sender.test/u/1>, <mailto:u@sender.test>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"CFBL-Address: fbl@sender.test; report=arf\r\n"
    b"X-Trace: not signed\r\n"
    b"\r\n"
    b"Thanks for your order.\r\n"
    b"  Total:   12.00  \r\n"
    b"\r\n\r\n"
)


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return generate_signing_key("sender.test", "s2024", "rsa-sha256")


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return generate_signing_key("sender.test", "e2024", "ed25519-sha256")


@pytest.fixture
def published(dns_server: TestDnsServer, rsa_key: SigningKey, ed_key: SigningKey):
    for key in (rsa_key, ed_key):
        dns_server.add_txt(key.dns_name, key.dns_txt_value())
    return dns_server


def _tags(header: bytes) -> dict[str, str]:
    value = header.split(b":", 1)[1].decode()
    return {k.strip(): re.sub(r"\s+", "", v) for k, v in
            (t.split("=", 1) for t in value.split(";") if t.strip())}


# -- dkimpy over DNS ---------------------------------------------------------------------------


def test_rsa_signature_verifies_with_dkimpy(published, rsa_key):
    header = sign_dkim(MESSAGE, rsa_key, timestamp=1700000000)
    tags = _tags(header)
    assert tags["a"] == "rsa-sha256" and tags["c"] == "relaxed/relaxed"
    assert tags["d"] == "sender.test" and tags["s"] == "s2024" and tags["t"] == "1700000000"
    h = tags["h"].split(":")
    assert h.count("from") == 2  # over-signed
    assert "list-unsubscribe" in h and "list-unsubscribe-post" in h
    assert "x-trace" not in h and "cc" not in h  # absent fields are not listed
    assert dkim.verify(header + MESSAGE, dnsfunc=dns_txt_func(published))


def test_ed25519_signature_verifies_with_dkimpy(published, ed_key):
    header = sign_dkim(MESSAGE, ed_key)
    assert _tags(header)["a"] == "ed25519-sha256"
    assert dkim.verify(header + MESSAGE, dnsfunc=dns_txt_func(published))


def test_dual_signature_both_verify(published, rsa_key, ed_key):
    signed = sign_message(MESSAGE, [rsa_key, ed_key])
    d = dkim.DKIM(signed)
    dnsfunc = dns_txt_func(published)
    assert d.verify(idx=0, dnsfunc=dnsfunc) and d.verify(idx=1, dnsfunc=dnsfunc)
    assert [q for q, _ in published.queries if "_domainkey" in q]  # keys came over DNS


def test_tampering_is_detected(published, rsa_key):
    header = sign_dkim(MESSAGE, rsa_key)
    dnsfunc = dns_txt_func(published)
    assert not dkim.verify(header + MESSAGE.replace(b"12.00", b"99.00"), dnsfunc=dnsfunc)
    # An added From above the signed one is caught by over-signing.
    assert not dkim.verify(header + b"From: mallory@evil.test\r\n" + MESSAGE, dnsfunc=dnsfunc)
    # So is a List-Unsubscribe-Post added to turn a mailto unsubscribe into one-click.
    no_post = MESSAGE.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b"")
    header = sign_dkim(no_post, rsa_key, headers_to_sign=["from", "subject"])
    assert dkim.verify(header + no_post, dnsfunc=dnsfunc)
    assert {"list-unsubscribe", "cfbl-address"} <= set(_tags(header)["h"].split(":"))
    forged = header + b"List-Unsubscribe: <https://evil.test/>\r\n" + no_post
    assert not dkim.verify(forged, dnsfunc=dnsfunc)


def test_bare_line_ends_are_normalised(published, rsa_key):
    raw = MESSAGE.replace(b"\r\n", b"\n").replace(b"order.", b"order.\rsecond\rthird")
    signed = sign_message(raw, [rsa_key])
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", signed) is None
    assert signed.endswith(normalize_line_endings(raw))
    assert dkim.verify(signed, dnsfunc=dns_txt_func(published))


def test_header_is_folded_and_needs_from(rsa_key, ed_key):
    for key in (rsa_key, ed_key):
        header = sign_dkim(MESSAGE, key)
        assert header.startswith(b"DKIM-Signature: ") and header.endswith(b"\r\n")
        assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    with pytest.raises(DkimSignError):
        sign_dkim(b"To: x@y.test\r\nSubject: no from\r\n\r\nbody\r\n", rsa_key)
    with pytest.raises(DkimSignError):
        sign_dkim(MESSAGE, rsa_key, identity="someone@elsewhere.test")


def test_identity_tag(published, rsa_key):
    header = sign_dkim(MESSAGE, rsa_key, identity="news@mail.sender.test")
    assert _tags(header)["i"] == "news@mail.sender.test"
    assert dkim.verify(header + MESSAGE, dnsfunc=dns_txt_func(published))


# -- Perl Mail::DKIM over DNS (RSA only: Debian 12's Mail::DKIM has no Ed25519) ---------------


def test_rsa_signature_verifies_with_mail_dkim(published, rsa_key, tmp_path):
    signed = sign_message(MESSAGE, [rsa_key])
    out = mail_dkim_verify(signed, published, tmp_path)
    assert "sig pass sender.test s2024" in out, out
    assert "result pass" in out, out


def test_mail_dkim_sees_tampering_and_bare_lf(published, rsa_key, tmp_path):
    signed = sign_message(MESSAGE, [rsa_key])
    out = mail_dkim_verify(signed.replace(b"Your receipt", b"Your refund"), published, tmp_path)
    assert "result fail" in out, out
    raw = MESSAGE.replace(b"\r\n", b"\n")
    out = mail_dkim_verify(sign_message(raw, [rsa_key]), published, tmp_path)
    assert "result pass" in out, out


# -- RFC 8463 appendix A.3 ---------------------------------------------------------------------

# RFC 8463 A.1: the Ed25519 secret key (base64 of the 32-byte seed).
RFC8463_ED25519_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
# RFC 8463 A.1: the RSA key (the same key the ARC test suite uses).
RFC8463_RSA_PEM = """-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi
Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM
KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB
AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm
6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe
zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy
6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc
uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy
WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd
WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a
licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst
o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe
uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL
-----END RSA PRIVATE KEY-----
"""


@pytest.fixture
def rfc8463(dns_server: TestDnsServer):
    vector = json.loads(conformance_file("dkim", "rfc8463-a3.json").read_text())[0]
    for name, _type, value in vector["dns"]:
        dns_server.add_txt(name, "".join(value) if isinstance(value, list) else value)
    signed = vector["message"].encode()
    headers, body = parse_message(signed)
    unsigned = b"".join(n + b":" + v for n, v in headers if n.lower() != b"dkim-signature")
    keys = {
        "brisbane": SigningKey("football.example.com", "brisbane",
                               ed25519.Ed25519PrivateKey.from_private_bytes(
                                   base64.b64decode(RFC8463_ED25519_SEED))),
        "test": SigningKey("football.example.com", "test", load_private_key(RFC8463_RSA_PEM)),
    }
    return vector, signed, unsigned + b"\r\n" + body, keys


def test_rfc8463_vector_verifies_over_dns(rfc8463, dns_server):
    vector, signed, _, keys = rfc8463
    d = dkim.DKIM(signed)
    dnsfunc = dns_txt_func(dns_server)
    assert d.verify(idx=0, dnsfunc=dnsfunc) and d.verify(idx=1, dnsfunc=dnsfunc)
    # The published keys are the ones we load: our TXT rendering gives the same p=.
    ed_txt = dict((n, v) for n, _, v in vector["dns"])["brisbane._domainkey.football.example.com"]
    assert keys["brisbane"].dns_txt_value() == ed_txt


@pytest.mark.parametrize("selector", ["brisbane", "test"])
def test_rfc8463_signature_reproduced(rfc8463, dns_server, selector):
    _, signed, unsigned, keys = rfc8463
    key = keys[selector]
    expected = next(v for n, v in parse_message(signed)[0]
                    if n.lower() == b"dkim-signature" and f"s={selector};".encode() in v)
    expected_tags = _tags(b"x:" + expected)

    # Our default signer with the vector's key and time: verifies, same body hash.
    ours = sign_dkim(unsigned, key, timestamp=1528637909)
    assert _tags(ours)["bh"] == expected_tags["bh"]
    assert dkim.verify(ours + unsigned, dnsfunc=dns_txt_func(dns_server))

    # With the vector's own tags, header list and order, Ed25519 (deterministic) and
    # PKCS#1 v1.5 (deterministic too) give the RFC's b= exactly.
    h = "from : to : subject : date : message-id : from : subject : date"
    headers, body = parse_message(unsigned)
    tags = [("v", "1"), ("a", key.algorithm), ("c", "relaxed/relaxed"),
            ("d", "football.example.com"), ("i", "@football.example.com"), ("q", "dns/txt"),
            ("s", selector), ("t", "1528637909"), ("h", h), ("bh", body_hash(body)), ("b", "")]
    names = [n.strip() for n in h.split(":")]
    exact = sign_header_fields("DKIM-Signature", tags, pick_signed_fields(headers, names), key)
    assert _tags(exact)["b"] == expected_tags["b"]
    assert dkim.verify(exact + unsigned, dnsfunc=dns_txt_func(dns_server))
