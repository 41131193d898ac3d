"""The webhook outbox on a real PostgreSQL: the trigger on `events` (migration 0012)
writes a row iff the event's transaction commits, with the right type for each activity
status; claims keep each message's events in order, lease them and back off."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from mta.config import WebhookSettings
from mta.observe.events import event_rows, record_events
from mta.store.models import Account, Message, WebhookDelivery
from mta.webhooks import endpoints, outbox
from mta.webhooks.payload import event_body


@pytest.fixture
def now() -> datetime:
    """A claim's clock, a little after the rows' default `next_attempt_at` (now())."""
    return datetime.now(UTC) + timedelta(seconds=5)


async def account(db, name: str = "acme") -> str:
    async with db.session() as s:
        row = Account(name=name)
        s.add(row)
        await s.flush()
        return row.id


async def endpoint(db, account_id: str, types: list[str] | None = None) -> str:
    async with db.session() as s:
        return (await endpoints.create(s, account_id, "https://hooks.example/x",
                                       event_types=types, settings=WebhookSettings())).id


async def message(db, account_id: str) -> uuid.UUID:
    async with db.session() as s:
        m = Message(direction="outbound", source="api", account_id=account_id,
                    mail_from="app@sender.test", rcpt_to=["r@inbox.test"], raw=b"x", size=1)
        s.add(m)
        await s.flush()
        return m.id


async def record(db, account_id: str | None, status: str, *, direction: str = "outbound",
                 details: dict | None = None, message_id: uuid.UUID | None = None,
                 mail_from: str = "app@sender.test") -> None:
    async with db.connection() as conn:
        await record_events(conn, event_rows(
            direction=direction, status=status, recipients=["r@inbox.test"],
            mail_from=mail_from, message_id=message_id, details=details,
            per_recipient={"r@inbox.test": {"account_id": account_id}}))


async def outbox_types(db) -> list[str]:
    async with db.session() as s:
        return list((await s.execute(select(WebhookDelivery.event_type)
                                     .order_by(WebhookDelivery.id))).scalars())


async def test_an_event_is_in_the_outbox_iff_its_transaction_committed(db, now):
    acct = await account(db)
    await endpoint(db, acct)
    with pytest.raises(RuntimeError):
        async with db.connection() as conn:
            await record_events(conn, event_rows(
                direction="outbound", status="Delivered", recipients=["r@inbox.test"],
                per_recipient={"r@inbox.test": {"account_id": acct}}))
            raise RuntimeError("the transaction fails after the event was written")
    assert await outbox_types(db) == []
    await record(db, acct, "Delivered")
    assert await outbox_types(db) == ["delivered"]


@pytest.mark.parametrize(("direction", "status", "details", "mail_from", "expected"), [
    ("outbound", "Sent", None, "app@sender.test", "sent"),
    ("outbound", "Delivered", None, "app@sender.test", "delivered"),
    ("outbound", "Deferred", None, "app@sender.test", "deferred"),
    ("outbound", "Delivery failed", {"result": "failed"}, "app@sender.test", "bounced"),
    ("outbound", "Complained", None, "app@sender.test", "complained"),
    ("outbound", "Rejected", {"reason": "suppressed"}, "app@sender.test", "suppressed"),
    ("outbound", "Rejected", {"reason": "other"}, "app@sender.test", None),
    ("outbound", "Failed", None, "app@sender.test", None),
    ("outbound", "Delivered", None, "", None),  # a DSN of ours
    ("inbound", "Forwarded", None, "a@client.test", "inbound.forwarded"),
    ("inbound", "Rejected", {"reason": "dmarc_reject"}, "a@client.test", "inbound.rejected"),
    ("inbound", "Delivery failed", {"in_session": True}, "a@client.test", "inbound.rejected"),
    ("inbound", "Delivery failed", {"result": "failed"}, "a@client.test", None),
    ("inbound", "Received", None, "a@client.test", None),
    ("inbound", "Dropped", None, "a@client.test", None),
])
async def test_activity_statuses_map_to_webhook_types(db, direction, status, details,
                                                      mail_from, expected):
    acct = await account(db)
    await endpoint(db, acct)
    await record(db, acct, status, direction=direction, details=details, mail_from=mail_from)
    assert await outbox_types(db) == ([expected] if expected else [])


async def test_only_the_accounts_endpoints_that_want_the_type(db, now):
    acct, other = await account(db), await account(db, "other")
    await endpoint(db, acct, ["bounced"])
    everything = await endpoint(db, acct)
    await record(db, acct, "Delivered")
    await record(db, other, "Delivered")
    await record(db, None, "Delivered")
    await record(db, acct, "Delivery failed", details={"expired": True})
    async with db.session() as s:
        rows = (await s.execute(select(WebhookDelivery).order_by(WebhookDelivery.id))
                ).scalars().all()
    assert sorted((r.event_type, r.endpoint_id == everything) for r in rows) == [
        ("bounced", False), ("bounced", True), ("delivered", True)]
    assert event_body("bounced", rows[-1].event)["bounce"] == {"type": "soft"}


async def test_claims_keep_a_messages_events_in_order_and_back_off(db, now):
    acct = await account(db)
    await endpoint(db, acct)
    mid = await message(db, acct)
    await record(db, acct, "Sent", message_id=mid)
    await record(db, acct, "Delivered", message_id=mid)
    await record(db, acct, "Sent")  # another message (none): not held back
    first = await outbox.claim(db, "n1", limit=10, lease_seconds=30, now=now)
    assert [c.event_type for c in first] == ["sent", "sent"]
    held = next(c for c in first if c.message_id == mid)
    # Leased: nobody else gets it, and its message's next event waits for it.
    assert await outbox.claim(db, "n2", limit=10, lease_seconds=30, now=now) == []
    state = await outbox.record_failure(db, "n1", held, code=503, error="HTTP 503", now=now,
                                        max_attempts=5, first=10, cap=60)
    assert state == "pending"
    # Due again only after the backoff; meanwhile `delivered` still waits behind it.
    assert await outbox.claim(db, "n2", limit=10, lease_seconds=30,
                              now=now + timedelta(seconds=9)) == []
    again = await outbox.claim(db, "n2", limit=10, lease_seconds=30,
                               now=now + timedelta(seconds=10))
    assert [(c.id, c.attempts) for c in again] == [(held.id, 2)]
    # n1 lost the lease: its late answer changes nothing.
    assert not await outbox.record_success(db, "n1", held, 200, now)
    assert await outbox.record_success(db, "n2", again[0], 200, now + timedelta(seconds=11))
    nxt = await outbox.claim(db, "n2", limit=10, lease_seconds=30,
                             now=now + timedelta(seconds=11))
    assert [c.event_type for c in nxt] == ["delivered"]


async def test_a_lease_that_runs_out_makes_the_event_due_for_any_node(db, now):
    acct = await account(db)
    await endpoint(db, acct)
    await record(db, acct, "Sent")
    [c] = await outbox.claim(db, "dead-node", limit=5, lease_seconds=5, now=now)
    assert await outbox.claim(db, "n2", limit=5, lease_seconds=5,
                              now=now + timedelta(seconds=4)) == []
    [again] = await outbox.claim(db, "n2", limit=5, lease_seconds=5,
                                 now=now + timedelta(seconds=5))
    assert (again.id, again.attempts) == (c.id, 2)


async def test_the_last_attempt_marks_failed_and_frees_the_next_event(db, now):
    acct = await account(db)
    await endpoint(db, acct)
    mid = await message(db, acct)
    await record(db, acct, "Sent", message_id=mid)
    await record(db, acct, "Bounce unparsed", message_id=mid)  # not a webhook event
    await record(db, acct, "Delivered", message_id=mid)
    [c] = await outbox.claim(db, "n1", limit=5, lease_seconds=5, now=now)
    assert await outbox.record_failure(db, "n1", c, code=None, error="ConnectError",
                                       now=now, max_attempts=1, first=1, cap=1) == "failed"
    [d] = await outbox.claim(db, "n1", limit=5, lease_seconds=5, now=now)
    assert d.event_type == "delivered"
    async with db.session() as s:
        counts = dict((await s.execute(select(WebhookDelivery.status, func.count())
                                       .group_by(WebhookDelivery.status))).all())
        stats = await endpoints.stats(s, [c.endpoint_id])
    assert counts == {"failed": 1, "pending": 1}
    assert stats[c.endpoint_id]["failed"] == 1
    assert stats[c.endpoint_id]["last_error"] == "ConnectError"


def test_backoff_doubles_up_to_the_cap():
    assert [outbox.backoff(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]


async def test_one_endpoint_gets_at_most_its_share_of_a_claim(db, now):
    acct = await account(db)
    slow = await endpoint(db, acct, ["sent"])
    for _ in range(5):
        await record(db, acct, "Sent")
    fast = await endpoint(db, acct, ["delivered"])
    await record(db, acct, "Delivered")
    first = await outbox.claim(db, "n1", limit=8, lease_seconds=30, now=now, per_endpoint=2)
    assert sorted(c.endpoint_id == slow for c in first) == [False, True, True]
    # The slow one's two POSTs are still out: it gets nothing more, the others wait.
    await record(db, acct, "Delivered")
    more = await outbox.claim(db, "n1", limit=8, lease_seconds=30, now=now, per_endpoint=2,
                              in_flight={slow: 2, fast: 1})
    assert [c.endpoint_id for c in more] == [fast]
    more = await outbox.claim(db, "n1", limit=8, lease_seconds=30, now=now, per_endpoint=2,
                              in_flight={slow: 1})
    assert [c.endpoint_id for c in more] == [slow]
