"""The routing pipeline for one accepted message: rule -> action -> target.

Called by the MX listener (`mta.smtp.intake`) after the authentication policy accepted a
message and before it is stored. `InboundRouter.route()` returns a `Routed` value:

- `reply` set: the message must not be stored and the sender gets this reply now —
  a forwarding loop (554 5.4.6), `routing.dmarc_safe_from: reject` (550 5.7.1), the
  upstream 5xx of the in-session attempt (its code and text, nothing queued, no
  backscatter), or a local problem (451). Events are already written.
- otherwise `stage(unit, message)` adds to the unit of work that stores the message
  (`mta.store.commit`: nothing is acknowledged before it is durable): one delivery per
  destination, pointing at the received message with only what forwarding adds kept in
  `deliveries.prefix` (DKIM signatures, ARC set; a copy whose From was rewritten is
  stored whole), its final state in the INSERT (delivered when the in-session attempt
  succeeded, queued when it got 4xx / timed out / could not connect, or when there are
  several destinations) with the attempt row, the activity events, and the message's
  final status. `delivered` tells the listener that the message is already out (see
  docs/smtp.md, "Durability"). Then the listener answers 250.

Per recipient (the full address, `+detail` kept, is what events show): the rule is
matched again with the routing data the RCPT check used (`mta.routing.rules`, the one
matcher). Actions: `forward` to the rule's verified destinations; `drop` (accepted,
recorded `Dropped`); `worker` (recorded `Handled` with state pending and the message
status `handler_pending` — the seam for the handlers issue, which runs them).
Mail to an SRS0/SRS1 address at our SRS domain is reversed and forwarded to the original
sender (`srs_recipient_verdict` is the RCPT-time check: forged or expired -> 550 5.1.1).
Mail to a VERP or feedback address at a sending domain's return-path domain (issue 4) is
consumed by `mta.queue.bounces` in the same transaction (`bounce_recipient` at RCPT).

A forward to exactly one destination (and no handler) is tried in-session within
`routing.in_session_timeout`: 2xx -> 250, 5xx -> that reply, 4xx/timeout/no connection ->
queued with the attempt counted (the next one follows the retry schedule).
`routing.in_session_forward: false` queues it instead, as a forward to several.
Settings read: `routing.*`, `srs.*`, `retry.*`, `delivery.port`, `node.hostname`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mta import replies
from mta.checks.results import AuthResults
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.observe import metrics
from mta.observe.events import event_rows, record_events, record_events_now
from mta.queue import bounces
from mta.queue.dsnparams import (
    Dsn,
    RcptDsn,
    notify_wants,
    orcpt_for,
    success_dsn_due,
    without_success,
)
from mta.queue.outcome import RecipientOutcome
from mta.queue.queue import (
    PRIORITY_INTERACTIVE,
    PRIORITY_RETRY_BAND,
    Claimed,
    Recipient,
    RetryPolicy,
    attempt_row,
    delivery_row,
    utcnow,
)
from mta.replies import Reply
from mta.routing.forward import (
    ForwardCopy,
    Forwarder,
    ForwardError,
    dmarc_rewrite_needed,
    loop_problem,
    make_srs,
)
from mta.routing.recipients import RecipientVerdict
from mta.routing.rules import match_rule, normalize_address
from mta.signing.srs import SrsError, is_srs_address
from mta.store.db import Database, Unit
from mta.store.models import Message
from mta.store.rows import ATTEMPTS, DELIVERIES, EVENTS, MESSAGES, full_row

__all__ = ["Handlers", "InboundRouter", "Routed", "Target", "WorkerCall", "srs_recipient_verdict"]

log = logging.getLogger("mta.routing")


# -- RCPT time: our SRS addresses ---------------------------------------------------------------


def srs_recipient_verdict(address: str, settings: Settings) -> RecipientVerdict | None:
    """For an SRS0/SRS1 address at our SRS domain: accepted when it reverses (hash and
    age good), unknown (550 5.1.1) when forged, expired or malformed. None for every
    other address: the routing directory decides those."""
    srs = make_srs(settings)
    addr = normalize_address(address)
    domain = addr.rpartition("@")[2]
    if srs is None or domain != srs.domain.lower() or not is_srs_address(address):
        return None
    try:
        srs.reverse(address)
    except SrsError as exc:
        log.info("refused SRS address %s: %s", addr, exc,
                 extra={"event": "routing.srs_refused", "reason": type(exc).__name__})
        return RecipientVerdict("unknown", addr, domain)
    # The local part as given, byte for byte: it holds the original sender's local part,
    # and local parts are case-sensitive (RFC 5321 §2.4) — a bounce must reach
    # Carol.Jones, not carol.jones.
    return RecipientVerdict("accepted", f"{address.rpartition('@')[0]}@{domain}", domain)


# -- values -------------------------------------------------------------------------------------


@dataclass
class Target:
    """One forwarding destination and who it is for."""

    destination: str
    recipients: list[str]  # the original recipients that lead here
    per_rcpt: dict[str, dict[str, Any]]  # event columns per recipient (rule, zone, action)
    routing_domain: str | None
    kind: str = "forward"  # forward | srs (a bounce sent on to the original sender)
    headers: tuple[tuple[str, str], ...] = ()  # issue 7: X- headers of a handler's forward()


@dataclass
class WorkerCall:
    """One recipient whose rule runs handlers (what the plan hands to the handlers)."""

    rcpt: str
    domain: str
    account_id: str | None
    verified: frozenset[str]
    cols: dict[str, Any]
    info: dict[str, Any]
    names: list[str]


@dataclass
class Routed:
    reply: Reply | None = None  # refuse with this; nothing to store
    _stage: Callable[[Unit, dict[str, Any]], Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    delivered: bool = False  # the in-session forward was accepted by the next hop

    async def stage(self, unit: Unit, message: dict[str, Any]) -> None:
        """Add the deliveries, events and final status of `message` (its row) to the
        unit that stores it."""
        if self._stage is not None:
            await self._stage(unit, message)


@dataclass
class _Plan:
    targets: dict[str, Target] = field(default_factory=dict)
    events: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    handlers: bool = False
    unconfigured: bool = False
    # issue 7: recipients whose rule runs handlers, and what they add to the transaction
    workers: list[Any] = field(default_factory=list)
    stages: list[Callable[[AsyncSession, Message], Any]] = field(default_factory=list)
    bounces: list[str] = field(default_factory=list)  # issue 4: VERP/feedback recipients
    dsn: Dsn = field(default_factory=Dsn)  # RFC 3461: what the sender asked of DSNs

    def target_dsn(self, t: Target) -> RcptDsn:
        """NOTIFY and ORCPT of a forward: those of the (first) recipient leading to it;
        the recipient is rewritten, so ORCPT names it when the sender gave none
        (RFC 3461 §4.2, §5.2.7.2). A recipient forwarded to several destinations is a
        multiple-recipient alias (§5.2.7.3): its SUCCESS request is answered by one
        `expanded` DSN (`expanded()`), not passed on to every destination."""
        first = t.recipients[0]
        asked = self.dsn.rcpt(first)
        notify = asked.notify
        if first in self.expanded():
            notify = without_success(notify)
        return RcptDsn(notify, asked.orcpt or orcpt_for(first))

    def expanded(self) -> list[str]:
        """The recipients forwarded to more than one destination that asked
        NOTIFY=SUCCESS: each gets an `expanded` DSN when the message is accepted."""
        fanout: dict[str, int] = {}
        for t in self.targets.values():
            for rcpt in t.recipients:
                fanout[rcpt] = fanout.get(rcpt, 0) + 1
        return [r for r, n in fanout.items()
                if n > 1 and notify_wants(self.dsn.rcpt(r).notify, "SUCCESS")]

    def event(self, status: str, rcpt: str, cols: dict[str, Any], details: dict[str, Any]):
        self.events.append((status, rcpt, cols, details))


class Handlers(Protocol):
    """What the router needs of the handler runner (`mta.handlers.runner.HandlerRunner`)."""

    @property
    def active(self) -> bool: ...

    async def run(self, plan: Any, ctx: Any, *, mail_from: str, raw: bytes,
                  auth: AuthResults) -> Routed | None: ...


def _auth_summary(auth: AuthResults) -> dict[str, str]:
    return {"spf": auth.spf_result, "dkim": auth.dkim_result, "dmarc": auth.dmarc_result,
            "arc": auth.arc_result}


# -- the router ---------------------------------------------------------------------------------


class InboundRouter:
    def __init__(self, settings: Settings, db: Database, resolver: DnsResolver, *,
                 transport: Any = None, clock: Callable[[], datetime] = utcnow,
                 pool: Any = None) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.forwarder = Forwarder(settings, db, clock=clock)
        self.retry = RetryPolicy(settings.retry)
        self.timeout = float(settings.routing.in_session_timeout)
        if transport is None:
            from mta.queue.remote import remote_delivery_from_settings

            # `pool`: the node's outbound connections, shared with the queue workers.
            transport = remote_delivery_from_settings(
                settings, resolver, connect_timeout=min(30.0, self.timeout), pool=pool)
        self.transport = transport
        # issue 7: handlers run in-session; the node wires the runner in
        # (`mta.handlers.runner.HandlerRunner`), which sits above routing: its forward()
        # and reply() go through this router.
        self.handlers: Handlers | None = None
        self.verp_key = bounces.verp_key_or_none(settings)  # issue 4: bounces in

    async def bounce_recipient(self, address: str) -> RecipientVerdict | None:
        """issue 4: the RCPT-time hook for our return-path domains (`bounces.bounce_recipient`):
        a genuine VERP or feedback address is accepted, any other one is unknown (5.1.1)."""
        async with self.db.session() as s:
            ours = await bounces.bounce_recipient(s, address, self.verp_key)
        if ours is None:
            return None
        addr = normalize_address(address)
        domain = addr.rpartition("@")[2]
        if not ours:
            log.info("refused bounce address %s", addr,
                     extra={"event": "routing.bounce_refused"})
            return RecipientVerdict("unknown", addr, domain)
        return RecipientVerdict("accepted", addr, domain, bounce=True)

    def srs_recipient(self, address: str) -> RecipientVerdict | None:
        """The RCPT-time hook of the MX listener (see `srs_recipient_verdict`)."""
        return srs_recipient_verdict(address, self.settings)

    # -- planning -------------------------------------------------------------------------

    def _plan(self, recipients: Sequence[RecipientVerdict]) -> _Plan:
        plan = _Plan()
        srs = self.forwarder.srs
        for v in recipients:
            base = {"account_id": v.routing.account_id if v.routing else None,
                    "zone_id": v.routing.zone_id if v.routing else None}
            if v.bounce:  # issue 4: consumed by bounce intake in stage(), no rule
                plan.bounces.append(v.address)
                continue
            if v.routing is None:
                if srs is not None and v.domain == srs.domain.lower() and \
                        is_srs_address(v.address):
                    try:
                        original = srs.reverse(v.address)
                    except SrsError as exc:  # expired between RCPT and DATA
                        plan.event("Rejected", v.address, {**base, "action": "forward"},
                                   {"reason": "srs_invalid", "error": str(exc)})
                        continue
                    self._add_target(plan, original, v.address, {**base, "action": "forward"},
                                     None, "srs")
                    continue
                plan.event("Error", v.address, base, {"reason": "no_routing_data"})
                continue
            r = v.routing
            match = match_rule(r.rules, v.address, subaddressing=r.subaddressing,
                               verified=r.verified) or v.match
            if match is None:
                plan.event("Error", v.address, base, {"reason": "no_rule"})
                continue
            rule = match.rule
            for action in rule.actions:
                cols = {**base, "rule_id": rule.id, "action": action.type}
                info = {"rule": rule.name, "matched": match.matched, "match": match.kind}
                if action.type == "forward":
                    verified = [d for d in action.value if normalize_address(d) in r.verified]
                    skipped = [d for d in action.value if d not in verified]
                    if skipped:
                        info["unverified_destinations"] = skipped
                    for dest in verified:
                        self._add_target(plan, normalize_address(dest), v.address, cols,
                                         v.domain, "forward", info)
                    if not verified:
                        plan.event("Error", v.address, cols,
                                   {**info, "reason": "no_verified_destination"})
                elif action.type == "drop":
                    plan.event("Dropped", v.address, cols, info)
                elif action.type == "worker" and self.handlers is not None \
                        and self.handlers.active:  # issue 7
                    plan.workers.append(WorkerCall(
                        v.address, v.domain, r.account_id, frozenset(r.verified), cols,
                        info, list(action.value)))
                elif action.type == "worker":
                    plan.handlers = True
                    plan.event("Handled", v.address, cols,
                               {**info, "handler": list(action.value), "state": "pending"})
                else:
                    plan.event("Error", v.address, cols,
                               {**info, "reason": f"unknown action {action.type!r}"})
        return plan

    @staticmethod
    def _add_target(plan: _Plan, dest: str, rcpt: str, cols: dict[str, Any],
                    routing_domain: str | None, kind: str,
                    info: dict[str, Any] | None = None,
                    headers: tuple[tuple[str, str], ...] = ()) -> None:
        t = plan.targets.get(dest)
        if t is None:
            t = plan.targets[dest] = Target(dest, [], {}, routing_domain, kind, headers)
        if rcpt not in t.recipients:
            t.recipients.append(rcpt)
            t.per_rcpt[rcpt] = {**cols, "_info": info or {}}

    # -- the pipeline ---------------------------------------------------------------------

    async def route(self, *, mail_from: str, recipients: Sequence[RecipientVerdict],
                    raw: bytes, auth: AuthResults, subject: str | None = None,
                    session_id: str | None = None, dsn: Dsn | None = None) -> Routed:
        """Decide, build and (for one destination) deliver; see the module docstring.
        `raw` is the message as it will be stored (our trace fields on top); `dsn` what
        the sender asked of DSNs (RFC 3461), passed on with each forward."""
        plan = self._plan(recipients)
        plan.dsn = dsn or Dsn()
        ctx = _EventContext(mail_from, subject, _auth_summary(auth), session_id)
        if plan.workers and self.handlers is not None:  # issue 7: run them in-session
            refused = await self.handlers.run(plan, ctx, mail_from=mail_from, raw=raw,
                                              auth=auth)
            if refused is not None:
                return refused
        if plan.targets and self.forwarder.srs is None:
            # Forwarding is not configured on this node (no srs.domain / srs.secrets):
            # keep the message (status forward_unconfigured) and say so in the log and
            # the activity log, rather than relaying mail that fails SPF downstream.
            log.error("forwarding is not configured (srs.domain, srs.secrets): message "
                      "kept unforwarded", extra={"event": "routing.unconfigured",
                                                 "session_id": session_id})
            for t in plan.targets.values():
                for rcpt in t.recipients:
                    plan.event("Error", rcpt, t.per_rcpt[rcpt],
                               {"reason": "forwarding_unconfigured",
                                "destination": t.destination})
            plan.targets.clear()
            plan.unconfigured = True
        if not plan.targets:
            return Routed(None, self._stager(plan, ctx, {}), {"targets": 0})
        loop = loop_problem(raw, self.settings.routing.max_received,
                            self.settings.routing.max_arc_instances)
        if loop is not None:
            return await self._refuse(plan, ctx, replies.ROUTING_LOOP.format(detail=loop),
                                      "routing_loop", {"detail": loop})
        rewrite = dmarc_rewrite_needed(auth)
        mode = self.settings.routing.dmarc_safe_from
        if rewrite is not None and mode == "reject":
            reply = replies.FORWARD_DMARC_REFUSED.format(policy=rewrite[0], domain=rewrite[1])
            return await self._refuse(plan, ctx, reply, "dmarc_forward",
                                      {"policy": rewrite[0], "from_domain": rewrite[1]})
        try:
            copies = await self._copies(plan, raw, mail_from, auth,
                                        rewrite is not None and mode == "rewrite")
        except (ForwardError, ValueError) as exc:
            log.error("cannot forward: %s", exc, extra={"event": "routing.forward_error",
                                                        "session_id": session_id})
            return await self._refuse(plan, ctx, replies.LOCAL_ERROR, "forward_error",
                                      {"error": str(exc)}, status="Error")
        attempt: _Attempt | None = None
        if (len(plan.targets) == 1 and not plan.handlers
                and self.settings.routing.in_session_forward):
            target = next(iter(plan.targets.values()))
            attempt = await self._in_session(target, copies[target.destination], plan)
            if attempt.outcome.result == "failed":
                return await self._upstream_refused(plan, ctx, target, attempt)
        return Routed(None, self._stager(plan, ctx, copies, attempt),
                      {"targets": len(plan.targets),
                       "in_session": attempt.outcome.result if attempt else None},
                      delivered=attempt is not None and attempt.outcome.result == "delivered")

    async def _copies(self, plan: _Plan, raw: bytes, mail_from: str, auth: AuthResults,
                      rewrite: bool) -> dict[str, ForwardCopy]:
        """One signed copy per routing domain (its signature may differ), shared by the
        destinations of that domain."""
        by_domain: dict[tuple[str | None, tuple], ForwardCopy] = {}
        out: dict[str, ForwardCopy] = {}
        for dest, t in plan.targets.items():
            key = (t.routing_domain if self.settings.routing.sign_routing_domain else None,
                   t.headers)  # issue 7: a handler's X- headers make their own copy
            if key not in by_domain:
                by_domain[key] = await self.forwarder.copy(
                    _with_headers(raw, t.headers), mail_from, auth,
                    routing_domain=t.routing_domain, rewrite_from=rewrite)
            out[dest] = by_domain[key]
        return out

    async def _in_session(self, target: Target, copy: ForwardCopy, plan: _Plan) -> _Attempt:
        started = self.clock()
        domain = target.destination.rpartition("@")[2]
        dsn = Dsn(plan.dsn.ret, plan.dsn.envid, {target.destination: plan.target_dsn(target)})
        try:
            outcomes = await asyncio.wait_for(
                self.transport.deliver(domain, copy.envelope_from, [target.destination],
                                       copy.raw, dsn=dsn), self.timeout)
            outcome = next((o for o in outcomes if o.recipient == target.destination),
                           RecipientOutcome(target.destination, "deferred",
                                            detail="transport gave no outcome"))
        except TimeoutError:
            outcome = RecipientOutcome(target.destination, "deferred",
                                       detail=f"no answer within {self.timeout:g}s")
        except Exception as exc:  # unknown trouble is temporary: queue it
            log.warning("in-session forward to %s failed: %s", domain, exc)
            outcome = RecipientOutcome(target.destination, "deferred", detail=str(exc))
        return _Attempt(outcome, started, self.clock())

    async def _refuse(self, plan: _Plan, ctx: _EventContext, reply: Reply, reason: str,
                      details: dict[str, Any], status: str = "Rejected") -> Routed:
        metrics.INBOUND_REJECTIONS.labels(reason).inc()
        rows: list[dict[str, Any]] = []
        for t in plan.targets.values():
            for rcpt in t.recipients:
                rows += ctx.rows(status, rcpt, t.per_rcpt[rcpt],
                                 {"reason": reason, "reply": reply.line(),
                                  "destination": t.destination, **details})
        await record_events_now(self.db, rows)
        return Routed(reply, None, {"refused": reason})

    async def _upstream_refused(self, plan: _Plan, ctx: _EventContext, target: Target,
                                attempt: _Attempt) -> Routed:
        up = attempt.outcome.reply
        remote = str(up) if up is not None else (attempt.outcome.detail or "refused")
        reply = replies.FORWARD_REFUSED.format(remote=replies.quoted(remote))
        code = up.code if up is not None and 500 <= up.code < 600 else reply.code
        reply = replace(reply, code=code,
                        enhanced=replies.enhanced_for(code, up.enhanced if up else None))
        metrics.INBOUND_REJECTIONS.labels("upstream_rejected").inc()
        rows: list[dict[str, Any]] = []
        for rcpt in target.recipients:
            rows += ctx.rows("Delivery failed", rcpt, target.per_rcpt[rcpt], {
                "destination": target.destination, "in_session": True,
                "reply": str(up) if up else None, "mx_host": attempt.outcome.mx_host,
                "detail": attempt.outcome.detail})
        await record_events_now(self.db, rows)
        log.info("forward to %s refused upstream, returned in-session: %s",
                 target.destination, reply.line(), extra={"event": "routing.upstream_refused",
                                                          "session_id": ctx.session_id})
        return Routed(reply, None, {"refused": "upstream_rejected"})

    # -- staging in the message's transaction ------------------------------------------------

    def _stager(self, plan: _Plan, ctx: _EventContext, copies: dict[str, ForwardCopy],
                attempt: _Attempt | None = None):
        async def stage(unit: Unit, message: dict[str, Any]) -> None:
            now = self.clock()
            rows: list[dict[str, Any]] = []
            for status, rcpt, cols, details in plan.events:
                rows += ctx.rows(status, rcpt, cols, details)
            ids = await self.db.delivery_ids(len(plan.targets)) if plan.targets else []
            held: dict[int, uuid.UUID] = {}  # copy -> the messages row holding its bytes
            for did, (dest, t) in zip(ids, plan.targets.items(), strict=True):
                copy = copies[dest]
                prefix = _prefix(copy.raw, message["raw"])
                if prefix is None and id(copy) not in held:
                    # The From rewrite changed the message itself: store this copy.
                    dests = [d for d in plan.targets if copies[d] is copy]
                    row = _copy_row(message, copy, dests, now)
                    unit.insert(MESSAGES, row)
                    held[id(copy)] = row["id"]
                holder = message["id"] if prefix is not None else held[id(copy)]
                state = self._attempt_state(attempt, now, dest) if attempt else {}
                asked = plan.target_dsn(t)
                row = delivery_row(
                    did, holder, Recipient(dest, copy.envelope_from, prefix=prefix,
                                           notify=asked.notify, orcpt=asked.orcpt),
                    mail_from=message["mail_from"], now=now,
                    **{"priority": PRIORITY_INTERACTIVE, **state})
                unit.insert(DELIVERIES, row)
                if attempt is not None and success_dsn_due(attempt.outcome, asked.notify):
                    unit.then(self._success_dsn(message, row, attempt.outcome, now))
                if attempt is not None:
                    o = attempt.outcome
                    unit.insert(ATTEMPTS, attempt_row(
                        did, started_at=attempt.started, finished_at=attempt.finished,
                        node=self.settings.node.node_id or self.settings.node.hostname,
                        result="delivered" if o.result == "delivered" else "deferred",
                        reply=o.reply, detail=o.detail, mx_host=o.mx_host, ip=o.ip,
                        tls_version=o.tls_version))
                delivery = "delivered" if state.get("status") == "delivered" else "queued"
                for rcpt in t.recipients:
                    cols = t.per_rcpt[rcpt]
                    rows += ctx.rows("Forwarded", rcpt, cols, {
                        **cols.get("_info", {}), "destination": dest, "delivery": delivery,
                        "delivery_id": did, "forward_message_id": str(holder),
                        "envelope_from": copy.envelope_from,
                        "from_rewritten": copy.from_rewritten, "signed_by": copy.signed_by,
                        "srs_bounce": t.kind == "srs",
                        **({"reply": str(attempt.outcome.reply)}
                           if attempt and attempt.outcome.reply else {})})
            for row in rows:
                row["message_id"] = message["id"]
            unit.insert(EVENTS, rows)
            if plan.expanded():
                unit.then(self._expanded_dsn(plan, message, now))
            if plan.bounces or plan.stages:  # issue 4 / issue 7: ORM work, rare
                unit.then(self._orm_stages(plan, ctx, message, now))
            message["status"] = ("handler_pending" if plan.handlers
                                 else "handled" if plan.workers
                                 else "forward_unconfigured" if plan.unconfigured
                                 else "forwarded" if plan.targets
                                 else "bounce_unmatched" if plan.bounces  # see below
                                 else "routed")
        return stage

    def _orm_stages(self, plan: _Plan, ctx: _EventContext, message: dict[str, Any],
                    now: datetime):
        """Bounce intake (issue 4) and a handler's replies (issue 7) need the ORM; they
        run on the unit's connection, in its transaction, after its inserts."""
        async def step(conn: AsyncConnection) -> None:
            incoming = Message(**message)  # transient: read by the stages, never added
            async with AsyncSession(bind=conn) as session:
                matched = 0
                rows: list[dict[str, Any]] = []
                for rcpt in plan.bounces:
                    result = await bounces.handle_inbound_bounce(
                        session, rcpt, message["raw"], key=self.verp_key, now=now)
                    if result.delivery_id is None:
                        rows += ctx.rows("Error", rcpt, {}, {"reason": "bounce_unmatched"},
                                         message_id=message["id"])
                    matched += result.delivery_id is not None
                for extra in plan.stages:
                    await extra(session, incoming)
                await session.flush()
            await record_events(conn, rows)
            if matched and not (plan.handlers or plan.workers or plan.targets
                                or plan.unconfigured):
                await conn.execute(update(MESSAGES).where(MESSAGES.c.id == message["id"])
                                   .values(status="bounce_processed"))
        return step

    def _success_dsn(self, message: dict[str, Any], row: dict[str, Any],
                     outcome: RecipientOutcome, now: datetime):
        """RFC 3461 §5.2.2: the in-session forward asked for NOTIFY=SUCCESS went to a
        next hop without DSN: we report it `relayed`, in the message's transaction."""
        async def step(conn: AsyncConnection) -> None:
            delivered = Message(**message)  # transient: read by the DSN, never added
            claimed = Claimed.of_row(row)
            async with AsyncSession(bind=conn) as session:
                if await bounces.queue_dsn(session, delivered, "relayed", [(claimed, outcome)],
                                           now=now, reporting_mta=self.settings.node.hostname):
                    metrics.DSN_QUEUED.labels("relayed").inc()
                await session.flush()
        return step

    def _expanded_dsn(self, plan: _Plan, message: dict[str, Any], now: datetime):
        """RFC 3461 §5.2.7.3: one `expanded` DSN for the recipients forwarded to several
        destinations that asked for SUCCESS, in the message's transaction."""
        async def step(conn: AsyncConnection) -> None:
            accepted = Message(**message)  # transient: read by the DSN, never added
            rcpts = [(r, plan.dsn.rcpt(r).orcpt) for r in plan.expanded()]
            async with AsyncSession(bind=conn) as session:
                if await bounces.queue_expanded_dsn(
                        session, accepted, rcpts, now=now,
                        reporting_mta=self.settings.node.hostname):
                    metrics.DSN_QUEUED.labels("expanded").inc()
                await session.flush()
        return step

    def _attempt_state(self, attempt: _Attempt, now: datetime, dest: str
                       ) -> dict[str, Any]:
        """The delivery's columns after the in-session attempt (attempt 1)."""
        o = attempt.outcome
        state: dict[str, Any] = {"attempts": 1,
                                 "last_reply": str(o.reply) if o.reply else o.detail}
        if o.result == "delivered":
            return {**state, "status": "delivered", "finished_at": attempt.finished}
        # The retry schedule continues from the in-session try.
        return {**state, "priority": PRIORITY_INTERACTIVE + PRIORITY_RETRY_BAND,
                "next_attempt_at": self.retry.next_attempt(
                    now, 1, now, dest.rpartition("@")[2].lower())}


@dataclass(frozen=True)
class _Attempt:
    outcome: RecipientOutcome
    started: datetime
    finished: datetime


@dataclass(frozen=True)
class _EventContext:
    mail_from: str
    subject: str | None
    auth: dict[str, str]
    session_id: str | None

    def rows(self, status: str, rcpt: str, cols: dict[str, Any], details: dict[str, Any],
             message_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
        public = {k: v for k, v in cols.items() if not k.startswith("_")}
        return event_rows(direction="inbound", status=status, recipients=[rcpt],
                          mail_from=self.mail_from, message_id=message_id,
                          subject=self.subject, auth=self.auth,
                          per_recipient={rcpt: public},
                          details={**details, "session_id": self.session_id})


def _with_headers(raw: bytes, headers: tuple[tuple[str, str], ...]) -> bytes:
    """issue 7: the X- headers a handler's forward() adds, on top (then signed)."""
    return b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + raw


def _prefix(copy: bytes, raw: bytes) -> bytes | None:
    """What the forwarded copy adds in front of the stored message (signatures, ARC set,
    a handler's fields), or None when it changed the message itself."""
    return copy[:len(copy) - len(raw)] if copy.endswith(raw) else None


def _copy_row(message: dict[str, Any], copy: ForwardCopy, destinations: list[str],
              now: datetime) -> dict[str, Any]:
    # direction inbound + source forward: the worker's events stay in the routing log,
    # and automatic suppression (for mail an account sends) does not apply. mail_from is
    # the original sender, so a DSN after a failed retry reaches them directly.
    return full_row(MESSAGES, now, id=uuid.uuid4(), direction="inbound", source="forward",
                    account_id=message["account_id"],
                    message_id_header=message["message_id_header"],
                    mail_from=message["mail_from"], rcpt_to=destinations, raw=copy.raw,
                    size=len(copy.raw), received_at=now, session_id=message["session_id"],
                    auth_results=message["auth_results"], status="forward",
                    origin_id=message["id"])
