"""DKIM signing (RFC 6376, RFC 8463) with the signature made by OpenSSL.

dkimpy's parser and relaxed canonicalisation are reused (verifiers use the same
code, so we hash exactly what they hash); the RSA / Ed25519 operation is
`SigningKey.sign` (cryptography), ten times faster than dkimpy's own RSA.

The messages we sign are relayed as we sign them, so line ends are normalised
first: a bare CR or LF relayed as is could be read differently by the next hop
(and would not survive its canonicalisation). Callers must relay
`normalize_line_endings(raw)` — `sign_message` does both.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable, Sequence

from dkim import rfc822_parse, select_headers

from mta.canon import relaxed_body, relaxed_headers
from mta.signing.keys import SigningKey

__all__ = [
    "DEFAULT_SIGNED_HEADERS",
    "DkimSignError",
    "ParsedMessage",
    "body_hash",
    "normalize_line_endings",
    "parse_message",
    "pick_signed_fields",
    "render_signature_header",
    "select_signed_headers",
    "sign_dkim",
    "sign_header_fields",
    "sign_message",
]

DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from", "sender", "to", "cc", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "reply-to", "in-reply-to", "references",
    "list-unsubscribe", "list-unsubscribe-post", "feedback-id", "cfbl-address",
    "cfbl-feedback-id",
)
# Listed once more than they occur, so nobody can add another instance after signing:
# a second From would decide what the reader sees, a second List-Unsubscribe(-Post)
# what a one-click unsubscribe hits (RFC 8058 section 4 wants both covered).
OVERSIGNED: tuple[str, ...] = ("from", "list-unsubscribe", "list-unsubscribe-post")
# Covered whatever list the caller gives: DKIM needs From (RFC 6376 5.4), RFC 8058
# needs the unsubscribe pair, RFC 9477 section 3.2 the CFBL fields, when present.
ALWAYS_SIGNED: tuple[str, ...] = ("from", "list-unsubscribe", "list-unsubscribe-post",
                                  "cfbl-address", "cfbl-feedback-id")

MAX_LINE = 78
_LINE_END = re.compile(rb"\r\n|\r|\n")
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


class DkimSignError(ValueError):
    """The message cannot be signed as asked (no From, malformed header ...)."""


# -- message handling --------------------------------------------------------------------------


def normalize_line_endings(raw: bytes) -> bytes:
    """Every CRLF, bare CR and bare LF becomes CRLF."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") == crlf and raw.count(b"\n") == crlf:
        return raw  # nothing bare: the usual case, three scans instead of a rewrite
    return _LINE_END.sub(b"\r\n", raw)


def parse_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers as (name, value) with the value as on the wire, body) of a CRLF message."""
    try:
        headers, body = rfc822_parse(raw)
    except Exception as exc:  # dkimpy raises its own MessageFormatError
        raise DkimSignError(f"malformed message header: {exc}") from None
    return [(bytes(n), bytes(v)) for n, v in headers], body


def body_hash(body: bytes) -> str:
    """bh= for relaxed body canonicalisation and SHA-256."""
    return base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()


class ParsedMessage:
    """A CRLF message parsed once for several signatures (a forward's DKIM signature,
    ARC-Message-Signature and ARC-Seal): its header fields, its body, and the body
    hash, computed on first use and shared, since the body is the same for all."""

    __slots__ = ("_bh", "body", "headers")

    def __init__(self, headers: list[tuple[bytes, bytes]], body: bytes,
                 bh: str | None = None) -> None:
        self.headers, self.body, self._bh = headers, body, bh

    @classmethod
    def of(cls, raw: bytes) -> ParsedMessage:
        return cls(*parse_message(normalize_line_endings(raw)))

    def with_fields_on_top(self, fields: bytes) -> ParsedMessage:
        """This message with `fields` (whole CRLF-terminated header fields) prepended."""
        top, _ = parse_message(fields + b"\r\n")
        return ParsedMessage([*top, *self.headers], self.body, self._bh)

    @property
    def body_hash(self) -> str:
        if self._bh is None:
            self._bh = body_hash(self.body)
        return self._bh


def select_signed_headers(headers: Sequence[tuple[bytes, bytes]],
                          wanted: Iterable[str] = DEFAULT_SIGNED_HEADERS,
                          oversign: Iterable[str] = OVERSIGNED,
                          always: Iterable[str] = ALWAYS_SIGNED) -> list[str]:
    """The h= list: each wanted header as many times as it occurs (absent ones are
    skipped, so h= stays short), plus one more listing for over-signed ones."""
    counts: dict[str, int] = {}
    for name, _ in headers:
        key = name.decode("ascii", "replace").lower()
        counts[key] = counts.get(key, 0) + 1
    over = {h.lower() for h in oversign}
    names: list[str] = []
    for h in [*(w.lower() for w in wanted), *(a.lower() for a in always)]:
        if h in names or not counts.get(h):
            continue
        names.extend([h] * (counts[h] + (1 if h in over else 0)))
    if "from" not in names:
        raise DkimSignError("the message has no From header field, which DKIM must sign")
    return names


def pick_signed_fields(headers: Sequence[tuple[bytes, bytes]],
                       names: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """Header instances named by h=, bottom-up as RFC 6376 5.4.2 says; dkimpy's own
    selection, so we hash exactly the instances its verifier will."""
    return select_headers(list(headers), [n.encode("ascii") for n in names])


# -- signature header rendering -----------------------------------------------------------------


def _fold_tag(tag: str, width: int, first: int) -> list[str]:
    """Split one tag into lines; only the h= list and b= value ever need it. A break
    goes after a ':' in h= (FWS is allowed there) or anywhere in b= (verifiers drop
    the whole value)."""
    if len(tag) <= first:
        return [tag]
    if tag.startswith("b="):
        lines, rest, room = [], tag, first
        while len(rest) > room:
            lines.append(rest[:room])
            rest, room = rest[room:], width
        return [*lines, rest]
    parts = tag.split(":")
    lines, cur, room = [], "", first
    for i, part in enumerate(parts):
        piece = part + (":" if i < len(parts) - 1 else "")
        if cur and len(cur) + len(piece) > room:
            lines.append(cur)
            cur, room = "", width
        cur += piece
    return [*lines, cur]


def render_signature_header(name: str, tags: Sequence[tuple[str, str]],
                            fold_b: bool = True) -> bytes:
    """`Name: t1=v1; t2=v2 ...` folded at 78 columns, ending in CRLF.

    `fold_b=False` keeps the b= value on one line (ARC: see mta.signing.arc).

    b= always starts a line and the tag after it starts a new line, so the text
    outside b= is the same whatever b= holds: that is what lets us sign the header
    with b= empty and then fill b= in without changing what was signed."""
    width = MAX_LINE - 1  # continuation lines start with one space
    lines: list[str] = []
    cur = f"{name}:"
    force_break = False
    for index, (tag, value) in enumerate(tags):
        unit = f"{tag}={value}" + (";" if index < len(tags) - 1 else "")
        must_break = force_break or tag == "b"
        force_break = tag == "b"
        if not must_break and len(cur) + 1 + len(unit) <= MAX_LINE:
            cur += " " + unit
            continue
        if not must_break and cur.endswith(":"):  # first tag: start on the name line
            room = MAX_LINE - len(cur) - 1
            pieces = _fold_tag(unit, width, room)
            cur += " " + pieces[0]
        else:
            lines.append(cur)
            pieces = _fold_tag(unit, width, width) if fold_b or tag != "b" else [unit]
            cur = " " + pieces[0]
        for piece in pieces[1:]:
            lines.append(cur)
            cur = " " + piece
    lines.append(cur)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def sign_header_fields(header_name: str, tags: Sequence[tuple[str, str]],
                       signed: Sequence[tuple[bytes, bytes]], key: SigningKey,
                       fold_b: bool = True) -> bytes:
    """Render a DKIM-style signature header (DKIM-Signature, ARC-Message-Signature,
    ARC-Seal) whose b= covers `signed` then the header itself, relaxed canonicalisation.

    `tags` are in output order and must hold ("b", "") where b= goes."""
    if [t for t, _ in tags].count("b") != 1 or dict(tags)["b"] != "":
        raise ValueError("tags must contain exactly one empty b= placeholder")
    for tag, value in tags:
        if not tag.isascii() or any(c in value for c in ";\r\n") or not value.isascii():
            raise DkimSignError(f"invalid value for tag {tag}=")
    template = render_signature_header(header_name, tags)
    own_value = template[len(header_name) + 1:]
    canon = relaxed_headers([*signed, (header_name.encode("ascii"), own_value)])
    data = b"".join(n + b":" + v for n, v in canon[:-1])
    # The signature header itself is hashed without its trailing CRLF (RFC 6376 3.7).
    data += canon[-1][0] + b":" + canon[-1][1].rstrip(b"\r\n")
    signature = base64.b64encode(key.sign(data)).decode("ascii")
    return render_signature_header(header_name, [(t, signature if t == "b" else v)
                                                 for t, v in tags], fold_b)


# -- DKIM-Signature -----------------------------------------------------------------------------


def sign_dkim(raw: bytes, key: SigningKey, headers_to_sign: Iterable[str] | None = None,
              timestamp: int | None = None, *, identity: str | None = None,
              oversign: Iterable[str] = OVERSIGNED,
              parsed: ParsedMessage | None = None) -> bytes:
    """The DKIM-Signature header (folded, CRLF-terminated) to prepend to
    `normalize_line_endings(raw)`.

    `headers_to_sign` names the fields to cover (default DEFAULT_SIGNED_HEADERS);
    each is signed as often as it occurs, From and List-Unsubscribe(-Post) are
    always covered, and the `oversign` ones listed once more than they occur.
    `identity` is the optional i= (AUID). `parsed` is `raw` already parsed (it then
    is not parsed again)."""
    for name in headers_to_sign or ():
        if not _HEADER_NAME.match(name):
            raise DkimSignError(f"invalid header field name {name!r}")
    message = parsed if parsed is not None else ParsedMessage.of(raw)
    headers = message.headers
    names = select_signed_headers(headers, headers_to_sign or DEFAULT_SIGNED_HEADERS, oversign)
    stamp = int(time.time()) if timestamp is None else int(timestamp)
    tags: list[tuple[str, str]] = [
        ("v", "1"), ("a", key.algorithm), ("c", "relaxed/relaxed"),
        ("d", key.domain), ("s", key.selector), ("t", str(stamp)),
    ]
    if identity is not None:
        if not identity.lower().endswith(("@" + key.domain.lower(), "." + key.domain.lower())):
            raise DkimSignError("i= must be in the signing domain or a subdomain of it")
        tags.append(("i", identity))
    tags += [("h", ":".join(names)), ("bh", message.body_hash), ("b", "")]
    return sign_header_fields("DKIM-Signature", tags, pick_signed_fields(headers, names), key)


def sign_message(raw: bytes, keys: Sequence[SigningKey],
                 headers_to_sign: Iterable[str] | None = None,
                 timestamp: int | None = None) -> bytes:
    """The normalised message with one DKIM-Signature per key prepended (e.g. RSA
    and Ed25519 for an RFC 8463 dual signature). Every signature covers the
    message as given, not the other signatures."""
    normalized = normalize_line_endings(raw)
    names = list(headers_to_sign) if headers_to_sign is not None else None
    parsed = ParsedMessage.of(normalized) if keys else None
    signatures = [sign_dkim(normalized, k, names, timestamp, parsed=parsed) for k in keys]
    return b"".join(signatures) + normalized
