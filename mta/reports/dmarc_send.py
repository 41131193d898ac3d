"""Sending DMARC aggregate reports: one per policy domain and UTC day, to each `rua`
mailto destination that passes the §7.1 check and whose size limit the report fits.

A report is composed by the sending pipeline (mta/sending/service.py) like any mail of
the account `dmarc_reports.account`: From `dmarc_reports.sender`, DKIM-signed with its
sending domain's key, queued durably, delivered (and retried) by the delivery workers.

Once across nodes: before sending, a node inserts the (policy domain, period) row of
`dmarc_reports_sent` with ON CONFLICT DO NOTHING; only the node whose insert took the row
sends, and the row then says where the report went. A node that dies between its claim
and the queueing loses that one report (reports are statistics; never two copies).

`DmarcReportJob` is the node service (under `--workers N`, worker 0 only): every
`dmarc_reports.interval` it sends the reports of the two previous UTC days not yet
claimed (so a node down at midnight catches up) and deletes `dmarc_results` rows older
than `dmarc_reports.retention`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert

from mta.background import LoopService
from mta.errors import MtaError
from mta.observe import metrics
from mta.reports.dmarc_aggregate import (
    AggregateReport,
    collect,
    gzipped,
    report_filename,
    report_xml,
)
from mta.reports.dmarc_rua import parse_rua, rua_of, verify_destination
from mta.store.accounts import resolve_account
from mta.store.models import DmarcReportSent, DmarcResultRow

__all__ = ["DmarcReportJob", "ReportOutcome", "day_period", "send_reports"]

log = logging.getLogger("mta.reports")


def day_period(day: date) -> tuple[datetime, datetime]:
    begin = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return begin, begin + timedelta(days=1)


@dataclass
class ReportOutcome:
    policy_domain: str
    report_id: str
    records: int
    messages: int
    size: int  # bytes of the gzip attachment
    status: str  # sent | already_sent | dry_run | no_destination
    destinations: list[dict[str, Any]] = field(default_factory=list)  # {uri, outcome, why}
    xml: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {"policy_domain": self.policy_domain, "report_id": self.report_id,
                "records": self.records, "messages": self.messages, "size": self.size,
                "status": self.status, "destinations": self.destinations}


async def _claim(ctx: Any, rep: AggregateReport, report_id: str) -> bool:
    stmt = insert(DmarcReportSent).values(
        policy_domain=rep.policy_domain, period_begin=rep.begin, period_end=rep.end,
        report_id=report_id, node_id=ctx.node_id, records=len(rep.rows),
        messages=rep.messages, destinations=[]).on_conflict_do_nothing().returning(
        DmarcReportSent.report_id)
    async with ctx.db.session() as s:
        return (await s.execute(stmt)).first() is not None


async def _record(ctx: Any, rep: AggregateReport, destinations: list[dict]) -> None:
    async with ctx.db.session() as s:
        await s.execute(update(DmarcReportSent).where(
            DmarcReportSent.policy_domain == rep.policy_domain,
            DmarcReportSent.period_begin == rep.begin).values(destinations=destinations))


def _request(sender: str, to: str, rep: AggregateReport, org: str, report_id: str,
             filename: str, blob: bytes) -> dict[str, Any]:
    return {
        "from": sender, "to": [to],
        # §7.2.1.1: the Subject names the report domain, the submitter and the id.
        "subject": f"Report Domain: {rep.policy_domain} Submitter: {org} "
                   f"Report-ID: <{report_id}>",
        "text": (f"DMARC aggregate report for {rep.policy_domain} from {org}, "
                 f"{rep.begin:%Y-%m-%d %H:%M} to {rep.end:%Y-%m-%d %H:%M} UTC: "
                 f"{rep.messages} message(s) in {len(rep.rows)} record(s).\r\n"),
        "attachments": [{"content": base64.b64encode(blob).decode(), "filename": filename,
                         "type": "application/gzip", "disposition": "attachment"}],
    }


async def send_reports(ctx: Any, service: Any, begin: datetime, end: datetime, *,
                       dry_run: bool = False, domain: str | None = None
                       ) -> list[ReportOutcome]:
    """Build and send (or with `dry_run` only build) the reports of [begin, end).
    `service`: a SendingService (unused with `dry_run`)."""
    conf = ctx.settings.dmarc_reports
    org = conf.org_name or ctx.settings.node.hostname
    account_id = None
    if not dry_run:
        async with ctx.db.session() as s:
            account = await resolve_account(s, conf.account)
        if account is None:
            raise ValueError(f"dmarc_reports.account {conf.account!r} names no one account")
        account_id = account.id
    outcomes: list[ReportOutcome] = []
    for rep in await collect(ctx.db, begin, end, domain):
        report_id = f"{begin:%Y%m%d}.{uuid.uuid4().hex[:16]}@{org}"
        xml = report_xml(rep, org_name=org, email=conf.sender or f"postmaster@{org}",
                         report_id=report_id)
        blob = gzipped(xml)
        out = ReportOutcome(rep.policy_domain, report_id, len(rep.rows), rep.messages,
                            len(blob), "dry_run" if dry_run else "sent", xml=xml)
        outcomes.append(out)
        if not dry_run and not await _claim(ctx, rep, report_id):
            out.status, out.report_id = "already_sent", ""
            continue
        filename = report_filename(org, rep)
        for dest in parse_rua(rua_of(rep.record)):
            allowed, why = await verify_destination(ctx.resolver, rep.policy_domain, dest)
            entry: dict[str, Any] = {"uri": dest.uri, "address": dest.address, "why": why}
            # The limit bounds what arrives: the attachment as it travels (base64).
            encoded = (len(blob) + 2) // 3 * 4
            if not allowed:
                entry["outcome"] = "refused"
            elif dest.max_size is not None and encoded > dest.max_size:
                entry["outcome"], entry["why"] = "too_large", (
                    f"report is {encoded} bytes, the destination takes {dest.max_size}")
            elif dry_run:
                entry["outcome"] = "would_send"
            else:
                try:
                    result = await service.send(account_id, _request(
                        conf.sender, dest.address, rep, org, report_id, filename, blob),
                        source="report")
                    entry["outcome"] = "suppressed" if result.suppressed_recipients \
                        else "queued"
                    entry["message_id"] = result.message_id
                except MtaError as exc:
                    entry["outcome"], entry["why"] = "failed", f"{exc.code}: {exc}"
            out.destinations.append(entry)
            if not dry_run:
                metrics.DMARC_REPORTS.labels(entry["outcome"]).inc()
        if not out.destinations:
            out.status = "no_destination"
        if not dry_run:
            await _record(ctx, rep, out.destinations)
            log.info("DMARC report %s for %s: %s", report_id, rep.policy_domain,
                     ", ".join(f"{d['address']} {d['outcome']}" for d in out.destinations),
                     extra={"event": "reports.dmarc_sent", "domain": rep.policy_domain})
    return outcomes


async def purge_results(db: Any, cutoff: datetime) -> int:
    async with db.session() as s:
        return (await s.execute(delete(DmarcResultRow).where(DmarcResultRow.ts < cutoff))
                ).rowcount or 0


class DmarcReportJob(LoopService):
    """The daily DMARC aggregate reports of this node (see the module comment)."""

    name = "dmarc-reports"

    def __init__(self, ctx: Any, service: Any) -> None:
        self.ctx = ctx
        self.service = service

    def describe(self) -> dict:
        return {"service": self.name}

    async def run_once(self) -> None:
        today = self.ctx.clock().astimezone(UTC).date()
        for back in (2, 1):
            begin, end = day_period(today - timedelta(days=back))
            await send_reports(self.ctx, self.service, begin, end)
        conf = self.ctx.settings.dmarc_reports
        await purge_results(self.ctx.db, self.ctx.clock() - timedelta(
            seconds=float(conf.retention)))

    async def _loop(self) -> None:
        interval = float(self.ctx.settings.dmarc_reports.interval)
        while True:
            try:
                await self.run_once()
            except Exception:  # a bad run must not end the job; the next one tries again
                log.exception("DMARC aggregate reports failed; retrying in %.0f s", interval)
            await asyncio.sleep(interval)
