"""What every report intake (DMARC `dmarc_intake`, TLS `tls_intake`) does with a mail
to a report mailbox, around reading the report itself: find the report files among its
parts (at most `max_files`), decode them, and decompress gzip or zip without ever
holding more than a given number of bytes — so a gzip or zip bomb costs little and is
reported, not expanded; a file that cannot be used becomes an `invalid` entry, and why."""

from __future__ import annotations

import email
import io
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from typing import NamedTuple, Self, TypeVar

__all__ = ["FileKind", "ReportError", "ReportFile", "gunzip", "report_files", "unzip"]


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


R = TypeVar("R", bound=ReportFile)


class FileKind(NamedTuple):
    """A kind of report file, known among a mail's parts by its content type or the
    ending of its name; `name` says how it is packed: "gzip", "zip", else plain."""

    name: str
    content_types: tuple[str, ...]
    endings: tuple[str, ...]


def _kind_of(kinds: tuple[FileKind, ...], content_type: str, filename: str) -> str | None:
    name = filename.lower()
    return next((k.name for k in kinds
                 if content_type in k.content_types or name.endswith(k.endings)), None)


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


def unzip(data: bytes, limit: int) -> bytes:
    """The one file of the zip archive `data`, refused once it passes `limit` bytes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            raise ReportError(f"a zip report holds one file, this one {len(members)}")
        # The size in the directory may lie: read at most limit + 1 bytes anyway.
        with archive.open(members[0]) as f:
            out = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
            RuntimeError) as exc:
        raise ReportError(f"not a usable zip file: {exc}") from None
    if len(out) > limit:
        raise ReportError(f"decompresses to more than {limit} bytes")
    return out


_UNPACK = {"gzip": gunzip, "zip": unzip}


def _read(entry: R, kind: str, data: bytes, limit: int, what: str,
          parse: Callable[[bytes, R], None]) -> R:
    """`entry` as `parse` fills it in from `data` ("gzip", "zip" or plain by `kind`, at
    most `limit` bytes of `what` once decompressed), or `invalid` with why."""
    try:
        unpack = _UNPACK.get(kind)
        content = unpack(data, limit) if unpack else data
        if len(content) > limit:
            raise ReportError(f"more than {limit} bytes of {what}")
        parse(content, entry)
    except ReportError as exc:
        entry.status, entry.error = "invalid", str(exc)[:500]
    return entry


def report_files(raw: bytes, entry: type[R], *, kinds: tuple[FileKind, ...],
                 parse: Callable[[bytes, R], None], limit: int, what: str, max_files: int,
                 none_found: str) -> list[R]:
    """Each report file of the mail `raw` (a part of one of the `kinds`, the first that
    fits) as an `entry` (the ReportFile of the report's kind) that `parse(content,
    entry)` fills in, a file holding at most `limit` bytes of `what` (XML, JSON) once
    decompressed. A file `parse` refuses (ReportError) keeps what it filled in, so
    `parse` sets the report's content only once it is whole. A mail with no report gives
    one invalid entry (`none_found`). Never raises for what a sender wrote."""
    try:
        msg = email.message_from_bytes(raw, policy=policy.compat32)
    except Exception as exc:  # the email package raises assorted errors on odd input
        return [entry.invalid("", f"unreadable message: {exc}")]
    found: list[R] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename() or ""
        kind = _kind_of(kinds, part.get_content_type(), filename)
        if kind is None:
            continue
        if len(found) >= max_files:
            found.append(entry.invalid(filename, f"more than {max_files} files"))
            break
        try:
            data = part.get_payload(decode=True) or b""
        except Exception as exc:
            found.append(entry.invalid(filename, f"undecodable part: {exc}"))
            continue
        found.append(_read(entry((filename or f"report.{kind}")[:255]), kind, data, limit,
                           what, parse))
    return found or [entry.invalid("", none_found)]
