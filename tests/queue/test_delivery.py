"""Delivery workers end to end: the real queue in PostgreSQL, the real RemoteDelivery,
SMTP sinks and the DNS server on loopback, and an injected clock for the schedule."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.node import NodeContext
from mta.queue import bounces
from mta.queue.delivery import DeliveryOptions, DeliveryWorkers, SuppressionPolicy
from mta.queue.queue import Recipient
from mta.queue.remote import RemoteDelivery
from mta.store.models import Delivery, DeliveryAttempt, Event, Message, Suppression
from tests.harness.smtp_sink import _free_port
from tests.queue.test_queue import T0, Clock, enqueue, make_account

SENDER = "alice@src.test"


def settings_for_tests(**retry) -> Settings:
    s = Settings()
    s.node.hostname = "mta.src.test"
    s.secret_key = "test-secret-key"
    for k, v in retry.items():
        setattr(s.retry, k, v)
    return s


@pytest.fixture
def port() -> int:
    return _free_port("127.0.0.2")


@pytest.fixture
def world(dns_server, make_sink, port):
    """dest.test -> sink on 127.0.0.2, src.test (the senders, where DSNs go) -> 127.0.0.3."""
    dns_server.add_zone("""
        dest.test.     300 IN MX 10 mx.dest.test.
        mx.dest.test.  300 IN A 127.0.0.2
        src.test.      300 IN MX 10 mx.src.test.
        mx.src.test.   300 IN A 127.0.0.3
    """)
    return make_sink("127.0.0.2", port=port), make_sink("127.0.0.3", port=port)


def workers(db, dns_server, port, clock, settings=None, **opts) -> DeliveryWorkers:
    settings = settings or settings_for_tests()
    resolver = DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)
    ctx = NodeContext(settings=settings, db=db, resolver=resolver, node_id="node-a",
                      clock=clock)
    transport = RemoteDelivery(resolver, "mta.src.test", port=port, connect_timeout=3,
                               command_timeout=5, data_timeout=5)
    return DeliveryWorkers(ctx, transport, options=DeliveryOptions(**opts),
                           rng=random.Random(1))


async def rows(db, model, *where, order=None):
    async with db.session() as s:
        stmt = select(model).where(*where)
        if order is not None:
            stmt = stmt.order_by(order)
        return (await s.execute(stmt)).scalars().all()


async def dsn_messages(db) -> list[Message]:
    return await rows(db, Message, Message.source == "dsn", order=Message.received_at)


async def test_451_then_250_delivered_on_second_try_after_the_backoff(db, dns_server, port,
                                                                      world):
    sink, _ = world
    sink.rcpt_replies["grey@dest.test"] = deque(["451 4.7.1 greylisted, come back later"])
    clock = Clock()
    w = workers(db, dns_server, port, clock)
    [d] = await enqueue(db, ["grey@dest.test"], mail_from=SENDER, now=T0)

    assert await w.run_once() == 1
    [row] = await rows(db, Delivery, Delivery.id == d.id)
    assert (row.status, row.attempts) == ("queued", 1)
    assert row.last_reply == "451 4.7.1 greylisted, come back later"
    wait = (row.next_attempt_at - T0).total_seconds()
    assert 270 <= wait <= 330  # first retry 5 min +/- 10 % jitter
    clock.advance(wait - 5)
    assert await w.run_once() == 0  # not due yet: nothing is tried early
    clock.now = row.next_attempt_at
    assert await w.run_once() == 1

    [row] = await rows(db, Delivery, Delivery.id == d.id)
    assert (row.status, row.attempts, row.finished_at) == ("delivered", 2, clock.now)
    a1, a2 = await rows(db, DeliveryAttempt, DeliveryAttempt.delivery_id == d.id,
                        order=DeliveryAttempt.started_at)
    assert (a1.result, a1.reply_code, a1.enhanced_code) == ("deferred", 451, "4.7.1")
    assert (a2.result, a2.reply_code, a2.mx_host, str(a2.ip)) == (
        "delivered", 250, "mx.dest.test", "127.0.0.2")
    assert (a2.started_at - a1.started_at).total_seconds() == pytest.approx(wait)
    [msg] = sink.wait_for(1)
    assert msg.rcpt_tos == ["grey@dest.test"] and msg.mail_from == SENDER
    events = await rows(db, Event, Event.rcpt_to == "grey@dest.test", order=Event.ts)
    assert [e.status for e in events] == ["Deferred", "Delivered"]
    assert events[0].subject == "hello" and events[1].details["attempt"] == 2
    assert await dsn_messages(db) == []  # a deferral is not a bounce


async def test_550_fails_at_once_with_dsn_to_sender_and_suppression(db, dns_server, port,
                                                                    world):
    sink, sender_mx = world
    sink.rcpt_replies["gone@dest.test"] = "550 5.1.1 <gone@dest.test>: no such user"
    acct = await make_account(db)
    clock = Clock()
    w = workers(db, dns_server, port, clock)
    ok, gone = await enqueue(db, ["ok@dest.test", "gone@dest.test"], mail_from=SENDER,
                             account_id=acct, now=T0)
    assert await w.run_once() == 3  # the two recipients, then the DSN it caused
    by_id = {r.id: r for r in await rows(db, Delivery, Delivery.id.in_([ok.id, gone.id]))}
    assert by_id[ok.id].status == "delivered"
    assert (by_id[gone.id].status, by_id[gone.id].attempts) == ("failed", 1)
    [delivered] = sink.wait_for(1)
    assert delivered.rcpt_tos == ["ok@dest.test"]

    [sup] = await rows(db, Suppression)
    assert (sup.account_id, sup.email, sup.reason, sup.expires_at, sup.read_only) == (
        acct, "gone@dest.test", "hard_bounce", None, False)
    [note] = await dsn_messages(db)
    assert (note.mail_from, note.rcpt_to, note.account_id) == ("", [SENDER], acct)
    assert b"report-type=delivery-status" in note.raw
    assert b"Final-Recipient: rfc822; gone@dest.test" in note.raw
    assert b"Status: 5.1.1" in note.raw and b"no such user" in note.raw
    assert b"Subject: hello" in note.raw  # the original headers travel with it
    [dsn_row] = await rows(db, Delivery, Delivery.message_id == note.id)
    assert (dsn_row.recipient, dsn_row.envelope_from) == (SENDER, "")

    # The DSN went out through the same queue, with the null reverse-path.
    [got] = sender_mx.wait_for(1)
    assert got.mail_from in ("", "<>") and got.rcpt_tos == [SENDER]
    assert await w.run_once() == 0  # a failed row is never tried again
    events = await rows(db, Event, Event.rcpt_to == "gone@dest.test")
    assert [e.status for e in events] == ["Delivery failed"]
    assert "550 5.1.1" in events[0].details["reply"]


async def test_no_dsn_about_a_dsn_or_to_the_null_sender(db, dns_server, port, world):
    sink, sender_mx = world
    sink.rcpt_replies["gone@dest.test"] = "550 5.1.1 no such user"
    sender_mx.rcpt_replies[SENDER] = "550 5.1.1 sender mailbox is gone too"
    clock = Clock()
    w = workers(db, dns_server, port, clock)
    await enqueue(db, ["gone@dest.test"], mail_from=SENDER, now=T0)
    await enqueue(db, ["gone@dest.test"], mail_from="", now=T0)  # bounce of someone else
    # Two failures, one DSN (only about the message that had a sender) that fails too ...
    assert await w.run_once() == 3
    [note] = await dsn_messages(db)
    [dsn_row] = await rows(db, Delivery, Delivery.message_id == note.id)
    assert dsn_row.status == "failed"
    assert len(await dsn_messages(db)) == 1  # ... and no DSN about the DSN is made


async def test_policy_refusal_fails_without_suppression(db, dns_server, port, world):
    sink, _ = world
    sink.rcpt_replies["x@dest.test"] = "550 5.7.1 message refused as spam"
    acct = await make_account(db)
    w = workers(db, dns_server, port, Clock())
    [d] = await enqueue(db, ["x@dest.test"], mail_from=SENDER, account_id=acct, now=T0)
    await w.run_once()
    [row] = await rows(db, Delivery, Delivery.id == d.id)
    assert row.status == "failed"
    assert await rows(db, Suppression) == []
    assert len(await dsn_messages(db)) == 1


async def test_null_mx_fails_at_once_with_dsn(db, dns_server, port, world):
    dns_server.add_zone("nomail.test. 300 IN MX 0 .")
    acct = await make_account(db)
    w = workers(db, dns_server, port, Clock())
    [d] = await enqueue(db, ["x@nomail.test"], mail_from=SENDER, account_id=acct, now=T0)
    await w.run_once()
    [row] = await rows(db, Delivery, Delivery.id == d.id)
    assert (row.status, row.last_reply) == ("failed", "556 5.1.10 Recipient address has null MX")
    [note] = await dsn_messages(db)
    assert b"Status: 5.1.10" in note.raw
    [sup] = await rows(db, Suppression)
    assert sup.reason == "hard_bounce"


async def test_delay_warning_then_expiry_after_max_age(db, dns_server, port, world):
    sink, sender_mx = world
    sink.rcpt_replies["slow@dest.test"] = "451 4.3.0 mailbox temporarily unavailable"
    acct = await make_account(db)
    clock = Clock()
    w = workers(db, dns_server, port, clock,
                suppression=SuppressionPolicy(soft_bounce_threshold=0))
    [d] = await enqueue(db, ["slow@dest.test"], mail_from=SENDER, account_id=acct, now=T0)
    await w.run_once()
    clock.advance(4 * 3600 + 60)  # past retry.delay_warning (4 h)
    await w.run_once()
    [delay] = await dsn_messages(db)
    assert b"Action: delayed" in delay.raw and b"Will-Retry-Until:" in delay.raw
    [row] = await rows(db, Delivery, Delivery.id == d.id)
    assert row.status == "queued" and row.delay_notified_at == clock.now
    clock.advance(3600)
    await w.run_once()
    assert len(await dsn_messages(db)) == 1  # one delay warning, not one per attempt

    clock.now = T0 + timedelta(days=5)  # the last try is placed at the maximum age
    assert await w.run_once() >= 1
    [row] = await rows(db, Delivery, Delivery.id == d.id)
    assert row.status == "expired" and row.finished_at == clock.now
    delay, expiry = await dsn_messages(db)
    assert b"Action: failed" in expiry.raw and b"Status: 4.4.7" in expiry.raw
    assert await rows(db, Suppression) == []  # expiry is not a hard bounce
    events = await rows(db, Event, Event.rcpt_to == "slow@dest.test", order=Event.id)
    assert events[-1].status == "Delivery failed" and events[-1].details["expired"] is True
    clock.advance(1)
    await w.run_once()  # both DSNs go out to the sender's MX
    assert len(sender_mx.wait_for(2)) == 2


async def test_delay_warning_can_be_turned_off(db, dns_server, port, world):
    sink, _ = world
    sink.rcpt_replies["slow@dest.test"] = "451 4.3.0 try later"
    clock = Clock()
    w = workers(db, dns_server, port, clock, settings=settings_for_tests(delay_warning=None))
    await enqueue(db, ["slow@dest.test"], mail_from=SENDER, now=T0)
    await w.run_once()
    clock.advance(6 * 3600)
    await w.run_once()
    assert await dsn_messages(db) == []


async def test_verp_return_path_is_used_on_the_wire(db, dns_server, port, world):
    sink, _ = world
    settings = settings_for_tests()
    key = bounces.verp_key(settings)
    w = workers(db, dns_server, port, Clock(), settings=settings)
    [d] = await enqueue(db, [Recipient("x@dest.test", verp_domain="cf-bounce.src.test")],
                        mail_from=SENDER, now=T0, verp_key=key)
    await w.run_once()
    [msg] = sink.wait_for(1)
    assert msg.mail_from == d.envelope_from
    assert bounces.parse_verp(msg.mail_from, key) == d.id


async def test_service_drains_with_connection_reuse_and_stops_cleanly(db, dns_server, port,
                                                                      world):
    sink, _ = world
    dns_server.add_zone("""
        other.test.     300 IN MX 10 mx.other.test.
        mx.other.test.  300 IN A 127.0.0.2
    """)
    now = datetime.now(UTC)
    for i in range(20):
        await enqueue(db, [f"u{i}@dest.test", f"v{i}@other.test"], mail_from=SENDER, now=now)
    w = workers(db, dns_server, port, lambda: datetime.now(UTC), workers=4,
                per_domain_sessions=1, batch_size=10, poll_interval=0.2)
    await w.start()
    try:
        got = await asyncio.to_thread(sink.wait_for, 40, 20)
    finally:
        await w.stop()
    assert sorted(r for m in got for r in m.rcpt_tos) == sorted(
        [f"u{i}@dest.test" for i in range(20)] + [f"v{i}@other.test" for i in range(20)])
    # One session per batch of ten: far fewer connections than messages.
    assert len({m.peer for m in got}) <= 6
    left = await rows(db, Delivery, Delivery.status != "delivered")
    assert left == [] and w.describe()["workers"] == 4
    stats = await w.sample_metrics()
    assert stats["depth"] == {"due": 0, "waiting": 0, "in_flight": 0}


class SlowSmtp:
    """A real SMTP server on loopback that takes `delay` seconds to answer end of DATA,
    for sessions longer than a lease."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[str] = []  # MAIL FROM of each accepted message
        self.data_started = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> SlowSmtp:
        self.server = await asyncio.start_server(self._session, host, port)
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"220 slow.test ESMTP\r\n")
        mail_from = ""
        while line := await reader.readline():
            cmd = line[:4].upper()
            if cmd in (b"EHLO", b"HELO"):
                writer.write(b"250 slow.test\r\n")
            elif cmd == b"MAIL":
                mail_from = line.decode().split(":", 1)[1].strip().strip("<>")
                writer.write(b"250 2.1.0 ok\r\n")
            elif cmd == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while (await reader.readline()) != b".\r\n":
                    pass
                self.data_started.set()
                await asyncio.sleep(self.delay)
                self.received.append(mail_from)
                writer.write(b"250 2.0.0 ok\r\n")
            elif cmd == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@pytest.fixture
def slow_domain(dns_server):
    dns_server.add_zone("""
        slow.test.     300 IN MX 10 mx.slow.test.
        mx.slow.test.  300 IN A 127.0.0.4
    """)


async def test_lease_is_renewed_during_a_long_session(db, dns_server, slow_domain):
    from mta.queue.queue import claim

    port = _free_port("127.0.0.4")
    server = await SlowSmtp(delay=3.0).start("127.0.0.4", port)
    settings = settings_for_tests(first_retry=0.5, jitter=0)
    real = lambda: datetime.now(UTC)  # noqa: E731
    w = workers(db, dns_server, port, real, settings=settings, lease_seconds=1.5)
    [d] = await enqueue(db, ["x@slow.test"], mail_from=SENDER, now=real())
    try:
        run = asyncio.create_task(w.run_once())
        await asyncio.wait_for(server.data_started.wait(), 5)
        await asyncio.sleep(1.5)  # past the original lease and the next attempt time
        assert await claim(db, "node-b", limit=10, lease_seconds=60, now=real(),
                           policy=w.retry) == []
        assert await run == 1
    finally:
        await server.stop()
    [row] = await rows(db, Delivery, Delivery.id == d.id)
    assert (row.status, row.attempts) == ("delivered", 1)


async def test_graceful_stop_finishes_in_flight_and_releases_the_rest(db, dns_server,
                                                                      slow_domain):
    from mta.queue.queue import Recipient

    port = _free_port("127.0.0.4")
    server = await SlowSmtp(delay=1.0).start("127.0.0.4", port)
    settings = settings_for_tests()
    key = bounces.verp_key(settings)
    real = lambda: datetime.now(UTC)  # noqa: E731
    w = workers(db, dns_server, port, real, settings=settings, workers=1, batch_size=10)
    # VERP: one SMTP transaction per recipient, three in one claimed batch.
    ds = await enqueue(db, [Recipient(f"r{i}@slow.test", verp_domain="b.src.test")
                            for i in range(3)], mail_from=SENDER, now=real(), verp_key=key)
    await w.start()
    try:
        await asyncio.wait_for(server.data_started.wait(), 5)
        await w.stop()
    finally:
        await server.stop()
    assert len(server.received) == 1
    got = {r.id: r for r in await rows(db, Delivery)}
    done = [i for i, r in got.items() if r.status == "delivered"]
    assert len(done) == 1 and server.received == [got[done[0]].envelope_from]
    for d in ds:
        if d.id not in done:  # handed back untouched: due now, for any node
            r = got[d.id]
            assert (r.status, r.attempts, r.lease_owner) == ("queued", 0, None)
            assert r.next_attempt_at <= datetime.now(UTC)


@pytest.mark.slow
def test_two_nodes_soak():
    """10,000 recipients, two node processes, SIGKILL of one: none lost, duplicates only
    among what the dead node held (bench/two_nodes.py; run with `pytest -m slow`)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "two_nodes.py"
    proc = subprocess.run([sys.executable, str(script), "--recipients", "10000",
                           "--no-fsync"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
