"""Facts about Python text that several layers check.

A `str` can hold what no UTF-8 byte string can: a lone surrogate, from bytes decoded with
`surrogateescape` or from JSON's `"\\ud800"`. PostgreSQL text and RE2 patterns take only
real Unicode, so the API and the pattern rules refuse such text up front.
"""

from __future__ import annotations

__all__ = ["is_utf8"]


def is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
