"""What the MX listener does with a client and a message, apart from the protocol.

`Intake` is shared by every session of one listener. It answers the questions a session
asks — is the client on a block list, do we take mail for this recipient, what is the
policy for that domain — and at the end of DATA runs the pipeline for one message:

    checks (authcheck) -> decision (checks.policy, a value) -> side effects:
      accept: strip forged Authentication-Results, prepend Received and ours, commit the
              message and its events (and what routing adds) as one unit — possibly in a
              transaction shared with other sessions (`mta.store.commit`) — then 250,
              never before;
      refuse: an event with the reason and the auth results, then the 4xx/5xx reply.

A failure to commit is 451 4.3.0: the client keeps the message and retries — except
after an in-session forward the next hop accepted: the message is out, so the answer
is 250 and only our record of it is lost (logged `mx.record_lost`, counted).
Settings read: `inbound.*`, `limits.inbound_message_size`, `node.hostname`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from mta import replies
from mta.checks.policy import Decision, EffectivePolicy, effective_policy
from mta.checks.rbl import RblChecker, RblResult
from mta.checks.results import AuthResults, strip_our_auth_results
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.observe import metrics
from mta.observe.events import event_rows, record_events_now
from mta.queue.dsnparams import Dsn
from mta.replies import Reply
from mta.reports.dmarc_intake import parse_report_mail
from mta.reports.tls_intake import parse_tls_report_mail
from mta.reports.tls_received import TLS_REPORTS_RECEIVED
from mta.reports.tls_received import received_row as tls_received_row
from mta.routing.recipients import RecipientDirectory, RecipientVerdict
from mta.smtp.authcheck import Reverse, from_header, judge, run_checks, verdicts_of
from mta.smtp.dmarcrow import DMARC_RESULTS, REPORTS_RECEIVED, dmarc_row, received_row
from mta.smtp.headers import auth_results_field, header_value, prepend, received_field
from mta.store.db import Database, Unit
from mta.store.rows import EVENTS, MESSAGES, full_row

__all__ = ["ClientInfo", "Intake", "Transaction"]

log = logging.getLogger("mta.smtp.mx")


@dataclass
class ClientInfo:
    """Facts about the connected client, recorded with every message."""

    session_id: str
    ip: str
    port: int
    helo: str | None = None
    reverse: Reverse | None = None
    tls: dict[str, Any] | None = None


@dataclass
class Transaction:
    """One MAIL ... DATA transaction."""

    mail_from: str
    spf_task: asyncio.Task | None = None
    recipients: list[RecipientVerdict] = field(default_factory=list)
    policy: EffectivePolicy | None = None
    rcpt_commands: int = 0  # every RCPT of the transaction, repeats and refusals included
    smtputf8: bool = False  # MAIL ... SMTPUTF8 (RFC 6531): UTF-8 addresses and headers
    # RFC 3461 (DSN): MAIL's RET and ENVID, each accepted recipient's NOTIFY and ORCPT.
    dsn: Dsn = field(default_factory=Dsn)

    def cancel(self) -> None:
        if self.spf_task is not None and not self.spf_task.done():
            self.spf_task.cancel()


class Intake:
    def __init__(self, settings: Settings, db: Database, resolver: DnsResolver) -> None:
        self.settings = settings
        self.db = db
        self.resolver = resolver
        inbound = settings.inbound
        self.hostname = settings.node.hostname
        self.authserv_id = inbound.authserv_id or settings.node.hostname
        self.size_limit = int(settings.limits.inbound_message_size)
        self.bare = inbound.bare_line_endings
        self.directory = RecipientDirectory(db, inbound.recipient_cache_ttl)
        self.rbl = RblChecker(resolver, inbound.rbl.zones, inbound.rbl.allowlist)
        # The routing pipeline (mta.routing.inbound.InboundRouter, duck-typed so this
        # module does not depend on it): `route(...)` -> Routed(reply | stage()). None =
        # accepted mail stays stored as "received" for a later consumer.
        self.router: Any = None
        # report mailbox -> the kind of report its mail is parsed as
        self.report_addresses = {a.strip().lower(): "dmarc"
                                 for a in settings.dmarc_reports.intake_addresses}
        self.report_addresses.update({a.strip().lower(): "tls"
                                      for a in settings.tls_reports.intake_addresses})

    # -- questions during the session ----------------------------------------------------

    async def check_rbl(self, ip: str) -> RblResult:
        """Never raises: an unusable address or DNS trouble fails open (logged)."""
        if self.rbl.allowlisted(ip) or not self.rbl.zones:
            return RblResult(listed=False, skipped_by_allowlist=self.rbl.allowlisted(ip))
        try:
            result = await self.rbl.check(ip)
        except Exception as exc:
            log.warning("RBL check of %s failed, not counted as listed: %s", ip, exc)
            return RblResult(listed=False, errors=["*"])
        for zone in result.listed_zones:
            metrics.RBL_HITS.labels(zone).inc()
        return result

    def rbl_reply(self, ip: str, result: RblResult) -> Reply:
        zones = ", ".join(result.listed_zones or [result.zone or "?"])
        return replies.RBL_LISTED.format(ip=ip, zones=zones)

    async def recipient(self, address: str) -> RecipientVerdict:
        addr = address.strip().lower()
        if addr in self.report_addresses:  # DMARC or TLS reports about us
            return RecipientVerdict("accepted", addr, addr.rpartition("@")[2],
                                    report_intake=self.report_addresses[addr])
        # routing (issue 5): bounces to our SRS addresses; forged/expired -> 550 5.1.1
        srs = self.router.srs_recipient(address) if self.router is not None else None
        if srs is not None:
            return srs
        verdict = await self.directory.lookup(address)
        # issue 4: not a routing domain; maybe a return-path domain (VERP bounces, ARF)
        if verdict.kind == "relay_denied" and self.router is not None:
            bounce = await self.router.bounce_recipient(address)
            if bounce is not None:
                return bounce
        return verdict

    def policy_for(self, domain: str) -> EffectivePolicy:
        inbound = self.settings.inbound
        return effective_policy(inbound.policy, inbound.domain_policies, domain)

    async def refused(self, client: ClientInfo, reason: str, reply: Reply, *,
                      mail_from: str | None = None, recipients: list[str] | None = None,
                      auth: AuthResults | None = None, extra: dict | None = None,
                      per_recipient: dict[str, dict] | None = None) -> None:
        """Count and log a refusal as an activity event (best effort, never raises).
        `per_recipient`: the accounts and zones of recipients already resolved, so the
        event reaches their activity logs and webhooks."""
        metrics.INBOUND_REJECTIONS.labels(reason).inc()
        details = {"reason": reason, "reply": reply.line(), "client_ip": client.ip,
                   "helo": client.helo, "session_id": client.session_id,
                   "temporary": reply.temporary}
        if auth is not None:
            details["auth_results"] = auth.to_json()
        details.update(extra or {})
        rows = event_rows(direction="inbound", status="Rejected", recipients=recipients or [],
                          mail_from=mail_from, auth=_auth_summary(auth), details=details,
                          per_recipient=per_recipient)
        await record_events_now(self.db, rows)

    async def _record_dmarc(self, client: ClientInfo, txn: Transaction,
                            results: AuthResults, disposition: str) -> None:
        """The aggregate report row of a refused message (best effort: a report is
        statistics, it must not change the reply)."""
        row = dmarc_row(results, source_ip=client.ip, mail_from=txn.mail_from,
                        disposition=disposition)
        if row is None:
            return
        try:
            async with self.db.connection() as conn:
                await conn.execute(DMARC_RESULTS.insert(), [row])
        except Exception as exc:
            log.warning("could not record the DMARC report row of session %s: %s",
                        client.session_id, exc)

    # -- end of DATA ---------------------------------------------------------------------

    async def finish(self, client: ClientInfo, txn: Transaction, content: bytes) -> Reply:
        """Check, decide and (when accepted) store one message; the reply to send."""
        metrics.INBOUND_SIZE_BYTES.observe(len(content))
        rcpts = [r.address for r in txn.recipients]
        started = time.perf_counter()
        author = from_header(content)
        try:
            spf_task = txn.spf_task
            assert spf_task is not None
            iprev = client.reverse.iprev if client.reverse else None
            results = await run_checks(self.resolver, content, spf_task, author, iprev)
        except Exception:
            log.exception("authentication checks failed for session %s", client.session_id)
            metrics.INBOUND_MESSAGES.labels("error").inc()
            await self.refused(client, "check_error", replies.LOCAL_ERROR,
                               mail_from=txn.mail_from, recipients=rcpts,
                               per_recipient=_per_rcpt(txn))
            return replies.LOCAL_ERROR
        policy = txn.policy or self.policy_for(rcpts[0].rpartition("@")[2])
        decision, reply = judge(verdicts_of(results, author), policy, results)
        metrics.INBOUND_CHECK_SECONDS.observe(time.perf_counter() - started)
        _count_auth(results)
        if reply is not None:
            metrics.INBOUND_MESSAGES.labels(
                "tempfailed" if decision.verdict == "tempfail" else "rejected").inc()
            await self.refused(client, decision.reason, reply, mail_from=txn.mail_from,
                               recipients=rcpts, auth=results,
                               extra={"subject": header_value(content, "Subject")},
                               per_recipient=_per_rcpt(txn))
            if reply.permanent:  # a 4xx is retried: the retry is what gets counted
                await self._record_dmarc(client, txn, results, "reject")
            return reply
        return await self._store(client, txn, content, results, decision)

    async def _store(self, client: ClientInfo, txn: Transaction, content: bytes,
                     results: AuthResults, decision: Decision) -> Reply:
        message_id = uuid.uuid4()
        rcpts = [r.address for r in txn.recipients]
        raw = strip_our_auth_results(content, self.authserv_id)
        raw = prepend(
            raw,
            received_field(helo=client.helo, ptr=client.reverse.ptr if client.reverse else None,
                           ip=client.ip, hostname=self.hostname, queue_id=message_id.hex,
                           tls=client.tls, recipient=rcpts[0] if len(rcpts) == 1 else None,
                           utf8=txn.smtputf8),
            auth_results_field(results.to_header(self.authserv_id, fold=True)))
        auth_json = results.to_json()
        auth_json["policy"] = {"reason": decision.reason, "quarantine": decision.quarantine,
                               "would_be": decision.would_be}
        first = txn.recipients[0].routing
        subject = header_value(content, "Subject")
        per_rcpt = _per_rcpt(txn)
        message = full_row(
            MESSAGES, None,
            id=message_id, direction="inbound", source="mx",
            account_id=first.account_id if first else None,
            message_id_header=(header_value(content, "Message-ID") or "")[:998] or None,
            mail_from=txn.mail_from, rcpt_to=rcpts, raw=raw, size=len(raw),
            session_id=client.session_id, client_ip=client.ip,
            client_ptr=client.reverse.ptr if client.reverse else None, helo=client.helo,
            tls=client.tls, auth_results=auth_json, status="received",
            dsn_ret=txn.dsn.ret, dsn_envid=txn.dsn.envid)
        unit = Unit()
        dmarc = dmarc_row(results, source_ip=client.ip, mail_from=txn.mail_from,
                          disposition="quarantine" if decision.quarantine else "none")
        if dmarc is not None:  # its report row commits with the message, or not at all
            unit.insert(DMARC_RESULTS, dmarc)
        unit.insert(EVENTS, event_rows(
            direction="inbound", status="Received", recipients=rcpts, mail_from=txn.mail_from,
            message_id=message_id, subject=subject, auth=_auth_summary(results),
            per_recipient=per_rcpt,
            details={"reason": decision.reason, "quarantine": decision.quarantine,
                     "would_be": decision.would_be, "client_ip": client.ip,
                     "session_id": client.session_id, "size": len(raw)}))
        routed = None
        intake = txn.recipients[0].report_intake  # the whole transaction: session.rcpt
        if intake == "tls":
            unit.insert(TLS_REPORTS_RECEIVED, [tls_received_row(r, message_id)
                                               for r in parse_tls_report_mail(raw)])
            message["status"] = "report"
        elif intake == "dmarc":
            reports = parse_report_mail(raw)
            unit.insert(REPORTS_RECEIVED, [received_row(r, message_id) for r in reports])
            message["status"] = "report"
        elif self.router is not None:
            try:
                routed = await self.router.route(
                    mail_from=txn.mail_from, recipients=txn.recipients, raw=raw, auth=results,
                    subject=subject, session_id=client.session_id, dsn=txn.dsn)
            except Exception:
                log.exception("routing failed for session %s", client.session_id)
                metrics.INBOUND_MESSAGES.labels("error").inc()
                return replies.LOCAL_ERROR
            if routed.reply is not None:  # refused by routing; it wrote its events
                metrics.INBOUND_MESSAGES.labels("rejected").inc()
                return routed.reply
        try:
            if routed is not None:  # deliveries, events, the final message status
                await routed.stage(unit, message)
            unit.insert(MESSAGES, message)
            await self.db.commit(unit)  # maybe shared with other sessions; durable now
        except Exception as exc:
            metrics.INBOUND_MESSAGES.labels("error").inc()
            if routed is not None and routed.delivered:
                # The in-session forward was accepted downstream: the message is out, and
                # a 451 would make the sender deliver it a second time. Tell the truth
                # (250) and lose only our record of it (docs/smtp.md, "Durability").
                metrics.INBOUND_RECORDS_LOST.inc()
                log.error("message %s from %s was forwarded but could not be recorded "
                          "(session %s): %s", message_id, client.ip, client.session_id, exc,
                          extra={"event": "mx.record_lost", "message_id": str(message_id),
                                 "session_id": client.session_id})
                return replies.QUEUED.format(queue_id=message_id.hex)
            log.error("could not store message from %s (session %s): %s", client.ip,
                      client.session_id, exc, extra={"event": "mx.store_failed"})
            return replies.STORE_FAILED
        metrics.INBOUND_MESSAGES.labels(
            "quarantined" if decision.quarantine else "accepted").inc()
        log.info("accepted message %s from %s for %s (%s)", message_id, client.ip,
                 ",".join(rcpts), decision.reason,
                 extra={"event": "mx.accepted", "message_id": str(message_id),
                        "session_id": client.session_id, "reason": decision.reason})
        return replies.QUEUED.format(queue_id=message_id.hex)


def _auth_summary(auth: AuthResults | None) -> dict[str, str] | None:
    if auth is None:
        return None
    return {"spf": auth.spf_result, "dkim": auth.dkim_result, "dmarc": auth.dmarc_result,
            "arc": auth.arc_result}


def _count_auth(results: AuthResults) -> None:
    metrics.AUTH_RESULTS.labels("spf", results.spf_result).inc()
    for sig in results.dkim or ():
        metrics.AUTH_RESULTS.labels("dkim", sig.result).inc()
    if not results.dkim:
        metrics.AUTH_RESULTS.labels("dkim", "none").inc()
    metrics.AUTH_RESULTS.labels("dmarc", results.dmarc_result).inc()
    metrics.AUTH_RESULTS.labels("arc", results.arc_result).inc()


def _per_rcpt(txn: Transaction) -> dict[str, dict]:
    """The event columns of each recipient resolved at RCPT: zone, account, rule."""
    return {r.address: {"zone_id": r.routing.zone_id if r.routing else None,
                        "account_id": r.routing.account_id if r.routing else None,
                        "rule_id": r.match.rule.id if r.match else None}
            for r in txn.recipients}
