"""TLS reports others send about our domains (RFC 8460): the report files found in one
mail to a `tls_reports.intake_addresses` mailbox, each parsed into a
`tls_reports_received` row.

A report is JSON, gzip-compressed (`application/tlsrpt+gzip`, `.json.gz`) or plain
(`application/tlsrpt+json`, `.json`). Everything is bounded, so a hostile mail costs
little: at most `MAX_FILES` report files per mail, each at most `MAX_JSON` bytes after
decompression (a gzip bomb stops there and is recorded as invalid), at most
`MAX_POLICIES` policies per report and `MAX_DETAILS` failure details per policy. A file
that cannot be used still gives a row, with status `invalid` and why; the mail itself
is kept either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mta.reports.intake_mail import FileKind, ReportError, ReportFile, report_files

__all__ = ["MAX_JSON", "ParsedTlsReport", "parse_tls_report_mail"]

MAX_JSON = 4 << 20  # bytes of JSON per report file, after decompression
MAX_FILES = 8  # report files per mail
MAX_POLICIES = 1_000  # policies per report
MAX_DETAILS = 1_000  # failure-details per policy
_KINDS = (
    FileKind("gzip", ("application/tlsrpt+gzip", "application/gzip", "application/x-gzip"),
             (".json.gz", ".json.gzip")),
    FileKind("json", ("application/tlsrpt+json", "application/json"), (".json",)),
)


@dataclass
class ParsedTlsReport(ReportFile):
    # one entry per policy: policy_type, policy_domain, mx_host, successful, failed,
    # failures {result-type: failed sessions}
    policies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def successful(self) -> int:
        return sum(p["successful"] for p in self.policies)

    @property
    def failed(self) -> int:
        return sum(p["failed"] for p in self.policies)


def _str(obj: dict, key: str, limit: int = 253) -> str:
    value = obj.get(key)
    return value.strip()[:limit] if isinstance(value, str) else ""


def _count(obj: dict, key: str) -> int:
    value = obj.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportError(f"{key} is not a count: {value!r}")
    return value


def _when(value: Any) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ReportError(f"date-range value {value!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise ReportError(f"date-range value {value!r} has no time zone")
    return when


def _policy(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("policy"), dict):
        raise ReportError("a policies entry has no policy object")
    pol, summary = entry["policy"], entry.get("summary")
    if not isinstance(summary, dict):
        raise ReportError("a policies entry has no summary object")
    domain = _str(pol, "policy-domain").lower().rstrip(".")
    if not domain:
        raise ReportError("a policy has no policy-domain")
    details = entry.get("failure-details", [])
    if not isinstance(details, list):
        raise ReportError("failure-details is not a list")
    if len(details) > MAX_DETAILS:
        raise ReportError(f"more than {MAX_DETAILS} failure-details in a policy")
    failures: dict[str, int] = {}
    for d in details:
        if not isinstance(d, dict):
            raise ReportError("a failure-details entry is not an object")
        kind = _str(d, "result-type", 64) or "unknown"
        failures[kind] = failures.get(kind, 0) + _count(d, "failed-session-count")
    mx = pol.get("mx-host")
    return {"policy_type": _str(pol, "policy-type", 32) or "unknown",
            "policy_domain": domain,
            "mx_host": [str(m)[:253] for m in mx[:20]] if isinstance(mx, list) else [],
            "successful": _count(summary, "total-successful-session-count"),
            "failed": _count(summary, "total-failure-session-count"),
            "failures": failures}


def _parse_json(data: bytes, out: ParsedTlsReport) -> None:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ReportError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReportError("the report is not a JSON object")
    out.org_name = _str(doc, "organization-name") or None
    out.report_id = _str(doc, "report-id") or None
    dates = doc.get("date-range")
    if not out.org_name or not out.report_id or not isinstance(dates, dict):
        raise ReportError("organization-name, report-id and date-range are required")
    out.begin = _when(dates.get("start-datetime"))
    out.end = _when(dates.get("end-datetime"))
    policies = doc.get("policies")
    if not isinstance(policies, list) or not policies:
        raise ReportError("policies is missing or empty")
    if len(policies) > MAX_POLICIES:
        raise ReportError(f"more than {MAX_POLICIES} policies")
    out.policies = [_policy(p) for p in policies]  # the entry's only once all are read


def parse_tls_report_mail(raw: bytes) -> list[ParsedTlsReport]:
    """Every TLS report file of the mail `raw`, parsed; one `invalid` entry when it
    holds none. Never raises for what a sender wrote."""
    return report_files(raw, ParsedTlsReport, kinds=_KINDS, parse=_parse_json,
                        limit=MAX_JSON, what="JSON", max_files=MAX_FILES,
                        none_found="no TLS report (JSON, gzip) in the mail")
