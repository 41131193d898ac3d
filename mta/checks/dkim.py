"""DKIM verification (RFC 6376, RFC 8463 Ed25519, RFC 8301 crypto updates).

Every DKIM-Signature of a message gets one result. Keys are fetched through our own
`DnsResolver`, so a SERVFAIL or timeout is `temperror` (4xx later), never `fail`: dkimpy's
own `verify()` returns False for both. dkimpy is used for what it does well — tag-list
parsing, header selection and canonicalisation — and `cryptography` (OpenSSL) checks the
signatures, RSA and Ed25519 alike (dkimpy would need PyNaCl for Ed25519).

Result values are those of RFC 8601 §2.7.1:
- pass: the signature verified with the published key;
- fail: it did not (body hash mismatch, bad signature, expired);
- neutral: the signature itself is malformed (syntax, missing tag, From not signed);
- policy: acceptable syntax but refused here (rsa-sha1, key under 1024 bits, RFC 8301);
- temperror: the key lookup failed temporarily;
- permerror: no key, revoked or unusable key record.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import hash_headers
from dkim.canonicalization import (
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    Relaxed,
)
from dkim.util import InvalidTagValueList, parse_tag_value

from mta.canon import relaxed_body, relaxed_headers
from mta.cpuwork import run_cpu
from mta.dnscache import DnsPermError, DnsResolver, DnsTempError

__all__ = ["DkimSignatureResult", "parse_header_section", "verify_dkim"]

MIN_RSA_BITS = 1024  # RFC 8301 §3.2
_SUPPORTED = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})$")
_HEADER_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@dataclass(frozen=True)
class DkimSignatureResult:
    result: str  # pass|fail|neutral|policy|temperror|permerror
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    header_b: str  # first 8 characters of b= (RFC 6008)
    reason: str = ""
    auid: str = ""  # i=
    key_bits: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DkimSignatureResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class _SigError(Exception):
    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass
class _Signature:
    header: list[bytes]  # [name, value] as in the message
    tags: dict[bytes, bytes]
    domain: str
    selector: str
    algorithm: str
    header_b: str
    auid: str
    error: _SigError | None = None

    def result(self, result: str, reason: str = "", key_bits: int = 0) -> DkimSignatureResult:
        return DkimSignatureResult(result, self.domain, self.selector, self.algorithm,
                                   self.header_b, reason, self.auid, key_bits)


def parse_header_section(raw: bytes) -> tuple[list[list[bytes]], bytes]:
    """(headers as [name, value-with-CRLF], body with CRLF line ends), like dkimpy's
    rfc822_parse but tolerant: a line that is not a header field is skipped rather than
    making the whole message unverifiable."""
    lines = re.split(rb"\r?\n", raw)
    headers: list[list[bytes]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if headers:
                headers[-1][1] += line + b"\r\n"
            continue
        m = _HEADER_NAME.match(line)
        if m is not None:
            name_end = line.index(b":")
            headers.append([line[:name_end], line[name_end + 1:] + b"\r\n"])
    return headers, b"\r\n".join(lines[i:])


def _b64(value: bytes, what: str) -> bytes:
    try:
        return base64.b64decode(re.sub(rb"\s+", b"", value), validate=True)
    except (binascii.Error, ValueError):
        raise _SigError("neutral", f"{what} is not valid base64") from None


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _parse_signature(header: list[bytes], now: float) -> _Signature:
    try:
        tags = parse_tag_value(header[1])
    except InvalidTagValueList as exc:
        return _Signature(header, {}, "", "", "", "", "",
                          _SigError("neutral", f"malformed tag list: {exc}"))
    domain = _text(tags.get(b"d", b"")).strip().lower().rstrip(".")
    sig = _Signature(
        header, tags, domain, _text(tags.get(b"s", b"")).strip().lower(),
        _text(tags.get(b"a", b"")).strip().lower(),
        _text(re.sub(rb"\s+", b"", tags.get(b"b", b""))[:8]),
        _text(tags.get(b"i", b"")).strip())
    try:
        _check_signature_tags(sig, now)
    except _SigError as exc:
        sig.error = exc
    return sig


def _check_signature_tags(sig: _Signature, now: float) -> None:
    tags = sig.tags
    for tag in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
        if tag not in tags:
            raise _SigError("neutral", f"missing {tag.decode()}= tag")
    if tags[b"v"].strip() != b"1":
        raise _SigError("neutral", "unsupported version v=")
    if sig.algorithm == "rsa-sha1":
        raise _SigError("policy", "rsa-sha1 is not accepted (RFC 8301)")
    if sig.algorithm not in _SUPPORTED:
        raise _SigError("neutral", f"unknown algorithm a={sig.algorithm}")
    if not _b64(tags[b"b"], "b="):
        raise _SigError("neutral", "empty b= tag")
    _b64(tags[b"bh"], "bh=")
    labels = sig.domain.split(".")
    if not sig.domain or not all(_LABEL.match(lb) for lb in labels):
        raise _SigError("neutral", "invalid d= domain")
    if not sig.selector or not all(_LABEL.match(lb) for lb in sig.selector.split(".")):
        raise _SigError("neutral", "invalid s= selector")
    if sig.auid:
        auid_domain = sig.auid.rpartition("@")[2].lower().rstrip(".")
        if "@" not in sig.auid or not (auid_domain == sig.domain
                                       or auid_domain.endswith("." + sig.domain)):
            raise _SigError("neutral", "i= is not within d=")
    signed = [h.strip().lower() for h in re.split(rb":", tags[b"h"])]
    if b"from" not in signed:
        raise _SigError("neutral", "From header field not signed")
    if b"q" in tags and b"dns/txt" not in [q.strip() for q in tags[b"q"].split(b":")]:
        raise _SigError("neutral", "unsupported q= query method")
    for tag in (b"l", b"t", b"x"):
        if tag in tags and not re.fullmatch(rb"\d{1,76}", tags[tag].strip()):
            raise _SigError("neutral", f"{tag.decode()}= is not a number")
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple").strip())
    except InvalidCanonicalizationPolicyError:
        raise _SigError("neutral", "invalid c= canonicalization") from None
    if b"x" in tags:
        expires = int(tags[b"x"])
        if b"t" in tags and expires < int(tags[b"t"]):
            raise _SigError("neutral", "x= is before t=")
        if expires < now:
            raise _SigError("fail", "signature expired")


@dataclass(frozen=True)
class _Key:
    kind: str
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    bits: int
    strict_subdomain: bool  # t=s


@functools.lru_cache(maxsize=1024)
def _parse_key(record: str, algorithm: str) -> _Key:
    """The usable public key of one key record, or _SigError(permerror|policy).

    Cached by record text: the same few senders' keys come back message after message,
    and loading a DER key costs more than verifying with it."""
    try:
        tags = parse_tag_value(record.encode("utf-8", "replace"))
    except InvalidTagValueList as exc:
        raise _SigError("permerror", f"malformed key record: {exc}") from None
    if b"v" in tags and tags[b"v"].strip() != b"DKIM1":
        raise _SigError("permerror", "key record has an unknown version")
    kind = tags.get(b"k", b"rsa").strip().decode("ascii", "replace").lower()
    if kind != _SUPPORTED[algorithm]:
        raise _SigError("permerror", f"key type k={kind} does not match a={algorithm}")
    if b"h" in tags and b"sha256" not in [h.strip().lower() for h in tags[b"h"].split(b":")]:
        raise _SigError("permerror", "key record does not allow sha256")
    services = [s.strip().lower() for s in tags.get(b"s", b"*").split(b":")]
    if b"*" not in services and b"email" not in services:
        raise _SigError("permerror", "key record is not for email")
    if b"p" not in tags:
        raise _SigError("permerror", "key record has no p= tag")
    raw_p = re.sub(rb"\s+", b"", tags[b"p"])
    if not raw_p:
        raise _SigError("permerror", "key revoked")
    try:
        der = base64.b64decode(raw_p, validate=True)
    except (binascii.Error, ValueError):
        raise _SigError("permerror", "key p= is not valid base64") from None
    flags = [f.strip().lower() for f in tags.get(b"t", b"").split(b":")]
    strict = b"s" in flags
    if kind == "ed25519":
        if len(der) != 32:
            raise _SigError("permerror", "Ed25519 key is not 32 bytes")
        return _Key(kind, ed25519.Ed25519PublicKey.from_public_bytes(der), 256, strict)
    key: Any
    try:
        key = serialization.load_der_public_key(der)
    except ValueError:
        # Some publishers put a bare PKCS#1 RSAPublicKey in p=.
        pem = (b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(der)
               + b"-----END RSA PUBLIC KEY-----\n")
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            raise _SigError("permerror", "key p= is not a valid RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise _SigError("permerror", "key p= is not an RSA public key")
    if key.key_size < MIN_RSA_BITS:
        raise _SigError("policy", f"RSA key of {key.key_size} bits is too small (RFC 8301)")
    return _Key(kind, key, key.key_size, strict)


async def _fetch_key(resolver: DnsResolver, sig: _Signature) -> _Key | _SigError:
    name = f"{sig.selector}._domainkey.{sig.domain}"
    try:
        records = await resolver.txt(name)
    except DnsTempError as exc:
        return _SigError("temperror", f"key lookup failed: {exc}")
    except DnsPermError as exc:
        return _SigError("permerror", f"key lookup failed: {exc}")
    if not records:
        return _SigError("permerror", f"no key at {name}")
    first_error: _SigError | None = None
    for record in records:
        try:
            return _parse_key(record, sig.algorithm)
        except _SigError as exc:
            first_error = first_error or exc
    assert first_error is not None
    return first_error


class _Message:
    """Canonicalised forms computed once and shared by every signature."""

    def __init__(self, headers: list[list[bytes]], body: bytes) -> None:
        self.headers = headers
        self.body = body
        self._canon_headers: dict[bytes, list] = {}
        self._body_hashes: dict[tuple[bytes, int | None], tuple[bytes, int]] = {}

    def canonical_headers(self, policy: CanonicalizationPolicy, c_value: bytes) -> list:
        key = c_value.split(b"/")[0]
        if key not in self._canon_headers:
            self._canon_headers[key] = (
                relaxed_headers(self.headers) if policy.header_algorithm is Relaxed
                else policy.canonicalize_headers([list(h) for h in self.headers]))
        return self._canon_headers[key]

    def body_hash(self, policy: CanonicalizationPolicy, c_value: bytes,
                  length: int | None) -> tuple[bytes, int]:
        """(sha256 digest, canonical body length) for a body canonicalisation and l=."""
        body_c = c_value.split(b"/")[1] if b"/" in c_value else b"simple"
        key = (body_c, length)
        if key not in self._body_hashes:
            body = (relaxed_body(self.body) if policy.body_algorithm is Relaxed
                    else policy.canonicalize_body(self.body))
            size = len(body)
            if length is not None:
                body = body[:length]
            self._body_hashes[key] = (hashlib.sha256(body).digest(), size)
        return self._body_hashes[key]


def _verify_one(msg: _Message, sig: _Signature, key: _Key) -> DkimSignatureResult:
    tags = sig.tags
    if key.strict_subdomain and sig.auid:
        if sig.auid.rpartition("@")[2].lower().rstrip(".") != sig.domain:
            return sig.result("permerror", "key t=s forbids a subdomain in i=", key.bits)
    c_value = tags.get(b"c", b"simple/simple").strip().lower()
    policy = CanonicalizationPolicy.from_c_value(c_value)
    length = int(tags[b"l"]) if b"l" in tags else None
    digest, size = msg.body_hash(policy, c_value, length)
    if length is not None and length > size:
        return sig.result("fail", "l= is longer than the body", key.bits)
    if digest != _b64(tags[b"bh"], "bh="):
        return sig.result("fail", "body hash mismatch", key.bits)
    include = [h.strip().lower() for h in tags[b"h"].split(b":")]
    # As dkimpy does: hash one more From than signed, so a second From added after
    # signing breaks the signature instead of hiding behind the signed one.
    include.append(b"from")
    hasher = hashlib.sha256()
    hash_headers(hasher, policy, msg.canonical_headers(policy, c_value), include,
                 tuple(sig.header), tags)
    signature = _b64(tags[b"b"], "b=")
    try:
        if isinstance(key.key, ed25519.Ed25519PublicKey):
            key.key.verify(signature, hasher.digest())
        else:
            key.key.verify(signature, hasher.digest(), padding.PKCS1v15(),
                           Prehashed(hashes.SHA256()))
    except InvalidSignature:
        return sig.result("fail", "signature did not verify", key.bits)
    return sig.result("pass", "", key.bits)


def _header_section_has_dkim(raw: bytes) -> bool:
    end = raw.find(b"\n\n")
    end2 = raw.find(b"\r\n\r\n")
    ends = [e for e in (end, end2) if e >= 0]
    head = raw[:min(ends)] if ends else raw
    return b"dkim-signature" in head.lower()


def _parse_all(raw: bytes, now: float) -> tuple[_Message, list[_Signature]]:
    headers, body = parse_header_section(raw)
    sigs = [_parse_signature(h, now) for h in headers if h[0].rstrip().lower() == b"dkim-signature"]
    return _Message(headers, body), sigs


def _verify_all(msg: _Message, sigs: list[_Signature],
                keys: list[_Key | _SigError | None]) -> list[DkimSignatureResult]:
    results = []
    for sig, key in zip(sigs, keys, strict=True):
        if sig.error is not None:
            results.append(sig.result(sig.error.result, sig.error.reason))
        elif isinstance(key, _SigError):
            results.append(sig.result(key.result, key.reason))
        elif key is None:
            results.append(sig.result("permerror", "no key"))
        else:
            try:
                results.append(_verify_one(msg, sig, key))
            except _SigError as exc:
                results.append(sig.result(exc.result, exc.reason, key.bits))
            except (ValueError, TypeError, IndexError) as exc:
                results.append(sig.result("neutral", f"cannot process signature: {exc}"))
    return results


async def verify_dkim(resolver: DnsResolver, raw: bytes,
                      now: float | None = None) -> list[DkimSignatureResult]:
    """One result per DKIM-Signature header field, in header order (top first)."""
    if not _header_section_has_dkim(raw):
        return []
    when = time.time() if now is None else now
    msg, sigs = await run_cpu(len(raw), _parse_all, raw, when)
    if not sigs:
        return []
    lookups: dict[tuple[str, str, str], asyncio.Future] = {}
    for sig in sigs:
        key_id = (sig.selector, sig.domain, sig.algorithm)
        if sig.error is None and key_id not in lookups:
            lookups[key_id] = asyncio.ensure_future(_fetch_key(resolver, sig))
    if lookups:
        await asyncio.gather(*lookups.values())
    keys = [lookups[(s.selector, s.domain, s.algorithm)].result() if s.error is None else None
            for s in sigs]
    return await run_cpu(len(raw), _verify_all, msg, sigs, keys)
