"""What every report intake (DMARC `dmarc_intake`, TLS `tls_intake`) does with a mail
to a report mailbox before reading a report: find the report files among its parts
(at most `max_files`), decode them, and decompress gzip without ever holding more than
a given number of bytes — so a gzip bomb costs little and is reported, not expanded."""

from __future__ import annotations

import email
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from typing import Self, TypeVar

__all__ = ["ReportError", "ReportFile", "gunzip", "report_files"]

T = TypeVar("T")


@dataclass
class ReportFile:
    """What every parsed report file says (DMARC, TLS): the kind adds its own content."""

    filename: str
    status: str = "ok"  # ok | invalid
    error: str | None = None
    org_name: str | None = None
    report_id: str | None = None
    begin: datetime | None = None
    end: datetime | None = None

    @classmethod
    def invalid(cls, filename: str, why: str) -> Self:
        """A file that cannot be used, and why (the column keeps 255 characters of its
        name)."""
        return cls(filename[:255], "invalid", why)


class ReportError(ValueError):
    """Why one report file cannot be used (recorded with it as `invalid`)."""


def gunzip(data: bytes, limit: int) -> bytes:
    """`data` decompressed, refused once it passes `limit` bytes."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ReportError(f"not gzip data: {exc}") from None
    if len(out) > limit:
        raise ReportError(f"decompresses to more than {limit} bytes")
    return out


def report_files(raw: bytes, *, kind_of: Callable[[str, str], str | None],
                 parse: Callable[[str, str, bytes], T],
                 invalid: Callable[[str, str], T], max_files: int, none_found: str
                 ) -> list[T]:
    """Each report file of the mail `raw` parsed by `parse(filename, kind, data)`, where
    `kind_of(content_type, filename)` says which parts are reports (None: not one);
    `invalid(filename, why)` stands for what cannot be read, and for a mail with no
    report at all (`none_found`). Never raises for what a sender wrote."""
    try:
        msg = email.message_from_bytes(raw, policy=policy.compat32)
    except Exception as exc:  # the email package raises assorted errors on odd input
        return [invalid("", f"unreadable message: {exc}")]
    found: list[T] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename() or ""
        kind = kind_of(part.get_content_type(), filename)
        if kind is None:
            continue
        if len(found) >= max_files:
            found.append(invalid(filename, f"more than {max_files} files"))
            break
        try:
            data = part.get_payload(decode=True) or b""
        except Exception as exc:
            found.append(invalid(filename, f"undecodable part: {exc}"))
            continue
        found.append(parse(filename or f"report.{kind}", kind, data))
    return found or [invalid("", none_found)]
