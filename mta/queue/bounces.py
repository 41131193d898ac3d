"""Bounces out and in: when to send a DSN, VERP return paths, and bounce/complaint intake.

Out (`queue_dsn`): the failure policy in `delivery.py` decides THAT a recipient failed,
expired or is delayed; this module decides whether the sender hears about it and queues
the DSN (format by `dsn.compose_dsn`) through the same queue, with the null reverse-path.
Never to the null sender, never about a DSN or an auto-reply (`dsn.dsn_allowed`), never
about a DSN we made (source `dsn`). One DSN per message and kind per batch.

VERP: mail we send carries `bounces+<delivery id>-<token>@<return-path domain>` as its
MAIL FROM, where the token is an HMAC of the id under a key derived from the node secret
(`secret_key`, else the first SRS secret), so a bounce names the exact delivery and a
forged one is refused. Lower-case hex only: some servers fold the local part's case.

In (`handle_inbound_bounce`): the MX listener hands us mail for a VERP address
(`is_bounce_address`). An ARF report (RFC 5965) marks the delivery `complained` and adds a
read-only complaint suppression; a DSN (RFC 3464), or failing that a best-effort parse of a
non-standard bounce, with a failed action marks it `bounced` and, for a hard bounce
status, suppresses the recipient. A delay notice is only logged. Everything happens in the
caller's session, so intake is one transaction with the message's acceptance.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.observe import metrics
from mta.queue import dsn
from mta.queue.outcome import HARD_BOUNCE_CODES, HARD_BOUNCE_ENHANCED, RecipientOutcome
from mta.queue.queue import PRIORITY_INTERACTIVE, Recipient, enqueue, verp_token
from mta.store import suppression
from mta.store.models import Delivery, DeliveryAttempt, Event, Message, SendingDomain

if TYPE_CHECKING:
    from mta.queue.queue import Claimed, RetryPolicy

__all__ = [
    "FEEDBACK_LOCAL_PARTS", "BounceResult", "bounce_recipient", "handle_inbound_bounce",
    "is_bounce_address", "is_bounce_domain", "parse_verp", "queue_dsn", "queue_expanded_dsn",
    "suppression_applies", "verp_key", "verp_key_or_none",
]

_VERP_RE = re.compile(r"^bounces\+(\d{1,19})-([0-9a-f]{12})$", re.IGNORECASE)
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other", "auth-failure"})
# issue 4: the fixed addresses of a return-path domain that take ARF reports (feedback
# loops are registered once per domain, not per VERP address); see handle_inbound_bounce.
FEEDBACK_LOCAL_PARTS = frozenset({"fbl", "abuse"})


# --- VERP --------------------------------------------------------------------------------


def verp_key_or_none(settings: Any) -> bytes | None:
    secret = getattr(settings, "secret_key", None)
    if not secret:
        srs = getattr(settings, "srs", None)
        secret = srs.secrets[0] if srs is not None and srs.secrets else None
    if not secret:
        return None
    # A key of its own, so a VERP token never doubles as anything else signed by the secret.
    return hmac.new(secret.encode(), b"mta verp return-path v1", sha256).digest()


def verp_key(settings: Any) -> bytes:
    key = verp_key_or_none(settings)
    if key is None:
        raise ValueError("VERP return paths need secret_key (or srs.secrets) in the config")
    return key


def parse_verp(address: str, key: bytes | None = None) -> int | None:
    """The delivery id in a VERP address; with `key`, only when its token is genuine."""
    local = address.strip().strip("<>").rpartition("@")[0]
    m = _VERP_RE.match(local)
    if not m:
        return None
    delivery_id = int(m.group(1))
    if key is not None and not hmac.compare_digest(verp_token(delivery_id, key),
                                                   m.group(2).lower()):
        return None
    return delivery_id


def is_bounce_address(address: str, key: bytes | None = None) -> bool:
    """Whether the MX should hand this recipient to `handle_inbound_bounce`. Without a
    key it is a syntax check; with one, forged tokens are refused."""
    return parse_verp(address, key) is not None


async def is_bounce_domain(session: AsyncSession, domain: str) -> bool:
    """Whether `domain` is the return-path (bounce) subdomain of a sending domain."""
    d = domain.lower().rstrip(".")
    return (await session.execute(select(SendingDomain.id).where(
        SendingDomain.return_path_domain == d).limit(1))).first() is not None


async def bounce_recipient(session: AsyncSession, address: str,
                           key: bytes | None) -> bool | None:
    """issue 4: the RCPT-time answer for mail to our return-path domains. None: not a
    return-path domain (someone else decides). True: ours to consume — a VERP address
    whose token checks, or a fixed feedback address (an ARF report there is mapped through
    the VERP return path in its original headers). False: forged or unknown (550 5.1.1)."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    if not local or not await is_bounce_domain(session, domain):
        return None
    if key is None:  # no secret: we never sent a VERP address, so none can be genuine
        return False
    return is_bounce_address(address, key) or local.lower() in FEEDBACK_LOCAL_PARTS


# --- DSNs out -------------------------------------------------------------------------------


# Outbound mail that is ours, not the account's: DSNs and destination-verification mail.
NOT_SENT_BY_ACCOUNT = ("dsn", "verification")


def suppression_applies(msg: Message) -> bool:
    """Automatic suppression is about mail an account sends (API, submission, bindings,
    handler replies), not forwarded mail (direction inbound), our DSNs or verification."""
    return msg.direction == "outbound" and msg.source not in NOT_SENT_BY_ACCOUNT


def _dsn_recipient(c: Claimed, o: RecipientOutcome, kind: str, now: datetime,
                   retry: RetryPolicy | None) -> dsn.DsnRecipient:
    orcpt = c.dsn_orcpt  # RFC 3461 §4.2: echoed as Original-Recipient
    if kind == "expired":
        return dsn.DsnRecipient(c.recipient, "failed", "4.4.7", o.reply, o.mx_host,
                                original_recipient=orcpt,
                                last_attempt=now, detail="delivery time expired; last "
                                "error: " + (str(o.reply) if o.reply else o.detail or "-"))
    action = {"delayed": "delayed", "relayed": "relayed"}.get(kind, "failed")
    until = None
    if kind == "delayed" and retry is not None:
        until = c.created_at + retry.max_age(c.domain)
    base = dsn.DsnRecipient.from_outcome(o, action, last_attempt=now, will_retry_until=until)
    return dsn.DsnRecipient(c.recipient, base.action, base.status, base.diagnostic,
                            base.remote_mta, original_recipient=orcpt, last_attempt=now,
                            will_retry_until=until, detail=base.detail)


async def queue_dsn(session: AsyncSession, message: Message, kind: str,
                    items: Sequence[tuple[Claimed, RecipientOutcome]], *, now: datetime,
                    reporting_mta: str, retry: RetryPolicy | None = None) -> Message | None:
    """Queue one DSN of `kind` (failed | expired | delayed | relayed) about `items` of
    `message` to its envelope sender; returns the DSN's message row, or None when none
    is due. Whether the sender asked for this kind (NOTIFY) is the failure policy's
    question (`delivery.decide`); the message's RET and ENVID shape the DSN here."""
    if not items or message.source == "dsn" or not dsn.dsn_allowed(message.mail_from,
                                                                   message.raw):
        return None
    rcpts = [_dsn_recipient(c, o, kind, now, retry) for c, o in items]
    return await _queue_report(session, message, rcpts, now=now, reporting_mta=reporting_mta,
                               arrival=message.received_at or items[0][0].created_at)


async def queue_expanded_dsn(session: AsyncSession, message: Message,
                             recipients: Sequence[tuple[str, str | None]], *, now: datetime,
                             reporting_mta: str) -> Message | None:
    """RFC 3461 §5.2.7.3: an `expanded` DSN for `recipients` ((address, ORCPT)) of an
    accepted message that we forward to several destinations; None when none is due."""
    if not recipients or not dsn.dsn_allowed(message.mail_from, message.raw):
        return None
    rcpts = [dsn.DsnRecipient(r, "expanded", "2.0.0", original_recipient=orcpt,
                              detail="forwarded to several addresses; no further "
                                     "success notices will follow")
             for r, orcpt in recipients]
    return await _queue_report(session, message, rcpts, now=now, reporting_mta=reporting_mta,
                               arrival=message.received_at or now)


async def _queue_report(session: AsyncSession, message: Message,
                        rcpts: list[dsn.DsnRecipient], *, now: datetime, reporting_mta: str,
                        arrival: datetime) -> Message:
    """Compose the DSN (the message's RET and ENVID shape it) and queue it to the
    message's envelope sender with the null reverse-path."""
    raw = dsn.compose_dsn(reporting_mta, message.raw, message.mail_from, rcpts,
                          arrival_date=arrival,
                          postmaster_address=f"MAILER-DAEMON@{reporting_mta}",
                          envelope_id=message.dsn_envid, ret=message.dsn_ret, now=now)
    mid = re.search(rb"^Message-ID:\s*(<[^>]+>)", raw, re.IGNORECASE | re.MULTILINE)
    note = Message(direction="outbound", source="dsn", account_id=message.account_id,
                   message_id_header=mid.group(1).decode() if mid else None, mail_from="",
                   rcpt_to=[message.mail_from], raw=raw, size=len(raw), received_at=now,
                   status="queued")
    await enqueue(session, note, [Recipient(message.mail_from, envelope_from="")], now=now,
                  priority=PRIORITY_INTERACTIVE)
    return note


# --- bounces and complaints in ----------------------------------------------------------------


@dataclass(frozen=True)
class BounceResult:
    kind: str  # arf | dsn | fallback | delayed | ignored | unparsed | unknown_address
    delivery_id: int | None = None
    recipient: str | None = None
    outcome: str | None = None  # bounced | complained
    status: str | None = None  # RFC 3463 status of a bounce, feedback type of a complaint
    suppression_id: str | None = None


def _verp_in_headers(headers: list[tuple[str, str]], key: bytes) -> int | None:
    for name, value in headers:
        if name.lower() in ("return-path", "x-original-return-path", "sender"):
            for cand in re.findall(r"[^\s<>,]+@[^\s<>,]+", value):
                did = parse_verp(cand, key)
                if did is not None:
                    return did
    return None


def _is_hard(status: str, diagnostic: str | None) -> bool:
    if status in HARD_BOUNCE_ENHANCED:
        return True
    if status.startswith("5.") and status != "5.0.0":
        return False
    code = re.search(r"\b(5\d\d)\b", diagnostic or "")
    return bool(code) and int(code.group(1)) in HARD_BOUNCE_CODES


async def handle_inbound_bounce(session: AsyncSession, rcpt: str, raw: bytes, *, key: bytes,
                                now: datetime) -> BounceResult:
    """Map a report received for VERP address `rcpt` to its delivery and record it."""
    arf = dsn.parse_arf(raw)
    did = parse_verp(rcpt, key)
    if did is None and arf is not None:  # FBLs often report to a fixed address
        did = _verp_in_headers(arf.original_headers, key)
    delivery = await session.get(Delivery, did, with_for_update=True) if did else None
    if delivery is None:
        metrics.BOUNCES_RECEIVED.labels("forged").inc()
        return BounceResult("unknown_address")
    msg = await session.get(Message, delivery.message_id)
    if arf is not None:
        return await _complaint(session, delivery, msg, arf, now)
    entries = dsn.parse_dsn(raw)
    kind = "dsn"
    if not entries:
        entries, kind = dsn.parse_bounce(raw), "fallback"
    if not entries:
        metrics.BOUNCES_RECEIVED.labels("unparsed").inc()
        _event(session, delivery, msg, now, "Bounce unparsed", {"delivery_id": delivery.id})
        return BounceResult("unparsed", delivery.id, delivery.recipient)
    want = delivery.recipient.lower()
    entry = next((e for e in entries if want in (e.recipient.lower(),
                                                 (e.original_recipient or "").lower())),
                 None) or next((e for e in entries if e.permanent), entries[0])
    metrics.BOUNCES_RECEIVED.labels(kind).inc()
    if not entry.permanent:
        _event(session, delivery, msg, now, "Deferred",
               {"delivery_id": delivery.id, "async": True, "status": entry.status,
                "diagnostic": entry.diagnostic_code, "source": kind})
        return BounceResult("delayed", delivery.id, delivery.recipient, None, entry.status)
    if delivery.status in ("delivered", "queued"):
        delivery.status = "bounced"
        delivery.finished_at = now
        delivery.lease_owner = delivery.lease_expires_at = None
    delivery.last_reply = entry.diagnostic_code or entry.status
    code = re.search(r"\b([245]\d\d)\b", entry.diagnostic_code or "")
    session.add(DeliveryAttempt(
        delivery_id=delivery.id, started_at=now, finished_at=now, result="bounced",
        mx_host=entry.remote_mta or entry.reporting_mta,
        reply_code=int(code.group(1)) if code else None, enhanced_code=entry.status,
        reply_text=entry.diagnostic_code))
    entry_id = None
    if msg is not None and msg.account_id and suppression_applies(msg) and _is_hard(
            entry.status, entry.diagnostic_code):
        sup = await suppression.add(session, msg.account_id, delivery.recipient, "hard_bounce",
                                    now=now, note=f"bounce report for delivery {delivery.id}")
        entry_id = sup.id
        metrics.SUPPRESSIONS_ADDED.labels("hard_bounce").inc()
    _event(session, delivery, msg, now, "Delivery failed",
           {"delivery_id": delivery.id, "async": True, "status": entry.status,
            "diagnostic": entry.diagnostic_code, "source": kind, "suppressed": bool(entry_id)})
    return BounceResult(kind, delivery.id, delivery.recipient, "bounced", entry.status,
                        entry_id)


async def _complaint(session: AsyncSession, delivery: Delivery, msg: Message | None,
                     arf: dsn.ArfReport, now: datetime) -> BounceResult:
    metrics.BOUNCES_RECEIVED.labels("arf").inc()
    if arf.feedback_type not in COMPLAINT_TYPES:  # e.g. not-spam
        _event(session, delivery, msg, now, "Feedback",
               {"delivery_id": delivery.id, "feedback_type": arf.feedback_type})
        return BounceResult("ignored", delivery.id, delivery.recipient, None,
                            arf.feedback_type)
    if delivery.status in ("delivered", "bounced"):
        delivery.status = "complained"
    entry_id = None
    if msg is not None and msg.account_id:
        sup = await suppression.add(
            session, msg.account_id, delivery.recipient, "complaint", now=now,
            note=f"{arf.feedback_type} report from {arf.reporting_mta or arf.user_agent or '?'}"
                 f" about delivery {delivery.id}")
        entry_id = sup.id
        metrics.SUPPRESSIONS_ADDED.labels("complaint").inc()
    _event(session, delivery, msg, now, "Complained",
           {"delivery_id": delivery.id, "feedback_type": arf.feedback_type,
            "reporting_mta": arf.reporting_mta, "source_ip": arf.source_ip})
    return BounceResult("arf", delivery.id, delivery.recipient, "complained",
                        arf.feedback_type, entry_id)


def _event(session: AsyncSession, delivery: Delivery, msg: Message | None, now: datetime,
           status: str, details: dict) -> None:
    session.add(Event(ts=now, message_id=delivery.message_id,
                      account_id=msg.account_id if msg else None,
                      direction=msg.direction if msg else "outbound", status=status,
                      mail_from=msg.mail_from if msg else None, rcpt_to=delivery.recipient,
                      domain=delivery.domain, details=details))
