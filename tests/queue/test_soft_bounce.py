"""Automatic suppression counts only what the account sent and what finally failed: the
delivery workers end to end (real queue, RemoteDelivery, SMTP sinks scripted to answer 4xx
or 5xx, an injected clock), the suppression list read back as the API shows it."""

from __future__ import annotations

from collections import deque
from datetime import timedelta

from sqlalchemy import select

from mta.config import Duration, Settings
from mta.config_load import load_settings
from mta.queue import queue as q
from mta.queue.delivery import DeliveryOptions, SuppressionPolicy
from mta.store import suppression
from mta.store.models import Delivery, Message, Suppression
from tests.queue.test_delivery import (  # noqa: F401 - fixtures
    SENDER,
    port,
    rows,
    settings_for_tests,
    workers,
    world,
)
from tests.queue.test_queue import RAW, T0, Clock, make_account


async def enqueue(db, rcpt: str, *, account_id: str, now, direction: str = "outbound",
                  source: str = "api") -> Delivery:
    """One message to `rcpt`; a forwarded one is direction inbound, source forward, as
    the inbound router stores it."""
    async with db.session() as s:
        msg = Message(direction=direction, source=source, account_id=account_id,
                      mail_from=SENDER, rcpt_to=[rcpt], raw=RAW, size=len(RAW),
                      received_at=now)
        [d] = await q.enqueue(s, msg, [rcpt], now=now)
        return d


async def drain(w) -> None:
    while await w.run_once():
        pass


async def suppressed(db, account: str, rcpt: str, now) -> Suppression | None:
    async with db.session() as s:
        return await suppression.is_suppressed(s, account, rcpt, None, now)


POLICY = SuppressionPolicy(soft_bounce_threshold=3, soft_bounce_window=86400,
                           soft_bounce_duration=7 * 86400)


async def test_destination_deferred_three_times_then_delivered_is_not_suppressed(
        db, dns_server, port, world):  # noqa: F811
    sink, _ = world
    # Three messages, each answered 451 three times before it is accepted: nine soft
    # answers, and every message delivered in the end.
    sink.rcpt_replies["busy@dest.test"] = deque(["451 4.2.1 mailbox busy, try later"] * 9)
    acct = await make_account(db)
    clock = Clock()
    w = workers(db, dns_server, port, clock, suppression=POLICY)
    ids = [(await enqueue(db, "busy@dest.test", account_id=acct, now=clock())).id
           for _ in range(3)]
    for _ in range(4):
        await drain(w)
        queued = await rows(db, Delivery, Delivery.id.in_(ids), Delivery.status == "queued")
        if queued:
            clock.now = max(d.next_attempt_at for d in queued)
    done = await rows(db, Delivery, Delivery.id.in_(ids))
    assert [(d.status, d.attempts) for d in done] == [("delivered", 4)] * 3
    assert len(sink.wait_for(3)) == 3
    assert await rows(db, Suppression) == []
    assert await suppressed(db, acct, "busy@dest.test", clock()) is None


async def test_sent_messages_that_expire_after_4xx_suppress_with_their_evidence(
        db, dns_server, port, world):  # noqa: F811
    sink, _ = world
    sink.rcpt_replies["full@dest.test"] = "452 4.2.2 mailbox full"
    acct = await make_account(db)
    clock = Clock()
    # max_age 0: the first deferral is already the last, each message expires at once.
    w = workers(db, dns_server, port, clock, suppression=POLICY,
                settings=settings_for_tests(max_age=Duration(0)))
    sent = []
    for i in range(3):
        sent.append(await enqueue(db, "full@dest.test", account_id=acct, now=clock()))
        await drain(w)
        [row] = await rows(db, Delivery, Delivery.id == sent[-1].id)
        assert row.status == "expired"
        if i < 2:
            assert await rows(db, Suppression) == []
        clock.advance(600)
    entry = await suppressed(db, acct, "full@dest.test", clock())
    assert entry is not None and entry.reason == "soft_bounce"
    assert entry.expires_at == T0 + timedelta(seconds=1200) + timedelta(days=7)
    shown = suppression.to_dict(entry)  # what the API and `mta suppression list --json` show
    assert shown["reason"] == "soft_bounce"
    assert shown["note"].startswith("3 soft bounces since")
    for d in sent:
        assert f"message {d.message_id} expired" in shown["note"]
    assert shown["note"].count("(452 4.2.2 mailbox full)") == 3


async def test_forwarded_mail_never_suppresses_the_accounts_sending(
        db, dns_server, port, world):  # noqa: F811
    sink, _ = world
    acct = await make_account(db)
    clock = Clock()
    policy = SuppressionPolicy(soft_bounce_threshold=2, soft_bounce_window=86400)
    w = workers(db, dns_server, port, clock, suppression=policy,
                settings=settings_for_tests(max_age=Duration(0)))

    # A forwarded message's hard bounce: a failure, a DSN, and no suppression.
    sink.rcpt_replies["gone@dest.test"] = "550 5.1.1 <gone@dest.test>: no such user"
    fwd = await enqueue(db, "gone@dest.test", account_id=acct, now=clock(),
                        direction="inbound", source="forward")
    await drain(w)
    [row] = await rows(db, Delivery, Delivery.id == fwd.id)
    assert row.status == "failed"
    assert await rows(db, Suppression) == []
    # ... so the account's own mail to that address still goes out.
    del sink.rcpt_replies["gone@dest.test"]
    mine = await enqueue(db, "gone@dest.test", account_id=acct, now=clock())
    await drain(w)
    [row] = await rows(db, Delivery, Delivery.id == mine.id)
    assert row.status == "delivered"
    assert await suppressed(db, acct, "gone@dest.test", clock()) is None

    # Forwarded messages that expire after 4xx do not count towards soft bounces either.
    sink.rcpt_replies["full@dest.test"] = "452 4.2.2 mailbox full"
    for _ in range(2):
        await enqueue(db, "full@dest.test", account_id=acct, now=clock(),
                      direction="inbound", source="forward")
        await drain(w)
    first = await enqueue(db, "full@dest.test", account_id=acct, now=clock())
    await drain(w)
    assert await suppressed(db, acct, "full@dest.test", clock()) is None  # 1 of 2
    second = await enqueue(db, "full@dest.test", account_id=acct, now=clock())
    await drain(w)
    entry = await suppressed(db, acct, "full@dest.test", clock())
    assert entry is not None and entry.note.startswith("2 soft bounces")
    async with db.session() as s:
        forwarded = (await s.execute(select(Message.id).where(
            Message.source == "forward", Message.rcpt_to.contains(["full@dest.test"])))
        ).scalars().all()
    assert len(forwarded) == 2
    assert all(str(m) not in entry.note for m in forwarded)
    assert str(first.message_id) in entry.note and str(second.message_id) in entry.note


def test_threshold_window_and_duration_come_from_the_configuration(tmp_path):
    cfg = tmp_path / "mta.yaml"
    cfg.write_text("delivery:\n  soft_bounce:\n    threshold: 5\n    window: 2d\n"
                   "    duration: null\n")
    policy = DeliveryOptions.from_settings(load_settings(str(cfg))).suppression
    assert (policy.soft_bounce_threshold, policy.soft_bounce_window,
            policy.soft_bounce_duration) == (5, 2 * 86400, None)
    default = DeliveryOptions.from_settings(Settings()).suppression
    assert (default.soft_bounce_threshold, default.soft_bounce_window,
            default.soft_bounce_duration) == (3, 7 * 86400, 30 * 86400)
