"""DKIM/ARC signing keys: generation, DNS publication, encryption at rest.

Private keys live in PostgreSQL encrypted with a key derived from the node's
`secret_key` (AES-256-GCM, HKDF-SHA256). The blob starts with a format version
byte so the scheme can change later without guessing what a stored blob is, and
decryption accepts several secrets so the operator can rotate `secret_key`
(new one first, old ones after) and re-encrypt at leisure.

All signing goes through OpenSSL (`cryptography`): dkimpy's pure-Python RSA is
ten times slower and a forward signs three times.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "Algorithm",
    "KeyDecryptionError",
    "KeyVault",
    "PrivateKey",
    "SigningKey",
    "decrypt_private_key",
    "dns_txt_value",
    "encrypt_private_key",
    "generate_private_key",
    "generate_signing_key",
    "load_private_key",
    "private_key_to_pem",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey

RSA_BITS = 2048
# Below 1024 bits verifiers (RFC 8301) must refuse the signature; refuse to make one.
MIN_RSA_BITS = 1024

_FORMAT_V1 = 1
_SALT_LEN = 16
_NONCE_LEN = 12
_HKDF_INFO_V1 = b"mta signing-key encryption v1"


class KeyDecryptionError(Exception):
    """A stored private key could not be decrypted (wrong secret, corrupt or
    unknown format). The message never contains key material."""


# -- generation and DNS ---------------------------------------------------------------------


def generate_private_key(algorithm: Algorithm = "rsa-sha256", bits: int = RSA_BITS) -> PrivateKey:
    if algorithm == "rsa-sha256":
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys shorter than {MIN_RSA_BITS} bits are refused by verifiers")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if algorithm == "ed25519-sha256":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown signing algorithm {algorithm!r}")


def generate_signing_key(domain: str, selector: str, algorithm: Algorithm = "rsa-sha256",
                         bits: int = RSA_BITS) -> SigningKey:
    return SigningKey(domain, selector, generate_private_key(algorithm, bits))


def algorithm_of(key: PrivateKey | PublicKey) -> Algorithm:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa-sha256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519-sha256"
    raise TypeError(f"unsupported key type {type(key).__name__}")


def public_key_b64(key: PrivateKey | PublicKey) -> str:
    """The p= value: SubjectPublicKeyInfo DER for RSA (RFC 6376 3.6.1), the raw
    32-byte key for Ed25519 (RFC 8463 4.2)."""
    public: PublicKey
    if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        public = key.public_key()
    else:
        public = key
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode("ascii")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def dns_txt_value(key: PrivateKey | PublicKey) -> str:
    """The TXT record value to publish at `<selector>._domainkey.<domain>`."""
    k = "rsa" if algorithm_of(key) == "rsa-sha256" else "ed25519"
    return f"v=DKIM1; k={k}; p={public_key_b64(key)}"


# -- the signing key value ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key bound to the domain and selector it signs for.

    The private key is excluded from repr/eq so it cannot leak into logs or
    tracebacks through an f-string or a dataclass dump."""

    domain: str
    selector: str
    private_key: PrivateKey = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        algorithm_of(self.private_key)  # refuse unsupported key types early
        for label, value in (("domain", self.domain), ("selector", self.selector)):
            if not value or not value.isascii() or any(c in value for c in "; \t\r\n="):
                raise ValueError(f"invalid DKIM {label} {value!r}")
        if isinstance(self.private_key, rsa.RSAPrivateKey) and \
                self.private_key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {self.private_key.key_size} bits is too short")

    @property
    def algorithm(self) -> Algorithm:
        return algorithm_of(self.private_key)

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_txt_value(self) -> str:
        return dns_txt_value(self.private_key)

    def sign(self, data: bytes) -> bytes:
        """Sign canonicalised header data as DKIM/ARC want: RSASSA-PKCS1-v1_5 over
        SHA-256 of the data, or Ed25519 (PureEdDSA) over the SHA-256 digest of the
        data, which is what RFC 8463 section 3 specifies."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.private_key.sign(hashlib.sha256(data).digest())


# -- serialisation ---------------------------------------------------------------------------


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (what `mta keys import` reads), for tests; store with
    `encrypt_private_key` instead."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(data: bytes | str) -> PrivateKey:
    """Load an unencrypted PEM (PKCS#1 or PKCS#8) or DER private key."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    if b"-----BEGIN" in raw:
        key = serialization.load_pem_private_key(raw, password=None)
    else:
        key = serialization.load_der_private_key(raw, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


# -- encryption at rest ------------------------------------------------------------------------


def _derive(secret: str, salt: bytes) -> bytes:
    # A fresh salt per blob gives every blob its own AES key, so random nonces can
    # never repeat under one key however many keys are stored.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                info=_HKDF_INFO_V1).derive(secret.encode("utf-8"))


class KeyVault:
    """Encrypts private keys with the first secret, decrypts with any of them.

    `associated_data` (e.g. b"example.com/sel1") binds a blob to its row so a
    blob copied onto another domain's row does not decrypt."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: str | Sequence[str]) -> None:
        items = [secrets] if isinstance(secrets, str) else list(secrets)
        if not items or any(not s for s in items):
            raise ValueError("KeyVault needs at least one non-empty secret")
        self._secrets: tuple[str, ...] = tuple(items)

    def __repr__(self) -> str:
        return f"KeyVault(<{len(self._secrets)} secret(s)>)"

    def encrypt(self, key: PrivateKey, associated_data: bytes = b"") -> bytes:
        plaintext = key.private_bytes(serialization.Encoding.DER,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        salt, nonce = os.urandom(_SALT_LEN), os.urandom(_NONCE_LEN)
        header = bytes([_FORMAT_V1]) + salt
        sealed = AESGCM(_derive(self._secrets[0], salt)).encrypt(
            nonce, plaintext, header + associated_data)
        return header + nonce + sealed

    def decrypt(self, blob: bytes, associated_data: bytes = b"") -> PrivateKey:
        return self._open(blob, associated_data)[0]

    def needs_reencryption(self, blob: bytes, associated_data: bytes = b"") -> bool:
        """True when the blob opens only with an older secret (rotate it)."""
        return self._open(blob, associated_data)[1] != 0

    def reencrypt(self, blob: bytes, associated_data: bytes = b"") -> bytes:
        return self.encrypt(self.decrypt(blob, associated_data), associated_data)

    def _open(self, blob: bytes, associated_data: bytes) -> tuple[PrivateKey, int]:
        if not blob:
            raise KeyDecryptionError("empty key blob")
        if blob[0] != _FORMAT_V1:
            raise KeyDecryptionError(f"unknown key blob format version {blob[0]}")
        min_len = 1 + _SALT_LEN + _NONCE_LEN + 16
        if len(blob) < min_len:
            raise KeyDecryptionError("truncated key blob")
        header, rest = blob[:1 + _SALT_LEN], blob[1 + _SALT_LEN:]
        nonce, sealed = rest[:_NONCE_LEN], rest[_NONCE_LEN:]
        salt = header[1:]
        for index, secret in enumerate(self._secrets):
            try:
                plaintext = AESGCM(_derive(secret, salt)).decrypt(
                    nonce, sealed, header + associated_data)
            except InvalidTag:
                continue
            return load_private_key(plaintext), index
        raise KeyDecryptionError("key blob does not decrypt with any configured secret")


def encrypt_private_key(key: PrivateKey, secret_key: str, associated_data: bytes = b"") -> bytes:
    return KeyVault(secret_key).encrypt(key, associated_data)


def decrypt_private_key(blob: bytes, secret_key: str | Sequence[str],
                        associated_data: bytes = b"") -> PrivateKey:
    return KeyVault(secret_key).decrypt(blob, associated_data)
