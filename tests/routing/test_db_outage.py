"""The database goes away around an in-session forward (issue 17): no message is
delivered whose sender was told to retry, and none is delivered twice.

The design (docs/smtp.md, "Durability"): the forward is tried in-session first; when
the next hop accepted it, the message is out and the answer is 250 even if our record
of it cannot be committed (counted in mta_inbound_records_lost_total); when the next
hop deferred it, it must be stored before the 250, so a failed commit is 451 and
nothing was delivered. Both timings of the outage are exercised: the database already
down when the message arrives, and the database stopping between the next hop's
answer and our commit. Each test runs its own PostgreSQL cluster, which it stops.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mta.observe import metrics
from mta.store.db import Database
from mta.store.models import Delivery, Message
from tests.routing.test_inbound import signed
from tests.routing.world import world_fixture  # noqa: F401 - the `world` fixture
from tests.smtp.conftest import smtp_send


@pytest.fixture
def cluster(own_pg):
    return own_pg


@pytest.fixture
def db_url(cluster) -> str:  # the world's database lives in the cluster we stop
    return cluster.url("mta")


def lost() -> float:
    return metrics.INBOUND_RECORDS_LOST._value.get()


async def counts(w) -> tuple[int, int]:
    db = Database(w.db_url, pool_size=1)  # the test's own look, on a fresh connection
    try:
        async with db.session() as s:
            msgs = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
            dels = (await s.execute(select(func.count()).select_from(Delivery))).scalar_one()
    finally:
        await db.close()
    return msgs, dels


async def test_database_down_before_the_message(world, cluster):
    w = world
    w.a.server.intake.directory.cache_ttl = 300  # RCPT answered from the cache
    code, text = await smtp_send(w.a, signed(w, subject="one"), "alice@sender.test")
    assert code == 250, text
    w.inbox.wait_for(1)
    before = lost()
    cluster.stop(mode="fast")
    try:
        # Accepted by the next hop: the message is out, so 250 (a 451 would have the
        # sender deliver it a second time).
        code, text = await smtp_send(w.a, signed(w, subject="two"), "alice@sender.test")
        assert code == 250, text
        assert lost() == before + 1
        # Deferred by the next hop: it would have to be stored, and cannot be: 451,
        # and nothing went out.
        w.inbox.data_replies.append("451 4.3.0 try later")
        code, text = await smtp_send(w.a, signed(w, subject="three"), "alice@sender.test")
        assert code == 451, text
    finally:
        cluster.start()
    assert [m.data.count(b"Subject: two") for m in w.inbox.messages] == [0, 1]
    # Back: the pool replaces its dead connections and the node stores again.
    code, text = await smtp_send(w.a, signed(w, subject="four"), "alice@sender.test")
    assert code == 250, text
    assert len(w.inbox.wait_for(3)) == 3
    assert await counts(w) == (2, 2)  # "one" and "four"; "two" went out unrecorded


async def test_database_stops_between_the_forward_and_the_commit(world, cluster):
    w = world
    before = lost()
    # The next hop accepts the message, and the database dies before we commit it.
    w.inbox.on_data = lambda: cluster.stop(mode="fast")
    try:
        code, text = await smtp_send(w.a, signed(w, subject="accepted"), "alice@sender.test")
    finally:
        w.inbox.on_data = None
    try:
        assert code == 250, text
        assert lost() == before + 1
        assert len(w.inbox.messages) == 1
    finally:
        cluster.start()
    # The same with a next hop that defers: nothing delivered, so the sender must keep
    # the message: 451.
    w.inbox.data_replies.append("451 4.3.0 try later")
    w.inbox.on_data = lambda: cluster.stop(mode="fast")
    try:
        code, text = await smtp_send(w.a, signed(w, subject="deferred"), "alice@sender.test")
    finally:
        w.inbox.on_data = None
        cluster.start()
    assert code == 451, text
    assert len(w.inbox.messages) == 1
    # The sender's retry is delivered once, and recorded.
    code, text = await smtp_send(w.a, signed(w, subject="deferred"), "alice@sender.test")
    assert code == 250, text
    got = w.inbox.wait_for(2)
    assert [m.data.count(b"Subject: deferred") for m in got] == [0, 1]
    assert await counts(w) == (1, 1)
