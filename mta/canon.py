"""DKIM "relaxed" canonicalisation (RFC 6376 3.4.2 and 3.4.4), the same bytes as dkimpy's.

Signing (mta.signing) and verification (mta.checks) both hash through these, so what we
sign is what we would verify. dkimpy's own functions replace every run of whitespace,
including each single space between two words, which makes the regular expression
engine rebuild the whole body; here a substitution only runs where it changes
something (a tab, two blanks in a row, blanks before a line end), so an ordinary body
is hashed as it is. tests/signing/test_canon.py compares both on random input.

Also the folding of a header field at its spaces (`fold_words`: the ARC set, DSN fields).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from dkim.canonicalization import correct_empty_body, strip_trailing_lines

__all__ = ["fold_words", "relaxed_body", "relaxed_headers"]

# The runs of WSP that relaxed canonicalisation changes: any run holding a tab, and
# runs of two blanks or more. A single space is already canonical and is left alone.
_WSP_TO_COMPRESS = re.compile(rb"\t[\t ]*| [\t ]+")
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_FOLD = re.compile(rb"\r?\n")


def _compress(data: bytes) -> bytes:
    if b"\t" in data or b"  " in data:
        return _WSP_TO_COMPRESS.sub(b" ", data)
    return data


def relaxed_body(body: bytes) -> bytes:
    """Blanks at line ends removed, other WSP runs made one space, trailing empty lines
    dropped (an empty body stays empty)."""
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    return correct_empty_body(strip_trailing_lines(_compress(body)))


def relaxed_headers(headers: Sequence[Sequence[bytes]]) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs: name lower-cased, value unfolded, WSP runs made one space,
    stripped, CRLF-terminated."""
    out = []
    for field in headers:
        value = field[1]
        if b"\n" in value:
            value = _FOLD.sub(b"", value)
        out.append((field[0].lower().rstrip(), _compress(value).strip() + b"\r\n"))
    return out


def fold_words(words: Iterable[str], width: int = 78) -> list[str]:
    """The lines of a header field folded between `words`: each line as long as the
    words allow up to `width` characters, a continuation line starting with a space."""
    lines: list[str] = []
    current = ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = " " + word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return lines
