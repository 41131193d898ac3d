"""ARC sealing (RFC 8617): the AAR + AMS + AS set a forwarder adds.

The chain is validated elsewhere (mta.checks.arc, at receipt); here the caller
says what it found (`chain_validation`) and which results it recorded, and we
add set i = highest existing instance + 1, signed through OpenSSL.

Tags are written in alphabetical order, as the ValiMail ARC test suite's
reference output is: with the same tags, key and time our sets are then
byte-for-byte what the suite expects, which is how we know we hash the same
header fields in the same order as other implementations.

The b= values of our AMS and AS stay on one line. A later ARC-Seal covers them
whitespace and all, so whatever folding we put inside b= becomes part of what
the next sealer signs; the reference signer (Mail::DKIM, whose output the test
suite records) writes them unfolded, and a value with no whitespace in it is one
no relay can "tidy" into a broken chain. The line stays far below RFC 5322's
998-character limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Literal

from dkim.util import InvalidTagValueList, parse_tag_value

from mta.canon import fold_words
from mta.signing.dkim import (
    DEFAULT_SIGNED_HEADERS,
    MAX_LINE,
    OVERSIGNED,
    DkimSignError,
    ParsedMessage,
    pick_signed_fields,
    select_signed_headers,
    sign_header_fields,
)
from mta.signing.keys import SigningKey

__all__ = ["AMS_SIGNED_HEADERS", "ArcSealError", "ChainValidation", "existing_instances",
           "seal_arc"]

ChainValidation = Literal["none", "pass", "fail"]

# RFC 8617 4.2.1: instance numbers run 1..50; a longer chain is not sealable.
MAX_INSTANCE = 50
# The AMS also covers the originator's DKIM-Signature fields so the next hop can
# tell they reached us unchanged; it must never cover ARC-Seal (RFC 8617 4.1.2).
AMS_SIGNED_HEADERS: tuple[str, ...] = (*DEFAULT_SIGNED_HEADERS, "dkim-signature")

_AAR = b"arc-authentication-results"
_AMS = b"arc-message-signature"
_AS = b"arc-seal"
_AAR_INSTANCE = re.compile(rb"^\s*i\s*=\s*(\d+)\s*;")
_ARC_METHOD = re.compile(r"(^|[;\s])arc\s*=", re.IGNORECASE)


class ArcSealError(DkimSignError):
    """The message cannot be sealed as asked (chain too long, cv inconsistent with
    the chain present, malformed ARC fields)."""


def _instance(name: bytes, value: bytes) -> int | None:
    """The i= of an ARC field, None when it has no readable one."""
    unfolded = value.replace(b"\r\n", b"")
    if name == _AAR:
        match = _AAR_INSTANCE.match(unfolded)
        return int(match.group(1)) if match else None
    try:
        raw = parse_tag_value(unfolded).get(b"i", b"")
    except InvalidTagValueList:
        return None
    return int(raw) if raw.isdigit() else None


def existing_instances(
        headers: Sequence[tuple[bytes, bytes]]) -> dict[int, dict[bytes, list[bytes]]]:
    """ARC fields of the message by instance: {i: {lower name: [raw values]}}; fields
    without a readable i= are grouped under 0."""
    sets: dict[int, dict[bytes, list[bytes]]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in (_AAR, _AMS, _AS):
            i = _instance(lname, value) or 0
            sets.setdefault(i, {}).setdefault(lname, []).append(value)
    return sets


def _newest_cv(parts: dict[bytes, list[bytes]]) -> str | None:
    for value in parts.get(_AS, []):
        try:
            cv = parse_tag_value(value.replace(b"\r\n", b"")).get(b"cv")
        except InvalidTagValueList:
            return "fail"
        if cv is not None and cv.strip().lower() == b"fail":
            return "fail"
    return None


def _fold_words(text: str) -> list[str]:
    """Fold at spaces only (the AAR is covered by relaxed canonicalisation, where
    folding at existing whitespace changes nothing)."""
    return fold_words(text.split(), MAX_LINE)


def _aar(instance: int, authserv_id: str, auth_results: str, cv: ChainValidation) -> bytes:
    results = " ".join(auth_results.split()).strip().strip(";").strip()
    if not _ARC_METHOD.search(results):
        # The AAR is what the next hop reads to learn what we saw; the chain state is
        # part of that (RFC 8617 4.1.1), so record it when the caller did not.
        results = f"arc={cv}; {results}" if results and results != "none" else f"arc={cv}"
    text = f"ARC-Authentication-Results: i={instance}; {authserv_id}; {results}"
    return ("\r\n".join(_fold_words(text)) + "\r\n").encode("utf-8")


def seal_arc(raw: bytes, key: SigningKey, authserv_id: str, auth_results: str,
             chain_validation: ChainValidation, timestamp: int | None = None,
             headers_to_sign: Iterable[str] | None = None, *,
             oversign: Iterable[str] = OVERSIGNED,
             parsed: ParsedMessage | None = None) -> bytes:
    """ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results (in that
    order, each folded and CRLF-terminated) to prepend to
    `normalize_line_endings(raw)`.

    `auth_results` is the body of our Authentication-Results after the authserv-id
    (e.g. "spf=pass smtp.mailfrom=a.example; dkim=pass header.d=a.example");
    `chain_validation` is what validating the chain as received gave: "none" when
    the message carried no ARC set, else "pass" or "fail". `headers_to_sign` and
    `oversign` choose the AMS h= list as for `sign_dkim`; `parsed` is `raw` already
    parsed.

    Returns b"" when the newest ARC-Seal on the message already says cv=fail: that
    chain is terminated and gets no further set."""
    if key.algorithm != "rsa-sha256":
        # RFC 8617 4.1.3 leaves ARC at rsa-sha256; validators refuse other algorithms.
        raise ArcSealError("ARC sets are signed with RSA keys only")
    if chain_validation not in ("none", "pass", "fail"):
        raise ArcSealError(f"cv must be none, pass or fail, not {chain_validation!r}")
    if not authserv_id or any(c in authserv_id for c in "; \t\r\n"):
        raise ArcSealError(f"invalid authserv-id {authserv_id!r}")
    message = parsed if parsed is not None else ParsedMessage.of(raw)
    headers = message.headers
    sets = existing_instances(headers)
    newest = max(sets, default=0)
    if newest and _newest_cv(sets[newest]) == "fail":
        # A chain whose last sealer already declared it failed is over; sealing it
        # again would only restate that (RFC 8617 5.1; the test suite expects no set).
        return b""
    if 0 in sets and chain_validation != "fail":
        raise ArcSealError("the message carries ARC fields without a valid i=; cv must be fail")
    instance = newest + 1
    if instance > MAX_INSTANCE:
        raise ArcSealError(f"the message already carries {instance - 1} ARC sets")
    if instance == 1 and chain_validation != "none":
        raise ArcSealError("no ARC set on the message: cv must be none")
    if instance > 1 and chain_validation == "none":
        raise ArcSealError("the message carries an ARC chain: cv must be pass or fail")
    stamp = str(int(time.time()) if timestamp is None else int(timestamp))

    aar = _aar(instance, authserv_id, auth_results, chain_validation)
    aar_field = (b"ARC-Authentication-Results", aar.split(b":", 1)[1])

    names = select_signed_headers(headers, headers_to_sign or AMS_SIGNED_HEADERS, oversign)
    if "arc-seal" in names:
        raise ArcSealError("the ARC-Message-Signature must not sign ARC-Seal")
    ams = sign_header_fields("ARC-Message-Signature", [
        ("a", key.algorithm), ("b", ""), ("bh", message.body_hash), ("c", "relaxed/relaxed"),
        ("d", key.domain), ("h", ":".join(names)), ("i", str(instance)),
        ("s", key.selector), ("t", stamp),
    ], pick_signed_fields(headers, names), key, fold_b=False)
    ams_field = (b"ARC-Message-Signature", ams.split(b":", 1)[1])

    # The seal covers every set in instance order, AAR/AMS/AS each, then its own
    # AAR and AMS (RFC 8617 5.1.1). With cv=fail the chain is dead and what it held
    # cannot be trusted (it may not even be complete), so the seal covers only the
    # new set, as the reference implementations do.
    sealed: list[tuple[bytes, bytes]] = []
    if chain_validation == "pass":
        for i in range(1, instance):
            parts = sets.get(i, {})
            if any(len(parts.get(n, [])) != 1 for n in (_AAR, _AMS, _AS)):
                raise ArcSealError(f"ARC set {i} is incomplete or duplicated; cv=pass is wrong")
            sealed += [(b"ARC-Authentication-Results", parts[_AAR][0]),
                       (b"ARC-Message-Signature", parts[_AMS][0]),
                       (b"ARC-Seal", parts[_AS][0])]
    sealed += [aar_field, ams_field]
    seal = sign_header_fields("ARC-Seal", [
        ("a", key.algorithm), ("b", ""), ("cv", chain_validation), ("d", key.domain),
        ("i", str(instance)), ("s", key.selector), ("t", stamp),
    ], sealed, key, fold_b=False)
    return seal + ams + aar
