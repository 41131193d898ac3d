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
  final status (built by `mta.routing.staging`; the values are in `mta.routing.plan`).
  `delivered` tells the listener that the message is already out (see docs/smtp.md,
  "Durability"). Then the listener answers 250.

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
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from mta import replies
from mta.checks.results import AuthResults
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.observe import metrics
from mta.observe.events import record_events_now
from mta.queue import bounces
from mta.queue.dsnparams import (
    Dsn,
)
from mta.queue.intl import NO_SMTPUTF8_REPLY
from mta.queue.outcome import RecipientOutcome
from mta.queue.queue import (
    RetryPolicy,
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
from mta.routing.plan import Attempt, EventContext, Plan, Routed, Target, WorkerCall
from mta.routing.recipients import RecipientVerdict
from mta.routing.rules import match_rule, normalize_address
from mta.routing.staging import Stager
from mta.signing.srs import SrsError, is_srs_address
from mta.store.db import Database

__all__ = ["Handlers", "InboundRouter", "srs_recipient_verdict"]

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
        # What a routed message adds to the transaction that stores it (staging.py).
        self._stager = Stager(settings, db, self.retry, self.verp_key, clock)

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

    def _plan(self, recipients: Sequence[RecipientVerdict]) -> Plan:
        plan = Plan()
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
    def _add_target(plan: Plan, dest: str, rcpt: str, cols: dict[str, Any],
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
        ctx = EventContext(mail_from, subject, _auth_summary(auth), session_id)
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
        attempt: Attempt | None = None
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

    async def _copies(self, plan: Plan, raw: bytes, mail_from: str, auth: AuthResults,
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

    async def _in_session(self, target: Target, copy: ForwardCopy, plan: Plan) -> Attempt:
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
        return Attempt(outcome, started, self.clock())

    async def _refuse(self, plan: Plan, ctx: EventContext, reply: Reply, reason: str,
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

    async def _upstream_refused(self, plan: Plan, ctx: EventContext, target: Target,
                                attempt: Attempt) -> Routed:
        up = attempt.outcome.reply
        if up == NO_SMTPUTF8_REPLY:  # our own verdict: quoting it as the server's is wrong
            reply = replies.FORWARD_NEEDS_SMTPUTF8
        else:
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

def _with_headers(raw: bytes, headers: tuple[tuple[str, str], ...]) -> bytes:
    """issue 7: the X- headers a handler's forward() adds, on top (then signed)."""
    return b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + raw
