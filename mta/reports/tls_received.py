"""The TLS reports others sent about our domains (`tls_reports_received`): how a row is
made from a parsed report, and how they read per day, reporting organization and
policy — successful and failed sessions and the failure types — as `mta reports tls
list|show` shows them (the shape of `dmarc_received`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select

from mta.reports.received import usable_once
from mta.reports.tls_intake import ParsedTlsReport
from mta.store.db import Database
from mta.store.models import TlsReportReceived
from mta.store.rows import full_row

__all__ = ["TLS_REPORTS_RECEIVED", "daily_summary", "received_row", "report_detail",
           "report_list", "report_summary", "visible"]

TLS_REPORTS_RECEIVED = TlsReportReceived.__table__


def received_row(report: ParsedTlsReport, message_id: uuid.UUID) -> dict[str, Any]:
    """The `tls_reports_received` row of one report file of a mail to a report mailbox."""
    return full_row(
        TLS_REPORTS_RECEIVED, None, message_id=message_id, filename=report.filename,
        status=report.status, error=report.error, org_name=report.org_name,
        report_id=report.report_id, period_begin=report.begin, period_end=report.end,
        successful=report.successful, failed=report.failed, policies=report.policies)


def report_summary(r: TlsReportReceived) -> dict[str, Any]:
    return {"id": r.id, "received_at": r.received_at, "status": r.status, "error": r.error,
            "org_name": r.org_name, "report_id": r.report_id, "begin": r.period_begin,
            "end": r.period_end, "successful": r.successful, "failed": r.failed,
            "policy_domains": sorted({p["policy_domain"] for p in r.policies}),
            "filename": r.filename,
            "message_id": str(r.message_id) if r.message_id else None}


async def report_list(db: Database, since: datetime) -> list[TlsReportReceived]:
    """Reports received since `since`, newest first, invalid ones included."""
    q = select(TlsReportReceived).where(TlsReportReceived.received_at >= since)
    async with db.session() as s:
        return list((await s.execute(q.order_by(TlsReportReceived.id.desc()))).scalars())


def visible(r: TlsReportReceived, domains: set[str]) -> bool:
    """Whether a report names one of `domains` (an account's: see
    dmarc_received.account_domains); an invalid one names none."""
    return any(p["policy_domain"] in domains for p in r.policies)


def daily_summary(reports: list[TlsReportReceived], domain: str | None = None,
                  domains: set[str] | None = None) -> list[dict[str, Any]]:
    """One entry per (day the report covers, reporting organization, policy domain,
    policy type): reports, successful and failed sessions, failed sessions per failure
    type; a report received twice counts once. `domain`: only that policy domain;
    `domains`: only those."""
    days: dict[tuple, dict[str, Any]] = {}
    for r in usable_once(reports):
        day = r.period_begin.date().isoformat()
        seen: set[tuple] = set()
        for p in r.policies:
            if domain and p["policy_domain"] != domain.lower():
                continue
            if domains is not None and p["policy_domain"] not in domains:
                continue
            key = (day, r.org_name, p["policy_domain"], p["policy_type"])
            d = days.setdefault(key, {"day": day, "org_name": r.org_name,
                                      "policy_domain": key[2], "policy_type": key[3],
                                      "reports": 0, "successful": 0, "failed": 0,
                                      "failures": {}})
            if key not in seen:  # a report may list one policy per MX host
                seen.add(key)
                d["reports"] += 1
            d["successful"] += p["successful"]
            d["failed"] += p["failed"]
            for kind, n in p["failures"].items():
                d["failures"][kind] = d["failures"].get(kind, 0) + n
    # newest day first; within a day by domain, reporter and policy type
    ordered = sorted(days.values(), key=lambda d: (d["policy_domain"], d["org_name"] or "",
                                                   d["policy_type"]))
    return sorted(ordered, key=lambda d: d["day"], reverse=True)


async def report_detail(db: Database, report_id: int,
                        domains: set[str] | None = None) -> dict[str, Any] | None:
    """One report with its policies; with `domains`, only if it names one of them, and
    only their policies."""
    async with db.session() as s:
        r = await s.get(TlsReportReceived, report_id)
    if r is None or (domains is not None and not visible(r, domains)):
        return None
    return {**report_summary(r), "policies": [
        p for p in r.policies if domains is None or p["policy_domain"] in domains]}
