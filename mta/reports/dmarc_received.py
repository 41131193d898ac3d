"""Reading the aggregate reports others sent about our domains (`dmarc_reports_received`):
per day and policy domain, how much mail they saw from which sources and how much of it
passed DMARC through aligned SPF or aligned DKIM — what `mta reports dmarc list|show`
and the admin API show."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select

from mta.reports.received import usable_once
from mta.store.db import Database
from mta.store.models import DmarcReportReceived, RoutingDomain, SendingDomain, Zone

__all__ = ["account_domains", "daily_summary", "report_detail", "report_list",
           "report_summary"]


async def account_domains(db: Database, account_id: str) -> set[str]:
    """The domains whose reports an account sees: its zones, their routing and sending
    domains (a report names the policy domain, which may be the organizational one)."""
    async with db.session() as s:
        zones = (await s.execute(select(Zone.id, Zone.name).where(
            Zone.account_id == account_id))).all()
        ids = [z.id for z in zones]
        names = {z.name for z in zones}
        for model in (RoutingDomain, SendingDomain):
            names.update((await s.execute(select(model.name).where(
                model.zone_id.in_(ids)))).scalars())
    return {n.lower() for n in names}


def _row(r: DmarcReportReceived) -> dict[str, Any]:
    return {"id": r.id, "received_at": r.received_at, "status": r.status, "error": r.error,
            "org_name": r.org_name, "report_id": r.report_id,
            "policy_domain": r.policy_domain, "begin": r.period_begin, "end": r.period_end,
            "messages": r.messages, "filename": r.filename,
            "message_id": str(r.message_id) if r.message_id else None}


async def report_list(db: Database, since: datetime, domain: str | None = None,
                      domains: set[str] | None = None) -> list[DmarcReportReceived]:
    """Reports received since `since`, newest first: invalid ones included unless
    `domains` limits them to those policy domains."""
    q = select(DmarcReportReceived).where(DmarcReportReceived.received_at >= since)
    if domain:
        q = q.where(DmarcReportReceived.policy_domain == domain.lower())
    if domains is not None:
        q = q.where(DmarcReportReceived.policy_domain.in_(sorted(domains)))
    async with db.session() as s:
        return list((await s.execute(q.order_by(DmarcReportReceived.id.desc()))).scalars())


def daily_summary(reports: list[DmarcReportReceived]) -> list[dict[str, Any]]:
    """One entry per (day the report covers, policy domain): reporters, messages,
    distinct sources, and messages with aligned SPF / aligned DKIM pass or fail; a report
    received twice counts once."""
    days: dict[tuple, dict[str, Any]] = {}
    sources: dict[tuple, set] = defaultdict(set)
    for r in usable_once(reports):
        key = (r.period_begin.date().isoformat(), r.policy_domain)
        d = days.setdefault(key, {"day": key[0], "policy_domain": key[1], "reports": 0,
                                  "reporters": [], "messages": 0, "sources": 0,
                                  "dmarc_pass": 0, "spf_pass": 0, "spf_fail": 0,
                                  "dkim_pass": 0, "dkim_fail": 0})
        d["reports"] += 1
        if r.org_name and r.org_name not in d["reporters"]:
            d["reporters"].append(r.org_name)
        for rec in r.records:
            n = rec.get("count", 0)
            d["messages"] += n
            sources[key].add(rec.get("source_ip"))
            spf, dkim = rec.get("spf") == "pass", rec.get("dkim") == "pass"
            d["spf_pass" if spf else "spf_fail"] += n
            d["dkim_pass" if dkim else "dkim_fail"] += n
            d["dmarc_pass"] += n if spf or dkim else 0
    for key, d in days.items():
        d["sources"] = len(sources[key])
    return sorted(days.values(), key=lambda d: (d["day"], d["policy_domain"]), reverse=True)


async def report_detail(db: Database, report_id: int,
                        domains: set[str] | None = None) -> dict[str, Any] | None:
    async with db.session() as s:
        r = await s.get(DmarcReportReceived, report_id)
    if r is None or (domains is not None and r.policy_domain not in domains):
        return None
    return {**_row(r), "records": r.records}


def report_summary(r: DmarcReportReceived) -> dict[str, Any]:
    return _row(r)
