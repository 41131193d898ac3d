"""The delivery queue in PostgreSQL: enqueue, claim with a lease, backoff, record outcomes.

Job: keep one `deliveries` row per recipient of an outgoing message and hand due rows to
delivery workers on any node, exactly one holder at a time. Nothing here talks SMTP or
decides whether a reply is temporary or permanent (that is `delivery.py`, the one failure
policy); this module only stores what was decided.

- `enqueue()` runs inside the caller's transaction, so a message is acknowledged (250/200)
  only once it and its deliveries are committed together; the hot paths build the same
  rows with `delivery_row()` (final state in the INSERT) into their group-commit unit.
- `claim()` locks due rows with `SELECT ... FOR UPDATE SKIP LOCKED`, in its own short
  transaction, and commits with them a lease (`lease_owner`, `lease_expires_at`), the
  incremented attempt count and the time of the NEXT attempt (as mox does). A node that
  crashes mid-attempt therefore never causes a hot retry loop: its rows become due again
  only once both the lease and the committed backoff have passed.
- A row is due when `status = 'queued'`, `next_attempt_at <= now` and it holds no live
  lease. Order: `priority` (0 = interactive first; a deferral moves a row into the retry
  band, so fresh mail is never starved by a backlog of retries), then `next_attempt_at`.
  A claim takes the head row's destination domain and then more due rows of that same
  domain, so one SMTP session carries several recipients and messages.
- Backoff is a function of the attempt count only (first retry, doubling, capped, with
  jitter), never of wall-clock gaps, so an operator pause or a database outage does not
  inflate it. The last retry is placed at the maximum age, after which a deferral expires.
- `record_outcomes()` writes the attempt rows and the new delivery states in the caller's
  transaction (the worker adds DSNs, suppressions and events to it), once per message as
  soon as the next hop has answered it.

The operator's actions (requeue, hold, release, purge) and the queue's depth are in
`admin.py`.

Settings read: `retry.*` (RetrySettings), optionally per destination domain.
Every function takes `now` (an aware UTC datetime) so tests drive time with a clock.
"""

from __future__ import annotations

import dataclasses
import hmac
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from mta.config import RetrySettings
from mta.queue.outcome import Reply
from mta.store.db import Database
from mta.store.models import Delivery, Message
from mta.store.rows import ATTEMPTS, DELIVERIES, NEXT_DELIVERY_IDS, full_row

__all__ = [
    "Clock", "Claimed", "Enqueued", "PRIORITY_BULK",
    "PRIORITY_INTERACTIVE", "PRIORITY_RETRY_BAND", "Recipient", "RetryPolicy", "StoredOutcome",
    "attempt_row", "claim", "delivery_row", "due_filter", "enqueue", "record_outcomes",
    "release", "renew_leases", "utcnow", "verp_address", "verp_token",
]

Clock = Callable[[], datetime]

PRIORITY_INTERACTIVE = 0  # API/submission sends, replies, forwards, DSNs
PRIORITY_BULK = 5
# A deferred row's priority is raised into this band once, so every fresh message (of any
# class) is claimed before any retry, while retries keep their relative order.
PRIORITY_RETRY_BAND = 10

VERP_PREFIX = "bounces+"


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- VERP (here because enqueue assigns it with the row id) -----------------------------


def verp_token(delivery_id: int, key: bytes) -> str:
    """A 12-hex HMAC of the delivery id: short, case-insensitive, unforgeable."""
    return hmac.new(key, f"verp:{delivery_id}".encode(), sha256).hexdigest()[:12]


def verp_address(delivery_id: int, domain: str, key: bytes) -> str:
    return f"{VERP_PREFIX}{delivery_id}-{verp_token(delivery_id, key)}@{domain.lower()}"


# --- backoff ---------------------------------------------------------------------------


class RetryPolicy:
    """Backoff schedule from RetrySettings, with optional per-destination overrides
    (keys are domains; `example.com` also covers its subdomains)."""

    def __init__(self, default: RetrySettings,
                 per_domain: Mapping[str, RetrySettings] | None = None,
                 rng: random.Random | None = None) -> None:
        self.default = default
        self.per_domain = {k.lower().rstrip("."): v for k, v in (per_domain or {}).items()}
        self.rng = rng or random.Random()

    @classmethod
    def from_settings(cls, retry: RetrySettings, rng: random.Random | None = None
                      ) -> RetryPolicy:
        """From `retry`, plus `retry.domains` when the config has it: a list of entries
        with `domain` and any RetrySettings field (None or absent = inherit)."""
        overrides: dict[str, RetrySettings] = {}
        for item in getattr(retry, "domains", None) or []:
            merged = {f.name: getattr(item, f.name, None) for f in dataclasses.fields(retry)}
            overrides[item.domain] = RetrySettings(**{
                k: (v if v is not None else getattr(retry, k)) for k, v in merged.items()})
        return cls(retry, overrides, rng)

    def settings_for(self, domain: str) -> RetrySettings:
        d = domain.lower().rstrip(".")
        while d:
            if d in self.per_domain:
                return self.per_domain[d]
            d = d.partition(".")[2]
        return self.default

    def interval(self, attempts: int, domain: str = "", jitter: bool = True) -> timedelta:
        """The wait after the `attempts`-th attempt (1-based): first_retry, doubling,
        capped at max_interval, then +/- jitter."""
        s = self.settings_for(domain)
        base = min(s.first_retry * s.backoff_factor ** max(attempts - 1, 0), s.max_interval)
        if jitter and s.jitter:
            base *= 1 + self.rng.uniform(-s.jitter, s.jitter)
        return timedelta(seconds=base)

    def max_age(self, domain: str = "") -> timedelta:
        return timedelta(seconds=self.settings_for(domain).max_age)

    def next_attempt(self, now: datetime, attempts: int, created_at: datetime,
                     domain: str = "") -> datetime:
        nxt = now + self.interval(attempts, domain)
        deadline = created_at + self.max_age(domain)
        # The last try happens at the deadline rather than days after it.
        return min(nxt, deadline) if deadline > now else nxt

    def expired(self, now: datetime, created_at: datetime, domain: str = "") -> bool:
        return now - created_at >= self.max_age(domain)


# --- enqueue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """One recipient to enqueue. `envelope_from` overrides the message's MAIL FROM (SRS);
    with `verp_domain`, the MAIL FROM becomes a VERP address on that bounce domain."""

    address: str
    envelope_from: str | None = None
    verp_domain: str | None = None
    prefix: bytes | None = None  # header fields sent before the message (a forward's)
    notify: str | None = None  # RFC 3461 NOTIFY and ORCPT (mta/queue/dsnparams.py)
    orcpt: str | None = None


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def delivery_row(did: int, message_id: uuid.UUID, r: Recipient, *, mail_from: str,
                 now: datetime, priority: int = PRIORITY_INTERACTIVE,
                 verp_key: bytes | None = None, **state: Any) -> dict[str, Any]:
    """The complete `deliveries` row for recipient `r`, queued and due at `now` unless
    `state` says otherwise (a leased first attempt, an in-session outcome): the final
    state goes into the INSERT, never into an UPDATE right after it."""
    env_from = r.envelope_from if r.envelope_from is not None else mail_from
    if r.verp_domain:
        if verp_key is None:
            raise ValueError("a VERP recipient needs verp_key")
        env_from = verp_address(did, r.verp_domain, verp_key)
    values: dict[str, Any] = dict(
        id=did, message_id=message_id, recipient=r.address, domain=_domain_of(r.address),
        envelope_from=env_from, status="queued", priority=priority, attempts=0,
        next_attempt_at=now, created_at=now, prefix=r.prefix, dsn_notify=r.notify,
        dsn_orcpt=r.orcpt)
    values.update(state)
    return full_row(DELIVERIES, now, **values)


async def enqueue(session: AsyncSession, message: Message,
                  recipients: Sequence[Recipient | str], *, now: datetime,
                  priority: int = PRIORITY_INTERACTIVE,
                  verp_key: bytes | None = None) -> list[Enqueued]:
    """Add `message` (if not yet in the session) and one queued delivery per recipient,
    due at `now`, in the caller's ORM transaction (DSNs, replies, verification mail;
    the hot paths build `delivery_row`s into a `Unit` instead)."""
    rcpts = [Recipient(r) if isinstance(r, str) else r for r in recipients]
    if not rcpts:
        return []
    if message.id is None:
        message.id = uuid.uuid4()
    if message.size is None:
        message.size = len(message.raw)
    if message not in session:
        session.add(message)
    await session.flush()
    ids = (await session.execute(NEXT_DELIVERY_IDS, {"n": len(rcpts)})).scalars().all()
    rows = [delivery_row(did, message.id, r, mail_from=message.mail_from, now=now,
                         priority=priority, verp_key=verp_key)
            for did, r in zip(ids, rcpts, strict=True)]
    await session.execute(DELIVERIES.insert(), rows)
    return [Enqueued.of(row) for row in rows]


@dataclass(frozen=True)
class Enqueued:
    """A delivery row just written."""

    id: int
    message_id: uuid.UUID
    recipient: str
    domain: str
    envelope_from: str
    status: str
    priority: int
    attempts: int
    next_attempt_at: datetime
    created_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> Enqueued:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


# --- claim, lease, release ----------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to this node. `attempts` already counts the attempt about to be
    made; `next_attempt_at` is the committed time of the one after it."""

    id: int
    message_id: uuid.UUID
    recipient: str
    domain: str
    envelope_from: str
    priority: int
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    previous_next_attempt_at: datetime
    delay_notified_at: datetime | None
    prefix: bytes | None = None
    dsn_notify: str | None = None  # RFC 3461 NOTIFY and ORCPT of the recipient
    dsn_orcpt: str | None = None

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Claimed:
        """A delivery row just built (`delivery_row`) seen as claimed, for code that
        reports on an attempt made before the row existed (an in-session forward)."""
        return cls(row["id"], row["message_id"], row["recipient"], row["domain"],
                   row["envelope_from"], row["priority"], row["attempts"], row["created_at"],
                   row["next_attempt_at"], row["next_attempt_at"], row["delay_notified_at"],
                   row["prefix"], row["dsn_notify"], row["dsn_orcpt"])


def due_filter(now: datetime):
    return and_(Delivery.status == "queued", Delivery.next_attempt_at <= now,
                or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at <= now))


async def claim(db: Database, node_id: str, *, limit: int, lease_seconds: float,
                now: datetime, policy: RetryPolicy,
                exclude_domains: Iterable[str] = (), domain: str | None = None
                ) -> list[Claimed]:
    """Lease up to `limit` due deliveries, all for one destination domain (the head of
    the queue's, or `domain`), and commit the lease and the next attempt time."""
    excluded = sorted(set(exclude_domains))
    async with db.connection() as s:
        if domain is None:
            head = select(Delivery.domain).where(due_filter(now))
            if excluded:
                head = head.where(Delivery.domain.not_in(excluded))
            head = head.order_by(Delivery.priority, Delivery.next_attempt_at).limit(1)
            domain = (await s.execute(head.with_for_update(skip_locked=True))).scalar()
            if domain is None:
                return []
        # The head row is already locked by us; SKIP LOCKED only skips other holders.
        picked = (await s.execute(
            select(Delivery.id, Delivery.message_id, Delivery.recipient, Delivery.domain,
                   Delivery.envelope_from, Delivery.priority, Delivery.attempts,
                   Delivery.created_at, Delivery.next_attempt_at, Delivery.delay_notified_at,
                   Delivery.prefix, Delivery.dsn_notify, Delivery.dsn_orcpt)
            .where(due_filter(now), Delivery.domain == domain)
            .order_by(Delivery.priority, Delivery.next_attempt_at).limit(limit)
            .with_for_update(skip_locked=True))).all()
        if not picked:
            return []
        lease_until = now + timedelta(seconds=lease_seconds)
        out: list[Claimed] = []
        for r in picked:
            attempts = r.attempts + 1
            nxt = policy.next_attempt(now, attempts, r.created_at, r.domain)
            out.append(Claimed(r.id, r.message_id, r.recipient, r.domain, r.envelope_from,
                               r.priority, attempts, r.created_at, nxt, r.next_attempt_at,
                               r.delay_notified_at, r.prefix, r.dsn_notify, r.dsn_orcpt))
        await s.execute(_LEASE, [
            {"b_id": c.id, "b_attempts": c.attempts, "b_next": c.next_attempt_at,
             "b_owner": node_id, "b_until": lease_until} for c in out])
    return out


_LEASE = (update(Delivery).where(Delivery.id == bindparam("b_id"))
          .values(attempts=bindparam("b_attempts"), next_attempt_at=bindparam("b_next"),
                  lease_owner=bindparam("b_owner"), lease_expires_at=bindparam("b_until")))


async def renew_leases(db: Database, node_id: str, ids: Sequence[int], *,
                       lease_seconds: float, now: datetime) -> int:
    """Extend our leases on `ids` (long SMTP sessions); returns how many we still hold."""
    if not ids:
        return 0
    async with db.connection() as s:
        res = await s.execute(
            update(Delivery).where(Delivery.id.in_(ids), Delivery.lease_owner == node_id,
                                   Delivery.status == "queued")
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds)))
        return res.rowcount or 0


async def release(db: Database, node_id: str, claimed: Sequence[Claimed]) -> int:
    """Give back leases of work we claimed but never tried (graceful stop): the attempt
    count and the due time are restored, so another node picks them up at once. Only
    that claim's lease (its attempt count): a release written late (after an outage
    longer than the lease, mta/queue/unsettled.py) must not free a newer claim of the
    same node, which is being sent."""
    if not claimed:
        return 0
    async with db.connection() as s:
        n = 0
        for c in claimed:
            res = await s.execute(
                update(Delivery).where(Delivery.id == c.id, Delivery.lease_owner == node_id,
                                       Delivery.attempts == c.attempts,
                                       Delivery.status == "queued")
                .values(lease_owner=None, lease_expires_at=None,
                        attempts=Delivery.attempts - 1,
                        next_attempt_at=c.previous_next_attempt_at))
            n += res.rowcount or 0
        return n


# --- outcomes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredOutcome:
    """What the failure policy decided for one claimed delivery, ready to store.
    `status` is the new delivery status: queued (deferred), delivered, failed, expired."""

    claimed: Claimed
    status: str
    attempt_result: str  # delivered | deferred | failed
    started_at: datetime
    finished_at: datetime
    reply: Reply | None = None
    detail: str | None = None
    mx_host: str | None = None
    ip: str | None = None
    tls_version: str | None = None
    mark_delay_notified: bool = False


def _reply_text(o: StoredOutcome) -> str | None:
    if o.reply is not None:
        return str(o.reply)
    return o.detail


def attempt_row(delivery_id: int, *, started_at: datetime, finished_at: datetime,
                node: str | None, result: str, reply: Reply | None = None,
                detail: str | None = None, mx_host: str | None = None, ip: str | None = None,
                tls_version: str | None = None) -> dict[str, Any]:
    """The complete `delivery_attempts` row of one attempt."""
    return full_row(ATTEMPTS, finished_at, delivery_id=delivery_id, started_at=started_at,
                    finished_at=finished_at, node=node, mx_host=mx_host, ip=ip,
                    tls_version=tls_version, result=result,
                    reply_code=reply.code if reply else None,
                    enhanced_code=reply.enhanced if reply else None,
                    reply_text=reply.text if reply else detail)


async def record_outcomes(executor: Any, node_id: str, outcomes: Sequence[StoredOutcome], *,
                          now: datetime) -> list[int]:
    """Write attempt rows and new delivery states, with the caller's session or
    connection, in its transaction. Returns the ids whose delivery row was updated (a
    row another node finished meanwhile is left alone; its attempt is still recorded)."""
    if not outcomes:
        return []
    await executor.execute(ATTEMPTS.insert(), [attempt_row(
        o.claimed.id, started_at=o.started_at, finished_at=o.finished_at, node=node_id,
        result=o.attempt_result, reply=o.reply, detail=o.detail, mx_host=o.mx_host,
        ip=o.ip, tls_version=o.tls_version) for o in outcomes])
    # One statement for all of them. Only the lease holder reschedules a deferral
    # (the next attempt time was committed at claim; a deferral just drops the lease and
    # enters the retry band), and only for that claim (its attempt count: a deferral
    # written late after an outage must not drop a newer claim of the same node while it
    # is being sent); a final state is written whoever holds the lease, because the
    # remote server has spoken.
    res = await executor.execute(_RECORD_SQL, {
        "ids": [o.claimed.id for o in outcomes],
        "statuses": [o.status for o in outcomes],
        "finished": [o.finished_at for o in outcomes],
        "replies": [_reply_text(o) for o in outcomes],
        "delay": [o.mark_delay_notified for o in outcomes],
        "attempts": [o.claimed.attempts for o in outcomes],
        "node": node_id, "now": now, "band": PRIORITY_RETRY_BAND})
    return [row[0] for row in res]


_RECORD_SQL = text("""
UPDATE deliveries AS d SET
    status = v.status,
    finished_at = CASE WHEN v.status = 'queued' THEN NULL ELSE v.finished END,
    last_reply = v.reply,
    lease_owner = NULL,
    lease_expires_at = NULL,
    priority = CASE WHEN v.status = 'queued' AND d.priority < :band
                    THEN d.priority + :band ELSE d.priority END,
    delay_notified_at = CASE WHEN v.delay THEN :now ELSE d.delay_notified_at END
FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]),
            CAST(:finished AS timestamptz[]), CAST(:replies AS text[]),
            CAST(:delay AS boolean[]), CAST(:attempts AS integer[]))
     AS v(id, status, finished, reply, delay, attempts)
WHERE d.id = v.id AND d.status = 'queued'
  AND (v.status <> 'queued' OR (d.lease_owner = :node AND d.attempts = v.attempts))
RETURNING d.id
""")
