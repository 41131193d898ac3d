"""The sending pipeline every front door uses: REST send / send_raw, SMTP submission and
the Python binding ([Email lifecycle > Outbound flow], MISSION S6).

    validate -> sender domain and recipients allowed -> suppression -> rate limit /
    daily quota -> compose (Message-ID at the sending domain) -> DKIM sign -> durable
    enqueue (committed before we answer) -> a short bounded delivery attempt -> result

`SendingService.send()` takes the structured request (JSON body or binding dict);
`send_raw()` a whole MIME message (REST send_raw, SMTP submission). Both return a
`SendResult` or raise `MtaError`; nothing else escapes.

Who may send what ([Limits > Verified destination addresses], [Domain configuration]):
- From a sending domain of the account (a SendingDomain in one of its zones), enabled:
  anyone. Disabled: E_SENDER_NOT_VERIFIED.
- From one of the account's routing domains that is not a sending domain: only to the
  account's verified destination addresses (E_RECIPIENT_NOT_ALLOWED otherwise); this is
  how an account sends before it has onboarded a sending domain.
- From anything else: E_SENDER_DOMAIN_NOT_AVAILABLE.

Delivery: the deliveries are enqueued already leased by this node, with attempt 1 counted
and the retry time after it committed, exactly as `queue.claim()` would have left them;
then the delivery workers' own code sends them at once. Whatever is settled within
`sending.sync_delivery_timeout` (5 s) is reported as delivered / permanent_bounces, the
rest as queued; the attempt itself goes on in the background and records its outcome
(if the database went away meanwhile: once it is back, and an attempt it kept from
starting is handed back, due at once), and if this node dies first the lease expires
and any node retries. With a timeout of 0 the rows are simply due now for the workers.

Settings read: `sending.*` (limits.SendingLimits, sync_delivery_timeout),
`delivery.port` (the SMTP port of remote MX hosts; 25), `secret_key`, `node.hostname`,
`retry.*`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

from sqlalchemy import func, select

from mta.errors import MtaError
from mta.observe.events import event_rows, record_events_now
from mta.queue import bounces
from mta.queue.dsnparams import Dsn, RcptDsn
from mta.queue.queue import Claimed, Recipient, delivery_row
from mta.sending import limits as rate
from mta.sending.compose import compose_message, fold_header, new_message_id
from mta.sending.domains import check_sender, load_key_schedule
from mta.sending.headers import MIME_REPLACED_HEADERS, validate_custom_headers
from mta.sending.validate import (
    DEFAULT_LIMITS,
    SendLimits,
    SendRequest,
    check_message_size,
    no_line_breaks,
    normalize_address,
    parse_send_request,
    validate_send,
)
from mta.signing.dkim import sign_message
from mta.signing.keys import KeyVault, SigningKey
from mta.store import dkimkeys, suppression
from mta.store.db import Unit, is_unavailable
from mta.store.dkimkeys import Schedule
from mta.store.models import DestinationAddress, SendingDomain
from mta.store.rows import DELIVERIES, EVENTS, MESSAGES, full_row

__all__ = ["SendResult", "SendingService"]

log = logging.getLogger("mta.sending")

KEY_CACHE_SECONDS = 60.0
THREAD_THRESHOLD = 256 * 1024  # compose/sign bigger messages off the event loop


@dataclass(frozen=True)
class SendResult:
    """What a send did. `message_id` is the Message-ID header value, with brackets."""

    message_id: str
    delivered: list[str] = field(default_factory=list)
    permanent_bounces: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    suppressed_recipients: list[str] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        """The REST `result` object (sdk-contract.md: all five keys, always)."""
        return {"delivered": list(self.delivered),
                "permanent_bounces": list(self.permanent_bounces),
                "queued": list(self.queued), "message_id": self.message_id,
                "suppressed_recipients": list(self.suppressed_recipients)}


class _Everything:
    """A container holding every address: the optimistic size bound before lookup."""

    def __contains__(self, item: object) -> bool:
        return True


@dataclass
class _Outgoing:
    """A message on its way through the pipeline, whichever door it came in by."""

    sender: str  # the From address (also the envelope sender DSNs go back to)
    domains: tuple[str, ...]  # domains that must be allowed; the first one signs
    recipients: tuple[str, ...]  # envelope recipients, unique, as given
    subject: str | None
    payload_size: int  # a lower bound of the final size, for an early refusal
    render: Callable[[str, datetime, str], bytes]  # (message_id, now, feedback_id) -> raw
    dsn: Dsn | None = None  # RFC 3461 parameters of an SMTP submission


@dataclass
class _Facts:
    sending: SendingDomain | None
    zone_id: str | None
    routing: bool
    verified: set[str]
    suppressed: dict[str, suppression.Suppression]
    keys: list[SigningKey]


class SendingService:
    def __init__(self, ctx: Any, *, workers: Any = None, transport: Any = None,
                 limits: SendLimits = DEFAULT_LIMITS,
                 rate_limits: rate.SendingLimits | None = None,
                 sync_timeout: float | None = None) -> None:
        """`workers`: the node's DeliveryWorkers (woken for new work and used for the
        immediate attempt); without them a private, never-started instance is made
        with `transport` (default: RemoteDelivery on `delivery.port`)."""
        self.ctx = ctx
        settings = ctx.settings
        self.limits = limits
        self.rate_limits = rate_limits or rate.SendingLimits.from_settings(settings)
        section = getattr(settings, "sending", None)
        self.sync_timeout = (sync_timeout if sync_timeout is not None else
                             float(getattr(section, "sync_delivery_timeout", 5.0)))
        self.workers = workers or self._private_workers(transport)
        self._vault = KeyVault(settings.secret_key) if settings.secret_key else None
        self._verp_key = bounces.verp_key_or_none(settings)
        self._keys: dict[str, tuple[float, list[tuple[Schedule, SigningKey]]]] = {}
        self._background: set[asyncio.Task] = set()

    def _private_workers(self, transport: Any) -> Any:
        from mta.queue.delivery import DeliveryWorkers

        if transport is None:
            from mta.queue.remote import remote_delivery_from_settings

            transport = remote_delivery_from_settings(self.ctx.settings, self.ctx.resolver)
        return DeliveryWorkers(self.ctx, transport)

    async def close(self, timeout: float = 30.0) -> None:
        """Let background delivery attempts record their outcome (graceful stop),
        including what an outage kept them from writing at once (`workers.unsettled`)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)
        await self.workers.unsettled.close()

    # -- front doors ------------------------------------------------------------------------

    async def send(self, account_id: str, request: SendRequest | Mapping[str, Any], *,
                   source: str = "api") -> SendResult:
        req = request if isinstance(request, SendRequest) else parse_send_request(request)
        # The 25 MiB bound applies only to verified destinations, which needs the
        # database; validation first uses the largest bound, the composed message is
        # checked against the right one below.
        v = validate_send(req, self.limits, verified_destinations=_Everything())
        feedback = self.ctx.settings.node.hostname

        def render(message_id: str, now: datetime, feedback_id: str) -> bytes:
            return compose_message(v, v.sender.address.rpartition("@")[2], message_id,
                                   now, feedback_id=f"{feedback_id}:{feedback}")[1]

        payload = sum(len(a.content) for a in v.attachments)
        payload += len((v.text or "").encode()) + len((v.html or "").encode())
        return await self._submit(account_id, _Outgoing(
            sender=v.sender.address, domains=(v.sender.address.rpartition("@")[2],),
            recipients=v.recipients, subject=v.subject, payload_size=payload,
            render=render), source)

    async def send_raw(self, account_id: str, mail_from: str, recipients: Sequence[str],
                       raw: bytes | str, *, source: str = "api",
                       dsn: Dsn | None = None) -> SendResult:
        """Send a whole RFC 5322 message. The header section goes through the same
        allowlist as `headers` of send() (mime=True); Date and Message-ID are replaced
        by ours, Bcc, trace and old signature fields are dropped. `dsn`: what an SMTP
        submitter asked of DSNs (RFC 3461), kept with the message and its deliveries."""
        sender = normalize_address(no_line_breaks(mail_from, "from").strip().strip("<>"),
                                   "from")
        if not recipients:
            raise MtaError("E_FIELD_MISSING", "At least one recipient is required.",
                           field="recipients")
        if len(recipients) > self.limits.max_recipients:
            raise MtaError("E_TOO_MANY_RECIPIENTS", f"{len(recipients)} recipients, maximum "
                           f"is {self.limits.max_recipients}.", field="recipients")
        rcpts: dict[str, str] = {}
        asked: dict[str, RcptDsn] = {}  # NOTIFY, ORCPT by recipient as normalised
        for i, r in enumerate(recipients):
            if not isinstance(r, str):
                raise MtaError("E_VALIDATION_ERROR", "Recipients must be strings.",
                               field=f"recipients[{i}]")
            no_line_breaks(r, f"recipients[{i}]")
            a = normalize_address(r.strip().strip("<>"), f"recipients[{i}]")
            rcpts.setdefault(a.lower(), a)
            if dsn is not None and a not in asked:
                asked[a] = dsn.rcpt(r)
        data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        check_message_size(len(data), self.limits.max_message_size_verified)
        fields, body = _split_message(data)
        validate_custom_headers([(n, v) for n, v, _ in fields], self.limits.headers,
                                mime=True)
        header_from = _header_from(fields)
        domains = tuple(dict.fromkeys(
            (header_from.rpartition("@")[2], sender.rpartition("@")[2])))
        subject = next((_decode(v) for n, v, _ in fields if n.lower() == "subject"), None)
        kept = b"".join(line for n, _, line in fields
                        if n.lower() not in MIME_REPLACED_HEADERS
                        and not n.lower().startswith("arc-"))

        def render(message_id: str, now: datetime, feedback_id: str) -> bytes:
            ours = (fold_header("Date", format_datetime(now)) +
                    fold_header("Message-ID", message_id)).encode("ascii")
            return ours + kept + b"\r\n" + body

        return await self._submit(account_id, _Outgoing(
            sender=sender, domains=domains, recipients=tuple(rcpts.values()),
            subject=subject, payload_size=len(data), render=render,
            dsn=Dsn(dsn.ret, dsn.envid, asked) if dsn is not None else None), source)

    # -- the pipeline --------------------------------------------------------------------------

    async def _submit(self, account_id: str, out: _Outgoing, source: str) -> SendResult:
        try:
            return await self._pipeline(account_id, out, source)
        except MtaError:
            raise
        except Exception as exc:
            if is_unavailable(exc):  # the caller should retry: HTTP 503, SMTP 451
                log.warning("send refused, database unavailable: %s", exc, extra={
                    "event": "sending.database_unavailable", "account_id": account_id})
                raise MtaError("E_TEMPORARILY_UNAVAILABLE") from None
            # Callers (the binding above all) see only the reference's codes; the
            # cause goes to the log and the activity log, never to the client.
            log.exception("send failed", extra={"event": "sending.failed",
                                                "account_id": account_id})
            await record_events_now(self.ctx.db, event_rows(
                direction="outbound", status="Failed", recipients=list(out.recipients),
                mail_from=out.sender, subject=out.subject,
                details={"source": source, "error_code": "E_INTERNAL_SERVER_ERROR"},
                per_recipient={r: {"account_id": account_id} for r in out.recipients}))
            raise MtaError("E_INTERNAL_SERVER_ERROR") from None

    async def _pipeline(self, account_id: str, out: _Outgoing, source: str) -> SendResult:
        now = self.ctx.clock()
        domain = out.domains[0]
        facts = await self._facts(account_id, out, now)
        verified_only = all(r.lower() in facts.verified for r in out.recipients)
        size_limit = (self.limits.max_message_size_verified if verified_only
                      else self.limits.max_message_size)
        check_message_size(out.payload_size, size_limit)

        accepted = [r for r in out.recipients if r.lower() not in facts.suppressed]
        refused = [r for r in out.recipients if r.lower() in facts.suppressed]
        if not accepted:
            await record_events_now(self.ctx.db, self._rejected(
                account_id, facts, out, refused, None))
            raise MtaError("E_RECIPIENT_SUPPRESSED", "Every recipient is on the "
                           "suppression list: " + ", ".join(refused) + ".", field="to")
        # Verified destination addresses never count toward limits ([Pricing]).
        countable = sum(1 for r in accepted if r.lower() not in facts.verified)
        counters = rate.counter_keys(self.rate_limits, account_id,
                                     domain if facts.sending else None, now)
        if countable and counters:
            async with self.ctx.db.session() as s:
                await rate.precheck(s, counters, countable)

        message_id = new_message_id(domain)
        feedback_id = f"{account_id}:{source}:{domain}"
        raw = await self._render_and_sign(out, message_id, now, feedback_id, facts.keys)
        check_message_size(len(raw), size_limit)

        return_path = facts.sending.return_path_domain if facts.sending else None
        claimed = await self._store(account_id, out, facts, source, raw, message_id,
                                    accepted, refused, return_path, counters, countable, now)
        statuses = await self._attempt(claimed)
        result = SendResult(message_id, suppressed_recipients=refused)
        for c in claimed:
            st = statuses.get(c.id, "queued")
            (result.delivered if st == "delivered" else result.permanent_bounces
             if st in ("failed", "bounced") else result.queued).append(c.recipient)
        log.info("message accepted", extra={
            "event": "sending.accepted", "message_id": message_id, "account_id": account_id,
            "source": source, "recipients": len(accepted), "suppressed": len(refused),
            "delivered": len(result.delivered), "queued": len(result.queued)})
        return result

    async def _facts(self, account_id: str, out: _Outgoing, now: datetime) -> _Facts:
        """Everything the pipeline needs from the database, in one read transaction."""
        lowered = sorted({r.lower() for r in out.recipients})
        async with self.ctx.db.session() as s:
            sending: SendingDomain | None = None
            zone_id: str | None = None
            routing = False
            for i, domain in enumerate(out.domains):
                sd = await check_sender(s, account_id, domain)
                routed = sd is None  # an enabled routing domain of the account
                if i == 0:
                    sending, routing = sd, routed
                    zone_id = sd.zone_id if sd is not None else None
                routing = routing or routed
            verified = set((await s.execute(select(func.lower(DestinationAddress.email))
                .where(DestinationAddress.account_id == account_id,
                       DestinationAddress.verified_at.is_not(None),
                       func.lower(DestinationAddress.email).in_(lowered)))).scalars())
            if routing:
                stranger = next((r for r in out.recipients if r.lower() not in verified),
                                None)
                if stranger is not None:
                    raise MtaError("E_RECIPIENT_NOT_ALLOWED", f"{stranger} is not a verified "
                                   "destination address of this account; onboard a sending "
                                   "domain to send to anyone.", field="to")
            blocked = await suppression.suppressed_among(s, account_id, lowered,
                                                         out.domains[0], now)
            keys = await self._signing_keys(s, out.domains[0], now)
        if sending is not None and not keys:
            raise MtaError("E_SENDER_NOT_VERIFIED", f"{out.domains[0]} has no active DKIM "
                           "key; onboard it again.", field="from")
        return _Facts(sending, zone_id, routing, verified, blocked, keys)

    async def _signing_keys(self, session: Any, domain: str,
                            now: datetime) -> list[SigningKey]:
        # The cache holds every published key with its schedule, so a rotation's
        # switch happens at its announced time, not when the cache expires.
        cached = self._keys.get(domain)
        if cached is None or cached[0] <= time.monotonic():
            keys = (await load_key_schedule(session, self._vault, domain, now)
                    if self._vault else [])
            cached = (time.monotonic() + KEY_CACHE_SECONDS, keys)
            self._keys[domain] = cached
        return dkimkeys.signers(cached[1], now)

    async def _render_and_sign(self, out: _Outgoing, message_id: str, now: datetime,
                               feedback_id: str, keys: list[SigningKey]) -> bytes:
        def work() -> bytes:
            raw = out.render(message_id, now, feedback_id)
            return sign_message(raw, keys) if keys else raw

        try:
            if out.payload_size > THREAD_THRESHOLD:
                return await asyncio.to_thread(work)
            return work()
        except MtaError:
            raise
        except Exception as exc:
            log.exception("composing or signing failed", extra={
                "event": "sending.compose_failed", "message_id": message_id})
            raise MtaError("E_EMAIL_INVALID" if isinstance(exc, ValueError)
                           else "E_INTERNAL_SERVER_ERROR") from None

    async def _store(self, account_id: str, out: _Outgoing, facts: _Facts, source: str,
                     raw: bytes, message_id: str, accepted: list[str], refused: list[str],
                     return_path: str | None, counters: list[rate.CounterKey],
                     countable: int, now: datetime) -> list[Claimed]:
        """Message, deliveries, events and quota in one transaction: committed before
        the caller hears anything, or not at all."""
        verp = return_path is not None and self._verp_key is not None
        lease = self.sync_timeout > 0
        opts, retry = self.workers.options, self.workers.retry
        db = self.ctx.db
        msg_id = uuid.uuid4()
        dsn = out.dsn or Dsn()
        unit = Unit()
        unit.insert(MESSAGES, full_row(
            MESSAGES, now, id=msg_id, direction="outbound", source=source,
            account_id=account_id, message_id_header=message_id, mail_from=out.sender,
            rcpt_to=list(accepted), raw=raw, size=len(raw), received_at=now,
            status="queued", dsn_ret=dsn.ret, dsn_envid=dsn.envid))
        claimed: list[Claimed] = []
        for did, r in zip(await db.delivery_ids(len(accepted)), accepted, strict=True):
            state: dict[str, Any] = {}
            nxt = now
            if lease:  # as queue.claim() leaves a row it hands to a worker
                nxt = retry.next_attempt(now, 1, now, r.rpartition("@")[2].lower())
                state = {"attempts": 1, "next_attempt_at": nxt,
                         "lease_owner": self.ctx.node_id,
                         "lease_expires_at": now + timedelta(seconds=opts.lease_seconds)}
            asked = dsn.rcpt(r)
            row = delivery_row(did, msg_id, Recipient(r, verp_domain=return_path if verp
                                                      else None, notify=asked.notify,
                                                      orcpt=asked.orcpt),
                               mail_from=out.sender, now=now,
                               verp_key=self._verp_key if verp else None, **state)
            unit.insert(DELIVERIES, row)
            claimed.append(Claimed(did, msg_id, r, row["domain"], row["envelope_from"],
                                   row["priority"], row["attempts"], now, nxt, now, None,
                                   dsn_notify=asked.notify, dsn_orcpt=asked.orcpt))
        extra = {r: {"account_id": account_id, "zone_id": facts.zone_id} for r in accepted}
        unit.insert(EVENTS, event_rows(
            direction="outbound", status="Sent", recipients=accepted, ts=now,
            mail_from=out.sender, message_id=msg_id, subject=out.subject,
            details={"source": source, "message_id": message_id}, per_recipient=extra))
        if refused:
            unit.insert(EVENTS, self._rejected(account_id, facts, out, refused, msg_id))
        if countable and counters:  # raises when the quota is gone: this unit fails alone
            unit.then(lambda conn: rate.consume(conn, counters, countable))
        await db.commit(unit)
        if not lease:
            with contextlib.suppress(Exception):
                self.workers.wake()
        return claimed

    def _rejected(self, account_id: str, facts: _Facts, out: _Outgoing,
                  refused: list[str], message_row_id: Any) -> list:
        per = {r: {"account_id": account_id, "zone_id": facts.zone_id} for r in refused}
        rows = event_rows(direction="outbound", status="Rejected", recipients=refused,
                          mail_from=out.sender, message_id=message_row_id,
                          subject=out.subject, per_recipient=per)
        for row in rows:
            entry = facts.suppressed.get((row["rcpt_to"] or "").lower())
            row["details"] = {"reason": "suppressed", "error_code": "E_RECIPIENT_SUPPRESSED",
                           "suppression": entry.reason if entry else None}
        return rows

    # -- the bounded first attempt ------------------------------------------------------------

    async def _attempt(self, claimed: list[Claimed]) -> dict[int, str]:
        """Run the first attempt (already leased) and wait up to `sync_timeout` for it;
        returns delivery id -> status for the rows it settled."""
        if self.sync_timeout <= 0 or not claimed:
            return {}
        from mta.queue.delivery import _Job  # see the note in the report: deliver_claimed

        by_domain: dict[str, list[Claimed]] = defaultdict(list)
        for c in claimed:
            by_domain[c.domain].append(c)

        async def one(domain: str, batch: list[Claimed]) -> None:
            try:
                await self.workers._run_job(_Job(domain, batch))
            except Exception:  # _run_job settles its claims itself; this is a bug's net
                log.exception("immediate delivery failed", extra={
                    "event": "sending.attempt_failed", "domain": domain})

        tasks = [asyncio.create_task(one(d, b)) for d, b in by_domain.items()]
        for t in tasks:
            self._background.add(t)
            t.add_done_callback(self._background.discard)
        await asyncio.wait(tasks, timeout=self.sync_timeout)
        # The send is committed: whatever happens now, the answer is a success. Reading
        # the states back is only for the report; if the database went away meanwhile,
        # everything is reported queued (it is, or it was delivered: never lost).
        ids = [c.id for c in claimed]
        try:
            async with self.ctx.db.connection() as conn:
                rows = (await conn.execute(select(DELIVERIES.c.id, DELIVERIES.c.status)
                                           .where(DELIVERIES.c.id.in_(ids)))).all()
        except Exception as exc:
            log.warning("could not read delivery states after a committed send: %s", exc,
                        extra={"event": "sending.status_unknown"})
            return {}
        return {r.id: r.status for r in rows}


# -- raw messages ---------------------------------------------------------------------------

_LINE = re.compile(rb"\r\n|\r|\n")


def _split_message(data: bytes) -> tuple[list[tuple[str, str, bytes]], bytes]:
    """(fields as (name, raw value, the field's lines with CRLF), body) of a message.
    Raises E_EMAIL_INVALID when the header section is not RFC 5322."""
    lines = _LINE.split(data)
    fields: list[tuple[str, str, bytes]] = []
    i = 0
    while i < len(lines) and lines[i] != b"":
        line = lines[i]
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MtaError("E_EMAIL_INVALID", "The message starts with a continuation "
                               "line.")
            name, value, text = fields[-1]
            fields[-1] = (name, value + "\r\n" + line.decode("utf-8", "surrogateescape"),
                          text + line + b"\r\n")
        else:
            name, colon, value = line.partition(b":")
            if not colon or not name or not re.fullmatch(rb"[\x21-\x39\x3b-\x7e]+", name):
                raise MtaError("E_EMAIL_INVALID", "The message header section is malformed "
                               f"(line {i + 1}).")
            fields.append((name.decode("ascii"), value.decode("utf-8", "surrogateescape"),
                           line + b"\r\n"))
        i += 1
    if not fields or i >= len(lines):
        raise MtaError("E_EMAIL_INVALID", "The message has no header section or no body "
                       "separator.")
    body = b"\r\n".join(lines[i + 1:])
    return fields, body if body.endswith(b"\r\n") or not body else body + b"\r\n"


def _header_from(fields: list[tuple[str, str, bytes]]) -> str:
    values = [v for n, v, _ in fields if n.lower() == "from"]
    if len(values) != 1:
        raise MtaError("E_EMAIL_INVALID", "The message must have exactly one From field.",
                       field="from")
    addrs = [a for _, a in email.utils.getaddresses([values[0].replace("\r\n", "")]) if a]
    if len(addrs) != 1:
        raise MtaError("E_EMAIL_INVALID", "The From field must hold one address.",
                       field="from")
    return normalize_address(addrs[0], "from")


def _decode(value: str) -> str:
    import email.header

    text = value.replace("\r\n", "").strip()
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        return text
