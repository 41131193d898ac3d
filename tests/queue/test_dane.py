"""TLSA matching (mta/queue/dane.py) against certificate chains issued by trustme CAs."""

from __future__ import annotations

import datetime as dt
import hashlib

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mta.queue.dane import DanePolicy, Tlsa, association, tlsa_for_certificate, usable, verify

HOST = "mx.dane.test"


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def chain_of(leaf: trustme.LeafCert, *extra: trustme.CA) -> list[bytes]:
    """What a server sends: its certificate, the intermediates, optionally a root."""
    return [der(b.bytes()) for b in leaf.cert_chain_pems] + [der(ca.cert_pem.bytes())
                                                           for ca in extra]


def spki(cert_der: bytes) -> bytes:
    return x509.load_der_x509_certificate(cert_der).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_dane_ee_every_selector_and_matching_type():
    leaf = chain_of(trustme.CA().issue_cert(HOST))[0]
    for selector, data in ((0, leaf), (1, spki(leaf))):
        for mtype, digest in ((0, data), (1, hashlib.sha256(data).digest()),
                              (2, hashlib.sha512(data).digest())):
            record = Tlsa(3, selector, mtype, digest)
            assert association(leaf, selector, mtype) == digest
            verdict = verify([record], [leaf], [HOST])
            assert verdict.ok, verdict.reason
            assert "DANE-EE" in verdict.reason


def test_dane_ee_mismatch_names_the_server_key():
    ours = chain_of(trustme.CA().issue_cert(HOST))
    other = chain_of(trustme.CA().issue_cert(HOST))
    record = tlsa_for_certificate(other[0])
    verdict = verify([record], ours, [HOST])
    assert not verdict.ok
    assert "no TLSA record matched" in verdict.reason
    assert association(ours[0], 1, 1).hex()[:16] in verdict.reason


def test_dane_ee_ignores_names_and_dates():
    """RFC 7672 §3.1.1: the DNS binds the key; the certificate's name and dates do not
    matter (self-signed, expired, any name)."""
    old = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    leaf = chain_of(trustme.CA().issue_cert("elsewhere.test", not_before=old,
                                            not_after=old + dt.timedelta(days=1)))
    assert verify([tlsa_for_certificate(leaf[0])], leaf, [HOST]).ok


def test_dane_ta_on_intermediate_and_on_root():
    root = trustme.CA()
    intermediate = root.create_child_ca()
    chain = chain_of(intermediate.issue_cert(HOST), root)
    assert len(chain) == 3
    for depth in (1, 2):
        record = tlsa_for_certificate(chain[depth], usage=2, selector=0, mtype=1)
        verdict = verify([record], chain, [HOST])
        assert verdict.ok, verdict.reason
        assert f"depth {depth}" in verdict.reason
    # The same record as DANE-EE matches nothing: the server's own key differs.
    ee = Tlsa(3, 0, 1, tlsa_for_certificate(chain[1], 2, 0, 1).data)
    assert not verify([ee], chain, [HOST]).ok


def test_dane_ta_checks_the_name_the_dates_and_the_signatures():
    root = trustme.CA()
    record = tlsa_for_certificate(der(root.cert_pem.bytes()), usage=2, selector=1, mtype=2)

    wrong_name = chain_of(root.issue_cert("other.test"), root)
    verdict = verify([record], wrong_name, [HOST])
    assert not verdict.ok and f"does not name {HOST}" in verdict.reason

    wildcard = chain_of(root.issue_cert("*.dane.test"), root)
    assert verify([record], wildcard, [HOST]).ok
    assert not verify([record], wildcard, ["a.mx.dane.test"]).ok  # one label only

    old = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    expired = chain_of(root.issue_cert(HOST, not_before=old,
                                       not_after=old + dt.timedelta(days=1)), root)
    verdict = verify([record], expired, [HOST])
    assert not verdict.ok and "validity dates" in verdict.reason

    # A chain that ends in the anchor's certificate but was issued by someone else.
    forged = chain_of(trustme.CA().issue_cert(HOST)) + [der(root.cert_pem.bytes())]
    verdict = verify([record], forged, [HOST])
    assert not verdict.ok and "is not issued by" in verdict.reason


def test_dane_ta_bare_key_of_an_anchor_the_server_does_not_send():
    """`2 1 0` holds the anchor's key: chains without the anchor's certificate match,
    down to the server's certificate, with names and dates checked."""
    root = trustme.CA()
    anchor_key = spki(der(root.cert_pem.bytes()))
    record = Tlsa(2, 1, 0, anchor_key)

    direct = chain_of(root.issue_cert(HOST))  # only the server's certificate
    verdict = verify([record], direct, [HOST])
    assert verdict.ok and "key signed the certificate at depth 0" in verdict.reason

    via = chain_of(root.create_child_ca().issue_cert(HOST))  # server + intermediate
    assert len(via) == 2
    verdict = verify([record], via, [HOST])
    assert verdict.ok and "at depth 1" in verdict.reason

    verdict = verify([record], chain_of(root.issue_cert("other.test")), [HOST])
    assert not verdict.ok and f"does not name {HOST}" in verdict.reason
    stranger = chain_of(trustme.CA().issue_cert(HOST))
    assert not verify([record], stranger, [HOST]).ok
    # The digest forms of the same key need the anchor's certificate in the chain.
    assert not verify([Tlsa(2, 1, 1, hashlib.sha256(anchor_key).digest())], via, [HOST]).ok

    rsa_root = trustme.CA(key_type=trustme.KeyType.RSA)
    rsa_record = Tlsa(2, 1, 0, spki(der(rsa_root.cert_pem.bytes())))
    assert verify([rsa_record], chain_of(rsa_root.issue_cert(HOST)), [HOST]).ok
    assert not verify([rsa_record], direct, [HOST]).ok


def test_unusable_records_are_ignored():
    leaf = chain_of(trustme.CA().issue_cert(HOST))[0]
    good = tlsa_for_certificate(leaf)
    pkix = [Tlsa(0, 1, 1, good.data), Tlsa(1, 1, 1, good.data)]  # §3.1.3: not for SMTP
    odd = [Tlsa(3, 2, 1, good.data), Tlsa(3, 1, 3, good.data), Tlsa(3, 1, 1, good.data[:20]),
           Tlsa(3, 1, 2, good.data)]  # unknown selector/type, digests of the wrong size
    assert usable(pkix + odd) == []
    assert not verify(pkix + odd, [leaf], [HOST]).ok
    assert verify(pkix + odd + [good], [leaf], [HOST]).ok
    assert str(good) == f"3 1 1 {good.data.hex()}"


def test_policy_per_destination():
    policy = DanePolicy("opportunistic", {"bank.test": "required", "broken.test": "off"})
    assert policy.mode_for("Bank.Test.") == "required"
    assert policy.mode_for("broken.test") == "off"
    assert policy.mode_for("other.test") == "opportunistic"


def _issued_by_leaf(leaf: trustme.LeafCert, name: str) -> bytes:
    """A certificate for `name` signed with a server's own (end-entity) key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    issuer = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    issuer_key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.subject)
            .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return cert.public_bytes(Encoding.DER)


def test_dane_ta_refuses_a_chain_through_an_end_entity_certificate():
    """Whoever holds any certificate the anchor issued to a server (a public CA as
    DANE-TA: any of its customers) must not be able to issue one for our MX host."""
    root = trustme.CA()
    other_server = root.issue_cert("attacker.test")  # CA:FALSE
    forged = [_issued_by_leaf(other_server, HOST), der(other_server.cert_chain_pems[0].bytes())]
    for record, chain in (
            (tlsa_for_certificate(der(root.cert_pem.bytes()), 2, 0, 1),
             [*forged, der(root.cert_pem.bytes())]),
            (Tlsa(2, 1, 0, spki(der(root.cert_pem.bytes()))), forged)):
        verdict = verify([record], chain, [HOST])
        assert not verdict.ok, verdict.reason
        assert "not a CA" in verdict.reason
