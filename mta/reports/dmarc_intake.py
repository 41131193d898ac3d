"""Aggregate reports others send about our domains (RFC 7489 §7.2): the report files
found in one mail, each parsed into a `dmarc_reports_received` row.

A report arrives as an attachment (or the whole body): gzip (`.xml.gz`), zip (`.zip`,
one XML file inside) or plain XML. Everything is bounded, so a hostile mail costs little:
at most `MAX_FILES` report files per mail, each decompressed to at most `MAX_XML` bytes
(a zip or gzip bomb stops there and the file is recorded as invalid), no DOCTYPE
(entity expansion) and at most `MAX_RECORDS` records. A file that cannot be used still
gives a row, with status `invalid` and why; the mail itself is kept either way.

Element names are read without their namespace: RFC 7489 reports carry
`http://dmarc.org/dmarc-xml/0.1`, most senders none, DMARCbis drafts another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from mta.reports.intake_mail import FileKind, ReportError, ReportFile, report_files

__all__ = ["MAX_XML", "ParsedReport", "parse_report_mail"]

MAX_XML = 8 << 20  # bytes of XML per report file, after decompression
MAX_FILES = 8  # report files per mail
MAX_RECORDS = 10_000  # <record>s per report
_KINDS = (
    FileKind("gzip", ("application/gzip", "application/x-gzip", "application/gzip-compressed"),
             (".gz", ".gzip")),
    FileKind("zip", ("application/zip", "application/x-zip-compressed", "application/x-zip"),
             (".zip",)),
    FileKind("xml", ("text/xml", "application/xml"), (".xml",)),
)


@dataclass
class ParsedReport(ReportFile):
    policy_domain: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(r["count"] for r in self.records)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(el: ET.Element | None, *path: str) -> ET.Element | None:
    for name in path:
        if el is None:
            return None
        el = next((c for c in el if _local(c.tag) == name), None)
    return el


def _text(el: ET.Element | None, *path: str) -> str:
    found = _child(el, *path)
    return (found.text or "").strip() if found is not None else ""


def _when(value: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError):
        raise ReportError(f"date_range value {value!r} is not a time") from None


def _parse_xml(xml: bytes, out: ParsedReport) -> None:
    if b"<!DOCTYPE" in xml[:4096].upper() or b"<!ENTITY" in xml.upper():
        raise ReportError("a DOCTYPE or ENTITY declaration is not accepted")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ReportError(f"not well-formed XML: {exc}") from None
    if _local(root.tag) != "feedback":
        raise ReportError(f"root element is <{_local(root.tag)}>, not <feedback>")
    meta = _child(root, "report_metadata")
    out.org_name = _text(meta, "org_name")[:253] or None
    out.report_id = _text(meta, "report_id")[:253] or None
    out.begin = _when(_text(meta, "date_range", "begin"))
    out.end = _when(_text(meta, "date_range", "end"))
    out.policy_domain = _text(root, "policy_published", "domain").lower()[:253] or None
    if not out.org_name or not out.report_id or not out.policy_domain:
        raise ReportError("org_name, report_id and policy_published/domain are required")
    records: list[dict[str, Any]] = []  # the entry's only once all are read
    for rec in (c for c in root if _local(c.tag) == "record"):
        if len(records) >= MAX_RECORDS:
            raise ReportError(f"more than {MAX_RECORDS} records")
        try:
            count = int(_text(rec, "row", "count"))
        except ValueError:
            raise ReportError("a record's count is not a number") from None
        auth = _child(rec, "auth_results")
        records.append({
            "source_ip": _text(rec, "row", "source_ip"),
            "count": max(count, 0),
            "disposition": _text(rec, "row", "policy_evaluated", "disposition"),
            "dkim": _text(rec, "row", "policy_evaluated", "dkim"),
            "spf": _text(rec, "row", "policy_evaluated", "spf"),
            "header_from": _text(rec, "identifiers", "header_from").lower(),
            "envelope_from": _text(rec, "identifiers", "envelope_from").lower(),
            "auth_dkim": [{"domain": _text(d, "domain"), "result": _text(d, "result"),
                           "selector": _text(d, "selector")}
                          for d in (auth if auth is not None else []) if _local(d.tag) == "dkim"],
            "auth_spf": [{"domain": _text(s, "domain"), "result": _text(s, "result")}
                         for s in (auth if auth is not None else []) if _local(s.tag) == "spf"],
        })
    out.records = records


def parse_report_mail(raw: bytes) -> list[ParsedReport]:
    """Every report file of the mail `raw`, parsed; one `invalid` entry when it holds
    none. Never raises for what a sender wrote."""
    return report_files(raw, ParsedReport, kinds=_KINDS, parse=_parse_xml, limit=MAX_XML,
                        what="XML", max_files=MAX_FILES,
                        none_found="no gzip, zip or XML report in the mail")
