"""The rows the MX writes for DMARC reporting: what a received message adds to its From
domain's aggregate report (`dmarc_row`), and the reports mailed to our report mailboxes
(`received_row`, parsed by mta/reports/dmarc_intake.py).

RFC 7489 §7.2 reports, per policy domain and period, what we saw: the source IP, the
identifiers, the raw SPF and DKIM results, DMARC alignment and the disposition we
actually applied (which may differ from what the domain asked: a local policy, or pct
sampling). Only mail whose DMARC record names a `rua=` is kept — nobody else reads it.
"""

from __future__ import annotations

import uuid
from typing import Any

from mta.checks.results import AuthResults
from mta.reports.dmarc_intake import ParsedReport
from mta.store.models import DmarcReportReceived, DmarcResultRow
from mta.store.rows import full_row

__all__ = ["DMARC_RESULTS", "REPORTS_RECEIVED", "dmarc_row", "received_row"]

DMARC_RESULTS = DmarcResultRow.__table__
REPORTS_RECEIVED = DmarcReportReceived.__table__

_DKIM_RESULTS = ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror")
_SPF_RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")


def _wants_reports(record: str) -> bool:
    return any(part.strip().lower().startswith("rua=") and part.partition("=")[2].strip()
               for part in record.split(";"))


def dmarc_row(auth: AuthResults, *, source_ip: str, mail_from: str,
              disposition: str) -> dict[str, Any] | None:
    """The `dmarc_results` row, or None when the From domain asks for no report.
    `disposition`: none | quarantine | reject, what this MX did with the message."""
    d = auth.dmarc
    if d is None or not d.record or not d.policy_domain or not _wants_reports(d.record):
        return None
    if d.result not in ("pass", "fail"):
        return None  # temperror/permerror: no evaluated policy to report
    reason = None
    if d.result == "fail" and disposition != d.disposition:
        reason = "local_policy"
    elif d.result == "fail" and d.disposition != d.policy:
        reason = "sampled_out"  # pct= chose the milder policy for this one
    spf = auth.spf
    return full_row(
        DMARC_RESULTS, None,
        source_ip=source_ip, header_from=d.from_domain[:253],
        envelope_from=mail_from.rpartition("@")[2].lower()[:253],
        policy_domain=d.policy_domain, record=d.record, result=d.result,
        disposition=disposition, dkim_aligned=bool(d.dkim_aligned),
        spf_aligned=d.spf_aligned,
        dkim=[{"domain": s.domain, "selector": s.selector,
               "result": s.result if s.result in _DKIM_RESULTS else "permerror"}
              for s in auth.dkim if s.domain],
        spf_domain=(spf.domain if spf else "")[:253],
        spf_scope="helo" if spf and spf.identity == "helo" else "mfrom",
        spf_result=spf.result if spf and spf.result in _SPF_RESULTS else "none",
        reason=reason)


def received_row(report: ParsedReport, message_id: uuid.UUID) -> dict[str, Any]:
    """The `dmarc_reports_received` row of one report file of a mail to a report mailbox."""
    return full_row(
        REPORTS_RECEIVED, None, message_id=message_id, filename=report.filename,
        status=report.status, error=report.error, org_name=report.org_name,
        report_id=report.report_id, policy_domain=report.policy_domain,
        period_begin=report.begin, period_end=report.end, messages=report.messages,
        records=report.records)
