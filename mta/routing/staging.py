"""Staging a routed message: the rows it adds to the transaction that stores it.

`InboundRouter.route()` (mta.routing.inbound) plans and tries the in-session forward;
the `Routed.stage` it returns is built here. Per destination: a delivery pointing at
the received message with only what forwarding adds kept in `deliveries.prefix` (DKIM
signatures, ARC set), or at a stored copy when the From rewrite changed the message
itself; its state after the in-session attempt and that attempt's row; the activity
events; the DSNs owed now (RFC 3461 `relayed`, `expanded`); the ORM steps (bounce
intake, a handler's replies); the message's final status.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mta.config import Settings
from mta.observe import metrics
from mta.observe.events import record_events
from mta.queue import bounces
from mta.queue.dsnparams import success_dsn_due
from mta.queue.outcome import RecipientOutcome
from mta.queue.queue import (
    PRIORITY_INTERACTIVE,
    PRIORITY_RETRY_BAND,
    Claimed,
    Recipient,
    RetryPolicy,
    attempt_row,
    delivery_row,
)
from mta.routing.forward import ForwardCopy
from mta.routing.plan import Attempt, EventContext, Plan
from mta.store.db import Database, Unit
from mta.store.models import Message
from mta.store.rows import ATTEMPTS, DELIVERIES, EVENTS, MESSAGES, full_row

__all__ = ["Stager"]


class Stager:
    """`Routed.stage` for the router's plans (called as `InboundRouter._stager`)."""

    def __init__(self, settings: Settings, db: Database, retry: RetryPolicy,
                 verp_key: Any, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.db = db
        self.retry = retry
        self.verp_key = verp_key
        self.clock = clock


    def __call__(self, plan: Plan, ctx: EventContext, copies: dict[str, ForwardCopy],
                attempt: Attempt | None = None):
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

    def _orm_stages(self, plan: Plan, ctx: EventContext, message: dict[str, Any],
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

    def _expanded_dsn(self, plan: Plan, message: dict[str, Any], now: datetime):
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

    def _attempt_state(self, attempt: Attempt, now: datetime, dest: str
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
