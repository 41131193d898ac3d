"""SIGKILL of a node in the middle of a batch re-sends at most the one message in flight
(issue 17): the outcome of each message is committed as soon as the next hop has answered
it, before the next message of the claimed batch goes out.

A real `mta serve` process on the test database, a sink that takes its time over each
message, ten messages queued for one destination (one claim, one SMTP session). The
node is killed after the sink has taken three; a restarted node delivers the rest once
the lease has expired."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

from mta.queue.queue import enqueue
from mta.store.db import Database
from mta.store.models import Message


async def queue_messages(db_url: str, n: int) -> None:
    db = Database(db_url, pool_size=1)
    try:
        async with db.session() as s:
            for i in range(n):
                raw = f"From: a@src.test\r\nSubject: m{i}\r\n\r\nbody {i}\r\n".encode()
                msg = Message(direction="outbound", source="api", mail_from="a@src.test",
                              rcpt_to=[f"r{i}@slow.test"], raw=raw, size=len(raw))
                await enqueue(s, msg, [f"r{i}@slow.test"], now=datetime.now(UTC))
    finally:
        await db.close()


def subjects(sink) -> Counter:
    return Counter(m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                   for m in list(sink.messages))


async def test_sigkill_mid_batch_resends_at_most_one_message(make_node, db_url, dns_server,
                                                             make_sink):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone("""
        slow.test.     300 IN MX 10 mx.slow.test.
        mx.slow.test.  300 IN A 127.0.0.2
    """)
    await queue_messages(db_url, 10)
    sink.on_data = lambda: time.sleep(0.3)  # each message takes a while downstream
    node = make_node({"database": {"url": db_url},
                      "delivery": {"port": sink.port, "workers": 1, "lease_seconds": "2s"},
                      "retry": {"first_retry": "1s", "jitter": 0}})
    await asyncio.to_thread(sink.wait_for, 3, 30)
    node.kill()
    sink.on_data = None
    taken = len(sink.messages)
    assert taken < 10, "the whole batch went out before the kill: nothing tested"
    node.start()
    deadline = time.monotonic() + 60
    while len(subjects(sink)) < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # a late duplicate would arrive now
    got = subjects(sink)
    assert sorted(got) == sorted(f"m{i}" for i in range(10))
    assert sum(got.values()) - 10 <= 1, got
