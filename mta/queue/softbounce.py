"""Automatic soft-bounce suppression: an address the account's mail keeps failing to
reach for temporary reasons.

A soft bounce is a message the account sent (`bounces.suppression_applies`: never
forwarded mail, DSNs or verification mail) whose delivery to the address finally failed
after a temporary (4xx) reply: it expired in the queue with a 4xx as its last answer. A
deferral that later succeeded is no bounce, however often it was deferred; an expiry
after connection failures (no reply at all) says nothing about the address either.

`threshold` soft bounces within `window` suppress the address for the account for
`duration` (None = permanently; `delivery.soft_bounce` in the configuration). The entry's
note is the evidence, shown by the API and `mta suppression list --json`: how many, since
when, and each message with its last reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.queue.bounces import NOT_SENT_BY_ACCOUNT
from mta.store import suppression
from mta.store.models import Delivery, DeliveryAttempt, Message, Suppression

__all__ = ["SoftBounce", "soft_bounces", "suppress_if_due"]

NOTE_ITEMS = 5  # evidence entries written into the note (the newest ones)


@dataclass(frozen=True)
class SoftBounce:
    message_id: str
    finished_at: datetime
    last_reply: str | None


async def soft_bounces(session: AsyncSession, account_id: str, recipient: str,
                       since: datetime) -> list[SoftBounce]:
    """The account's sent messages to `recipient` that expired after a 4xx since `since`,
    newest first."""
    last_code = (select(DeliveryAttempt.reply_code)
                 .where(DeliveryAttempt.delivery_id == Delivery.id)
                 .order_by(DeliveryAttempt.id.desc()).limit(1).scalar_subquery())
    rows = (await session.execute(
        select(Delivery.message_id, Delivery.finished_at, Delivery.last_reply)
        .join(Message, Message.id == Delivery.message_id)
        .where(Message.account_id == account_id, Message.direction == "outbound",
               Message.source.not_in(NOT_SENT_BY_ACCOUNT),
               func.lower(Delivery.recipient) == recipient.lower(),
               Delivery.status == "expired", Delivery.finished_at >= since,
               last_code >= 400, last_code < 500)
        .order_by(Delivery.finished_at.desc()))).all()
    return [SoftBounce(str(m), f, r) for m, f, r in rows]


async def suppress_if_due(session: AsyncSession, account_id: str, recipient: str, *,
                          now: datetime, threshold: int, window: float,
                          duration: float | None) -> Suppression | None:
    """Suppress `recipient` for the account when it has `threshold` soft bounces within
    `window` seconds (called when one of its deliveries has just expired)."""
    if threshold <= 0:
        return None
    since = now - timedelta(seconds=window)
    found = await soft_bounces(session, account_id, recipient, since)
    if len(found) < threshold:
        return None
    evidence = "; ".join(f"message {b.message_id} expired {b.finished_at:%Y-%m-%d %H:%M}Z "
                         f"({b.last_reply})" for b in found[:NOTE_ITEMS])
    more = f"; and {len(found) - NOTE_ITEMS} more" if len(found) > NOTE_ITEMS else ""
    note = (f"{len(found)} soft bounces since {since:%Y-%m-%d %H:%M}Z (threshold "
            f"{threshold}): messages that expired after temporary failures: {evidence}{more}")
    expires = now + timedelta(seconds=duration) if duration is not None else None
    return await suppression.add(session, account_id, recipient, "soft_bounce", now=now,
                                 expires_at=expires, note=note)
