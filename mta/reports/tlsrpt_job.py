"""The daily TLS reports (RFC 8460): for each recipient domain we had sessions with on a
day and that publishes `_smtp._tls` rua URIs, one report, mailed or POSTed to each.

A day is sent once across nodes: whoever sends it (the node job `TlsReportJob`, or `mta
reports tls send`) first takes it with a lease in `tls_report_runs` and marks it finished
at the end; a node that dies mid-run leaves the lease to expire and the day to the next
taker (a destination may then get a report twice, never none). A destination that fails
(DNS trouble, an HTTP error) is written into the day's summary; the others are sent.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

from mta.background import LoopService, run_every
from mta.dnscache import DnsError, DnsResolver
from mta.observe import metrics
from mta.reports.tlsrpt_build import Report, build_report
from mta.reports.tlsrpt_policy import report_destinations
from mta.reports.tlsrpt_send import SendError, Signer, mail_report, post_report
from mta.store.db import Database
from mta.store.tlsrpt import claim_run, domains_for_day, finish_run, sessions_for_day

__all__ = ["Sent", "TlsReportJob", "build_day", "send_day"]

log = logging.getLogger("mta.tlsrpt")
LEASE = timedelta(minutes=30)


@dataclass
class Sent:
    domain: str
    destination: str
    status: str  # queued | posted | dry-run | failed
    detail: str = ""


def identity(settings) -> tuple[str, str, str, str]:
    """(submitter, from address, organization, contact) as configured."""
    conf = settings.tls_reports
    submitter = (conf.submitter or settings.routing.forwarding_domain
                 or settings.node.hostname).lower()
    sender = conf.from_address or f"noreply-tlsrpt@{submitter}"
    return submitter, sender, conf.organization or submitter, conf.contact or sender


async def build_day(db: Database, settings, day: date) -> list[Report]:
    """One report per recipient domain with sessions on `day`."""
    submitter, _, organization, contact = identity(settings)
    reports = []
    for domain in await domains_for_day(db, day):
        rows = await sessions_for_day(db, day, domain)
        reports.append(build_report(rows, domain, day, organization=organization,
                                    contact=contact, submitter=submitter))
    return reports


async def send_day(db: Database, settings, resolver: DnsResolver, day: date, *,
                   dry_run: bool = False, owner: str = "cli", now: datetime | None = None,
                   verify=True, sign: Signer | None = None) -> list[Sent] | None:
    """Send `day`'s reports; None when another taker holds or already finished the day.
    `dry_run`: build and look up destinations, send nothing, take nothing."""
    now = now or datetime.now(UTC)
    if not dry_run and not await claim_run(db, day, owner, now, LEASE):
        return None
    submitter, sender, _, _ = identity(settings)
    timeout = float(settings.tls_reports.http_timeout)
    out: list[Sent] = []
    for report in await build_day(db, settings, day):
        try:
            destinations = await report_destinations(resolver, report.domain)
        except DnsError as exc:
            out.append(Sent(report.domain, "", "failed", f"_smtp._tls lookup: {exc}"))
            continue
        for uri in destinations:
            if dry_run:
                out.append(Sent(report.domain, uri, "dry-run"))
                continue
            try:
                if uri.lower().startswith("mailto:"):
                    await mail_report(db, uri, report, sender=sender, submitter=submitter,
                                      now=now, sign=sign)
                    out.append(Sent(report.domain, uri, "queued"))
                else:
                    code = await post_report(
                        uri, report, timeout=timeout, resolver=resolver, verify=verify,
                        allow_private=settings.tls_reports.allow_private_targets)
                    out.append(Sent(report.domain, uri, "posted", f"HTTP {code}"))
            except SendError as exc:
                out.append(Sent(report.domain, uri, "failed", str(exc)))
    if not dry_run:
        await finish_run(db, day, owner, datetime.now(UTC),
                         {"sent": [asdict(s) for s in out]})
    for s in out:
        if not dry_run:
            metrics.TLS_REPORTS_SENT.labels(s.status).inc()
        log.info("TLS report for %s %s: %s %s", s.domain, s.destination or "-", s.status,
                 s.detail, extra={"event": "tlsrpt.report", "domain": s.domain,
                                  "destination": s.destination, "status": s.status})
    return out


class TlsReportJob(LoopService):
    """A node service: now and then, send yesterday's reports if no one has."""

    name = "tls-report-sender"

    def __init__(self, ctx, sign: Signer | None = None) -> None:
        self.ctx = ctx
        self.sign = sign

    def describe(self) -> dict:
        return {"worker": self.name,
                "interval_s": float(self.ctx.settings.tls_reports.check_interval)}

    async def run(self) -> list[Sent] | None:
        now = datetime.now(UTC)
        # Every process flushes its counts within flush_interval: wait that long (and a
        # minute for clocks) after midnight before the day counts as complete.
        settle = 2 * float(self.ctx.settings.tls_reports.flush_interval) + 60
        yesterday = (now - timedelta(days=1, seconds=settle)).date()
        return await send_day(self.ctx.db, self.ctx.settings, self.ctx.resolver, yesterday,
                              owner=self.ctx.node_id, sign=self.sign)

    async def _loop(self) -> None:
        # Nodes started together spread their first looks over a while; the counts of
        # the day's last minutes reach the table within a flush interval anyway. A look
        # that fails leaves its lease to run out; the next look tries again.
        await run_every(self.run, max(float(self.ctx.settings.tls_reports.check_interval), 1.0),
                        spread=300.0, failed=lambda exc: log.warning(
                            "TLS reports not sent: %s", exc,
                            extra={"event": "tlsrpt.send_failed"}))
