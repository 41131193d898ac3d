"""One day's RFC 8460 §4 JSON report for one recipient domain, from the counters in
`tls_report_sessions` (mta/queue/tlsrpt.py fills them). Pure: rows in, bytes out."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

__all__ = ["Report", "build_report", "report_filename"]

SUCCESS = "success"


@dataclass(frozen=True)
class Report:
    domain: str
    day: date
    report_id: str
    body: dict

    def json_bytes(self) -> bytes:
        return json.dumps(self.body, indent=1).encode()

    def gzipped(self) -> bytes:
        # mtime=0: the same report always compresses to the same bytes.
        return gzip.compress(self.json_bytes(), mtime=0)

    @property
    def failures(self) -> int:
        return sum(p["summary"]["total-failure-session-count"] for p in self.body["policies"])

    @property
    def successes(self) -> int:
        return sum(p["summary"]["total-successful-session-count"]
                   for p in self.body["policies"])


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _mx_patterns(policy_type: str, strings: list[str]) -> list[str]:
    """RFC 8460 §4.4 `mx-host`: an MTA-STS policy's mx patterns."""
    if policy_type != "sts":
        return []
    return [s.partition(":")[2].strip() for s in strings if s.startswith("mx:")]


def build_report(rows: Iterable, domain: str, day: date, *, organization: str,
                 contact: str, submitter: str) -> Report:
    """`rows`: that day's TlsReportSession rows of `domain` (any order)."""
    start, end = _bounds(day)
    policies: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: (r.policy_type, r.policy_key, r.result,
                                          r.receiving_mx, r.receiving_ip, r.sending_ip)):
        key = (r.policy_type, r.policy_key)
        entry = policies.get(key)
        if entry is None:
            policy = {"policy-type": r.policy_type, "policy-domain": domain}
            if r.policy_strings:
                policy["policy-string"] = list(r.policy_strings)
            mx = _mx_patterns(r.policy_type, list(r.policy_strings))
            if mx:
                policy["mx-host"] = mx
            entry = policies[key] = {
                "policy": policy,
                "summary": {"total-successful-session-count": 0,
                            "total-failure-session-count": 0},
                "failure-details": []}
        if r.result == SUCCESS:
            entry["summary"]["total-successful-session-count"] += r.count
            continue
        entry["summary"]["total-failure-session-count"] += r.count
        detail = {"result-type": r.result, "failed-session-count": r.count}
        if r.sending_ip:
            detail["sending-mta-ip"] = r.sending_ip
        if r.receiving_mx:
            detail["receiving-mx-hostname"] = r.receiving_mx
        if r.receiving_ip:
            detail["receiving-ip"] = r.receiving_ip
        entry["failure-details"].append(detail)
    for entry in policies.values():
        if not entry["failure-details"]:
            del entry["failure-details"]
    report_id = f"{_stamp(start)}_{domain}_{submitter}"
    body = {"organization-name": organization,
            "date-range": {"start-datetime": _stamp(start), "end-datetime": _stamp(end)},
            "contact-info": contact, "report-id": report_id,
            "policies": list(policies.values())}
    return Report(domain, day, report_id, body)


def report_filename(report: Report, submitter: str) -> str:
    """RFC 8460 §5.1: sender!policy-domain!begin-timestamp!end-timestamp.json.gz, the
    timestamps in seconds since the epoch."""
    start, end = _bounds(report.day)
    return (f"{submitter}!{report.domain}!{int(start.timestamp())}!"
            f"{int(end.timestamp())}.json.gz")
