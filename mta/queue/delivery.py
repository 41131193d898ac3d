"""Delivery workers and the one failure policy.

Job: take due deliveries from the queue (`queue.claim`), hand them to a transport
(`remote.RemoteDelivery` unless another is given), and turn each per-recipient outcome into
exactly one decision, applied in one transaction per batch: the attempt and the new
delivery state, a DSN to the sender, suppression entries, activity events. The transport
reports; only `decide()` below interprets.

The failure policy (`decide`):
- 2xx -> delivered.
- 5xx -> failed at once, no retry; DSN (action failed) to the sender. A hard bounce
  suppresses the recipient immediately: the enhanced code decides when the server gave one
  (5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10, 5.2.1), else the basic code (550, 551, 553, 556), so
  a `550 5.7.1` policy refusal is a failure but not a bad address.
- 4xx, connection trouble, timeouts, anything unknown -> deferred; the next attempt time was
  already committed by the claim. A deferral at or past the maximum age -> expired (DSN with
  status 4.4.7; recorded as expired, never as a hard bounce). An expiry whose last answer
  was a 4xx is a soft bounce; `soft_bounce_threshold` of them within `soft_bounce_window`
  suppress the address (mta/queue/softbounce.py; deferrals that later succeed never count).
  Once a delivery has waited `retry.delay_warning`, one delay DSN goes out (None disables).
- The recipient's NOTIFY (RFC 3461, `dsnparams.py`) filters these DSNs: NEVER none,
  failure DSNs only with FAILURE, delay DSNs only with DELAY (no NOTIFY: both, as
  before); with SUCCESS a delivered recipient gets a `relayed` DSN when the next hop
  did not take the request on (it lacks DSN; `dsnparams.success_dsn_due`).
- DSNs go through this same queue with the null sender; never to the null sender, never
  about a DSN (see `bounces.queue_dsn`).

Workers: `options.workers` tasks per node share one claim lock; at most
`options.per_domain_sessions` sessions per destination domain on this node; one claim =
up to `options.batch_size` deliveries to one domain, sent over one reused SMTP session.
Leases are renewed while a session runs. `stop()` finishes what is in flight and releases
the leases of claimed work it has not started, so another node takes it at once. When the
database goes away under a batch, nothing more of it is sent, and what could not be
written (the outcome of the attempt in flight, the release of the claims not tried) is
kept and written as soon as the database is back (mta/queue/unsettled.py): no claim
waits for its lease to expire.

Settings read: `retry.*`, `node.hostname`, and the optional `delivery` section
(DeliveryOptions) when the config defines one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mta.config import copy_section
from mta.observe import metrics
from mta.observe.events import event_rows, record_events
from mta.queue import bounces, softbounce
from mta.queue.admin import queue_stats
from mta.queue.dsnparams import Dsn, RcptDsn, notify_wants, success_dsn_due
from mta.queue.outcome import HARD_BOUNCE_CODES, HARD_BOUNCE_ENHANCED, RecipientOutcome
from mta.queue.queue import (
    Claimed,
    RetryPolicy,
    StoredOutcome,
    claim,
    record_outcomes,
    renew_leases,
    utcnow,
)
from mta.queue.unsettled import Unsettled
from mta.store import suppression
from mta.store.db import Unit
from mta.store.models import Message
from mta.store.rows import MESSAGES

__all__ = ["DeliveryOptions", "DeliveryWorkers", "SuppressionPolicy", "Transport",
           "Verdict", "decide"]

log = logging.getLogger("mta.delivery")

class Transport(Protocol):
    async def deliver(self, domain: str, envelope_from: str, recipients: list[str],
                      raw: bytes, *, dsn: Dsn | None = None) -> list[RecipientOutcome]: ...


@runtime_checkable
class SessionTransport(Protocol):
    """A transport that can keep one connection for several messages (RemoteDelivery)."""

    def open_session(self, domain: str) -> contextlib.AbstractAsyncContextManager[Any]: ...


@dataclass
class SuppressionPolicy:
    hard_bounce_codes: frozenset[int] = HARD_BOUNCE_CODES
    hard_bounce_enhanced: frozenset[str] = HARD_BOUNCE_ENHANCED
    soft_bounce_threshold: int = 3  # messages that expired after a 4xx; 0 turns this off
    soft_bounce_window: float = 7 * 86400.0
    soft_bounce_duration: float | None = 30 * 86400.0  # None = permanent


@dataclass
class DeliveryOptions:
    workers: int = 8
    per_domain_sessions: int = 4
    batch_size: int = 20
    lease_seconds: float = 300.0
    poll_interval: float = 1.0
    stats_interval: float = 15.0
    suppression: SuppressionPolicy = field(default_factory=SuppressionPolicy)

    @classmethod
    def from_settings(cls, settings: Any) -> DeliveryOptions:
        """Take values from an optional `delivery` config section with these names."""
        section = getattr(settings, "delivery", None)
        opts = cls()
        copy_section(opts, section, skip=("suppression",))
        sb = getattr(section, "soft_bounce", None)
        if sb is not None:
            opts.suppression = SuppressionPolicy(
                soft_bounce_threshold=sb.threshold, soft_bounce_window=float(sb.window),
                soft_bounce_duration=None if sb.duration is None else float(sb.duration))
        return opts


# --- the one failure policy -------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    status: str  # queued (deferred) | delivered | failed | expired
    attempt_result: str  # delivered | deferred | failed
    event: str  # Delivered | Delivery failed | Deferred
    dsn: str | None = None  # failed | expired | delayed | relayed
    hard_bounce: bool = False
    soft_bounce: bool = False


def is_hard_bounce(outcome: RecipientOutcome, policy: SuppressionPolicy) -> bool:
    r = outcome.reply
    if r is None or not 500 <= r.code < 600:
        return False
    if r.enhanced:
        return r.enhanced in policy.hard_bounce_enhanced
    return r.code in policy.hard_bounce_codes


def decide(outcome: RecipientOutcome, c: Claimed, now: datetime, retry: RetryPolicy,
           supp: SuppressionPolicy, delay_warning: float | None) -> Verdict:
    # RFC 3461 §4.1: the recipient's NOTIFY says which DSNs the sender wants (none
    # given: failures and delay notices, as before).
    if outcome.result == "delivered":
        return Verdict("delivered", "delivered", "Delivered",
                       dsn="relayed" if success_dsn_due(outcome, c.dsn_notify) else None)
    failure = "failed" if notify_wants(c.dsn_notify, "FAILURE") else None
    if outcome.result == "failed":
        return Verdict("failed", "failed", "Delivery failed", dsn=failure,
                       hard_bounce=is_hard_bounce(outcome, supp))
    soft = outcome.reply is not None and 400 <= outcome.reply.code < 500
    if retry.expired(now, c.created_at, c.domain):
        return Verdict("expired", "deferred", "Delivery failed",
                       dsn="expired" if failure else None, soft_bounce=soft)
    delayed = (delay_warning is not None and c.delay_notified_at is None
               and notify_wants(c.dsn_notify, "DELAY")
               and now - c.created_at >= timedelta(seconds=delay_warning))
    return Verdict("queued", "deferred", "Deferred", dsn="delayed" if delayed else None,
                   soft_bounce=soft)


# --- workers ---------------------------------------------------------------------------------


@dataclass
class _Job:
    domain: str
    claimed: list[Claimed]


class DeliveryWorkers:
    name = "delivery"

    def __init__(self, ctx: Any, transport: Transport | None = None, *,
                 options: DeliveryOptions | None = None, clock: Any = None,
                 retry: RetryPolicy | None = None, rng: random.Random | None = None,
                 sample_stats: bool = True) -> None:
        self.ctx = ctx
        # Queue depth is one figure per database: one process per node samples it.
        self.sample_stats = sample_stats
        self.settings = ctx.settings
        self.db = ctx.db
        self.node_id: str = ctx.node_id
        self.clock = clock or getattr(ctx, "clock", None) or utcnow
        self.options = options or DeliveryOptions.from_settings(ctx.settings)
        self.retry = retry or RetryPolicy.from_settings(ctx.settings.retry, rng)
        self.transport = transport or self._default_transport()
        self._verp_key = bounces.verp_key_or_none(ctx.settings)
        self._claim_lock = asyncio.Lock()
        self._active: dict[str, int] = defaultdict(int)
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []
        self._in_flight: set[int] = set()
        # Outcomes and releases the database was not there to take (an outage): written
        # as soon as it is back, so no claim waits for its lease to expire.
        self.unsettled = Unsettled(self.db, self.node_id, self._record_once,
                                   on_settled=self.wake)
        self.counters: dict[str, int] = defaultdict(int)

    def _default_transport(self) -> Transport:
        from mta.queue.remote import remote_delivery_from_settings

        return remote_delivery_from_settings(self.settings, self.ctx.resolver)

    # -- service protocol ----------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [asyncio.create_task(self._worker(i), name=f"delivery-{i}")
                       for i in range(self.options.workers)]
        if self.sample_stats:
            self._tasks.append(asyncio.create_task(self._stats_loop(), name="delivery-stats"))

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.unsettled.close()
        close = getattr(self.transport, "close", None)
        if close is not None:  # idle outbound connections (RemoteDelivery's pool)
            close()

    def describe(self) -> dict:
        return {"name": self.name, "workers": self.options.workers,
                "per_domain_sessions": self.options.per_domain_sessions,
                "batch_size": self.options.batch_size, "node_id": self.node_id}

    def wake(self) -> None:
        """New work was enqueued on this node: stop waiting for the next poll."""
        self._wake.set()

    # -- loops --------------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        failures = 0
        while not self._stopping:
            try:
                job = await self._claim_job()
                failures = 0
            except Exception as exc:  # database outage: back off, keep the loop alive
                failures += 1
                log.warning("claim failed: %s", exc, extra={"event": "delivery.claim_failed"})
                await self._sleep(min(30.0, 0.5 * 2 ** failures))
                continue
            if job is None:
                await self._sleep(self.options.poll_interval)
                continue
            try:
                await self._run_job(job)
            except Exception:
                log.exception("delivery batch failed", extra={"event": "delivery.batch_error",
                                                              "domain": job.domain})
            finally:
                self._active[job.domain] -= 1

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _stats_loop(self) -> None:
        while not self._stopping:
            try:
                await self.sample_metrics()
            except Exception as exc:
                log.debug("queue stats failed: %s", exc)
            await self._sleep_plain(self.options.stats_interval)

    async def _sleep_plain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < end:
            await asyncio.sleep(min(0.5, end - time.monotonic()))

    async def sample_metrics(self) -> dict:
        async with self.db.session() as s:
            stats = await queue_stats(s, now=self.clock(), full=False)
        for state, n in stats["depth"].items():
            metrics.QUEUE_DEPTH.labels(state).set(n)
        metrics.QUEUE_OLDEST_DUE_SECONDS.set(stats["oldest_due_seconds"])
        return stats

    async def _claim_job(self, domain: str | None = None) -> _Job | None:
        async with self._claim_lock:
            busy = [d for d, n in self._active.items()
                    if n >= self.options.per_domain_sessions]
            claimed = await claim(self.db, self.node_id, limit=self.options.batch_size,
                                  lease_seconds=self.options.lease_seconds, now=self.clock(),
                                  policy=self.retry, exclude_domains=busy, domain=domain)
            if not claimed:
                return None
            self._active[claimed[0].domain] += 1
            return _Job(claimed[0].domain, claimed)

    async def run_once(self) -> int:
        """Claim and deliver until nothing is due now (tests, `mta queue flush`).
        Returns the number of deliveries attempted."""
        done = 0
        while True:
            job = await self._claim_job()
            if job is None:
                return done
            try:
                await self._run_job(job)
            finally:
                self._active[job.domain] -= 1
            done += len(job.claimed)

    # -- one batch ---------------------------------------------------------------------------

    async def _run_job(self, job: _Job) -> None:
        """Send the batch; every claim ends with its outcome recorded or, if it was never
        tried (graceful stop, the database gone), released. What the database was not
        there to take is owed in `self.unsettled` and written once it is back."""
        ids = [c.id for c in job.claimed]
        settled: set[int] = set()  # claims whose outcome is recorded or owed
        try:
            async with self.db.connection() as conn:
                rows = (await conn.execute(select(MESSAGES).where(
                    MESSAGES.c.id.in_({c.message_id for c in job.claimed})))).mappings().all()
            # Transient rows (never added to a session): read by the transport, DSNs, events.
            messages = {r["id"]: Message(**r) for r in rows}
            groups: dict[tuple[uuid.UUID, str, bytes | None], list[Claimed]] = \
                defaultdict(list)
            for c in job.claimed:
                groups[(c.message_id, c.envelope_from, c.prefix)].append(c)
            self._in_flight.update(ids)
            renewer = asyncio.create_task(self._renew(ids))
            try:
                await self._send_groups(job.domain, groups, messages, settled)
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                self._in_flight.difference_update(ids)
        except Exception as exc:
            log.warning("delivery batch to %s cut short: %s", job.domain, exc,
                        extra={"event": "delivery.batch_error", "domain": job.domain})
        untried = [c for c in job.claimed if c.id not in settled]
        if untried:  # hand them back: due at once for any node
            await self.unsettled.release_now(untried)

    async def _send_groups(self, domain: str, groups: dict, messages: dict[uuid.UUID, Message],
                           settled: set[int]) -> None:
        """Send each message of the batch in turn and record its outcomes as soon as the
        next hop has answered it, before the next one goes: a crash re-sends at most the
        one message in flight. When an outcome cannot be recorded (the database is
        gone), nothing more is sent: the rest of the batch is released."""
        use_session = isinstance(self.transport, SessionTransport)
        async with contextlib.AsyncExitStack() as stack:
            session = None
            for (message_id, env_from, prefix), batch in groups.items():
                if self._stopping:
                    return  # graceful stop: the rest is handed back
                msg = messages.get(message_id)
                started = self.clock()
                t0 = time.perf_counter()
                try:
                    if msg is None:
                        raise RuntimeError("message row is gone")
                    rcpts = [c.recipient for c in batch]
                    wire = prefix + msg.raw if prefix else msg.raw
                    dsn = _dsn_request(msg, env_from, batch)
                    if use_session:
                        if session is None:
                            session = await stack.enter_async_context(
                                self.transport.open_session(domain))
                        outcomes = await session.send(env_from, rcpts, wire, dsn=dsn)
                    else:
                        outcomes = await self.transport.deliver(domain, env_from, rcpts, wire,
                                                                dsn=dsn)
                except Exception as exc:  # unknown trouble is temporary
                    log.warning("transport error for %s: %s", domain, exc,
                                extra={"event": "delivery.transport_error",
                                       "message_id": str(message_id)})
                    outcomes = [RecipientOutcome(c.recipient, "deferred",
                                                 detail=f"local error: {exc}") for c in batch]
                metrics.DELIVERY_ATTEMPT_SECONDS.observe(time.perf_counter() - t0)
                finished = self.clock()
                by_rcpt = {o.recipient: o for o in outcomes}
                results = [(c, by_rcpt.get(c.recipient) or RecipientOutcome(
                    c.recipient, "deferred", detail="transport gave no outcome"),
                    started, finished) for c in batch]
                settled.update(c.id for c in batch)
                if not await self.unsettled.record_now(results, messages):
                    return

    async def _renew(self, ids: Sequence[int]) -> None:
        every = max(self.options.lease_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(every)
            try:
                await renew_leases(self.db, self.node_id, ids,
                                   lease_seconds=self.options.lease_seconds, now=self.clock())
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)

    async def _record_once(self, results: list, messages: dict[uuid.UUID, Message]) -> None:
        now = self.clock()
        supp = self.options.suppression
        delay_warning = self.settings.retry.delay_warning
        stored: list[StoredOutcome] = []
        verdicts: list[tuple[Claimed, RecipientOutcome, Verdict]] = []
        for c, o, started, finished in results:
            v = decide(o, c, now, self.retry, supp, delay_warning)
            verdicts.append((c, o, v))
            stored.append(StoredOutcome(
                c, v.status, v.attempt_result, started, finished, o.reply, o.detail,
                o.mx_host, o.ip, o.tls_version, mark_delay_notified=v.dsn == "delayed"))

        unit = Unit()
        unit.merge(self._write_outcomes, (stored, verdicts, messages, now))
        await self.db.commit(unit)  # possibly together with other workers' outcomes
        for c, _o, v in verdicts:
            label = v.status if v.status in ("delivered", "failed", "expired") else "deferred"
            metrics.DELIVERY_ATTEMPTS.labels(label).inc()
            self.counters[label] += 1
            if v.status != "queued":
                metrics.DELIVERY_SECONDS.labels(v.status).observe(
                    max((now - c.created_at).total_seconds(), 0.0))

    async def _write_outcomes(self, conn: AsyncConnection, items: list[tuple]) -> None:
        """The outcomes of every worker committing in this transaction: one INSERT of
        attempts, one UPDATE of deliveries, one INSERT of events (DSNs and suppressions,
        rare, through the ORM on the same connection)."""
        stored = [o for item in items for o in item[0]]
        verdicts = [v for item in items for v in item[1]]
        messages = {k: m for item in items for k, m in item[2].items()}
        now = items[0][3]
        updated = set(await record_outcomes(conn, self.node_id, stored, now=now))
        live = [(c, o, v) for c, o, v in verdicts if c.id in updated]
        await record_events(conn, self._events(live, messages, now))
        if any(v.dsn or v.hard_bounce or (v.soft_bounce and v.status == "expired")
               for _, _, v in live):
            async with AsyncSession(bind=conn) as s:  # rare: DSNs and suppressions
                await self._consequences(s, live, messages, now)
                await s.flush()

    async def _consequences(self, s, live: list, messages: dict[uuid.UUID, Message],
                            now: datetime) -> None:
        """DSNs and suppressions for the rows whose state we just changed."""
        dsn_items: dict[tuple[uuid.UUID, str], list] = defaultdict(list)
        for c, o, v in live:
            msg = messages.get(c.message_id)
            if msg is None:
                continue
            if v.dsn:
                dsn_items[(c.message_id, v.dsn)].append((c, o))
            if msg.account_id and bounces.suppression_applies(msg):
                await self._suppress(s, msg, c, o, v, now)
        for (message_id, kind), items in dsn_items.items():
            if await bounces.queue_dsn(s, messages[message_id], kind, items, now=now,
                                       reporting_mta=self.settings.node.hostname,
                                       retry=self.retry):
                metrics.DSN_QUEUED.labels(kind).inc()

    @staticmethod
    def _events(live: list, messages: dict[uuid.UUID, Message], now: datetime) -> list[dict]:
        """One activity event per recipient whose state we just changed."""
        rows: list[dict] = []
        subjects: dict[uuid.UUID, str | None] = {}
        for c, o, v in live:
            msg = messages.get(c.message_id)
            if msg is None:
                continue
            if msg.id not in subjects:
                subjects[msg.id] = _subject(msg.raw)
            rows += event_rows(
                direction=msg.direction, status=v.event, recipients=[c.recipient],
                mail_from=msg.mail_from, message_id=msg.id, subject=subjects[msg.id],
                details=_details(c, o, v), ts=now,
                per_recipient={c.recipient: {"account_id": msg.account_id}})
        return rows

    async def _suppress(self, s, msg: Message, c: Claimed, o: RecipientOutcome, v: Verdict,
                        now: datetime) -> None:
        supp = self.options.suppression
        if v.hard_bounce:
            await suppression.add(s, msg.account_id, c.recipient, "hard_bounce", now=now,
                                  note=f"hard bounce: message {msg.id} answered "
                                       f"{o.reply} (delivery {c.id})")
            metrics.SUPPRESSIONS_ADDED.labels("hard_bounce").inc()
        elif v.status == "expired" and v.soft_bounce:  # only a final failure counts
            entry = await softbounce.suppress_if_due(
                s, msg.account_id, c.recipient, now=now,
                threshold=supp.soft_bounce_threshold, window=supp.soft_bounce_window,
                duration=supp.soft_bounce_duration)
            if entry is not None:
                metrics.SUPPRESSIONS_ADDED.labels("soft_bounce").inc()


def _dsn_request(msg: Message, env_from: str, batch: list[Claimed]) -> Dsn | None:
    """What to pass on to a next hop that offers DSN (RFC 3461 §5.2.1), or None when
    its DSNs would not reach the sender: with a VERP return path they come back to
    us (bounce intake), so the sender's request stays ours to honour (a `relayed`
    DSN for SUCCESS). A forward's SRS return path does lead back to the sender."""
    if env_from != msg.mail_from and msg.direction != "inbound":
        return None
    return Dsn(msg.dsn_ret, msg.dsn_envid,
               {c.recipient: RcptDsn(c.dsn_notify, c.dsn_orcpt) for c in batch})


def _subject(raw: bytes) -> str | None:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    try:
        value = BytesHeaderParser().parsebytes(head + b"\r\n\r\n").get("Subject")
    except Exception:
        return None
    return str(value)[:998] if value is not None else None


def _details(c: Claimed, o: RecipientOutcome, v: Verdict) -> dict:
    d: dict[str, Any] = {"delivery_id": c.id, "attempt": c.attempts, "result": v.status}
    if o.reply is not None:
        d["reply"] = str(o.reply)
    for key in ("detail", "mx_host", "ip", "tls_version"):
        if getattr(o, key):
            d[key] = getattr(o, key)
    if v.status == "queued":
        d["next_attempt_at"] = c.next_attempt_at.isoformat()
    if v.status == "expired":
        d["expired"] = True
    return d
