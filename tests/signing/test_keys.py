"""Signing keys: generation, the DNS records an operator publishes, encryption at
rest with rotation of the node secret, and no secret in any repr."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta.signing.keys import (
    KeyDecryptionError,
    KeyVault,
    SigningKey,
    decrypt_private_key,
    encrypt_private_key,
    generate_private_key,
    generate_signing_key,
    load_private_key,
    private_key_to_pem,
)


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return generate_signing_key("example.test", "s1")


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return generate_signing_key("example.test", "e1", "ed25519-sha256")


def _txt_tags(value: str) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in value.split(";"))


def test_rsa_dns_record(rsa_key):
    assert rsa_key.algorithm == "rsa-sha256"
    assert rsa_key.private_key.key_size == 2048
    assert rsa_key.dns_name == "s1._domainkey.example.test"
    tags = _txt_tags(rsa_key.dns_txt_value())
    assert tags["v"] == "DKIM1" and tags["k"] == "rsa"
    public = serialization.load_der_public_key(base64.b64decode(tags["p"]))
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == rsa_key.private_key.public_key().public_numbers()


def test_ed25519_dns_record(ed_key):
    tags = _txt_tags(ed_key.dns_txt_value())
    assert tags["k"] == "ed25519"
    raw = base64.b64decode(tags["p"])
    assert len(raw) == 32  # RFC 8463: the bare key, not SubjectPublicKeyInfo
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(
        ed_key.private_key.sign(b"x"), b"x")


def test_encrypt_round_trip_both_algorithms(rsa_key, ed_key):
    for key in (rsa_key.private_key, ed_key.private_key):
        blob = encrypt_private_key(key, "node secret", b"example.test/s1")
        assert blob[0] == 1  # format version byte
        assert private_key_to_pem(key) not in blob
        back = decrypt_private_key(blob, "node secret", b"example.test/s1")
        assert private_key_to_pem(back) == private_key_to_pem(key)
    # Fresh salt and nonce every time: equal keys do not give equal blobs.
    key = ed_key.private_key
    assert encrypt_private_key(key, "s") != encrypt_private_key(key, "s")


def test_wrong_secret_context_or_corruption_fails(ed_key):
    blob = encrypt_private_key(ed_key.private_key, "right", b"a.test/s1")
    with pytest.raises(KeyDecryptionError):
        decrypt_private_key(blob, "wrong", b"a.test/s1")
    with pytest.raises(KeyDecryptionError):  # a blob moved to another domain's row
        decrypt_private_key(blob, "right", b"b.test/s1")
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KeyDecryptionError):
        decrypt_private_key(flipped, "right", b"a.test/s1")
    with pytest.raises(KeyDecryptionError):
        decrypt_private_key(b"\x02" + blob[1:], "right", b"a.test/s1")
    with pytest.raises(KeyDecryptionError):
        decrypt_private_key(blob[:20], "right", b"a.test/s1")


def test_secret_rotation(ed_key):
    old_blob = KeyVault("old secret").encrypt(ed_key.private_key)
    rotated = KeyVault(["new secret", "old secret"])
    assert rotated.needs_reencryption(old_blob)
    assert private_key_to_pem(rotated.decrypt(old_blob)) == private_key_to_pem(ed_key.private_key)
    new_blob = rotated.reencrypt(old_blob)
    assert not rotated.needs_reencryption(new_blob)
    KeyVault("new secret").decrypt(new_blob)
    with pytest.raises(KeyDecryptionError):
        KeyVault("old secret").decrypt(new_blob)


def test_no_secret_in_repr(rsa_key):
    vault = KeyVault(["hunter2-secret", "older-secret"])
    assert "hunter2" not in repr(vault) and "older" not in repr(vault)
    text = repr(rsa_key) + str(rsa_key)
    assert "PRIVATE" not in text and "RSAPrivateKey" not in text
    assert text.count("example.test") == 2


def test_load_and_validation():
    pem = private_key_to_pem(generate_private_key("ed25519-sha256"))
    assert isinstance(load_private_key(pem), ed25519.Ed25519PrivateKey)
    assert isinstance(load_private_key(pem.decode()), ed25519.Ed25519PrivateKey)
    with pytest.raises(ValueError):
        generate_private_key("rsa-sha256", bits=512)
    with pytest.raises(ValueError):
        SigningKey("example.test", "bad selector", generate_private_key("ed25519-sha256"))
    with pytest.raises(ValueError):
        KeyVault([])
    with pytest.raises(ValueError):
        KeyVault([""])
