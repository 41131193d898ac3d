"""The database goes away under a claimed delivery batch (issue 17): once it is back, the
node settles what it still holds at once instead of leaving it leased for
`delivery.lease_seconds` (here the default, 300 s, far beyond every wait below).

The workers' two steps (claim, then run the batch) are driven one at a time so the
database can be stopped between them or in the middle of the batch; the database is a
PostgreSQL cluster of the test's own, really stopped, and the next hop a real sink.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mta.store.db import Database
from mta.store.models import Delivery
from tests.queue.test_delivery import port, rows, workers, world  # noqa: F401 - fixtures
from tests.queue.test_queue import Clock, enqueue

RAW = "From: a@src.test\r\nTo: {0}\r\nSubject: {0}\r\n\r\nbody\r\n"


@pytest.fixture
async def db(own_pg):
    database = Database(own_pg.url("mta"), pool_size=2)
    yield database
    await database.close()


async def queue(db, *rcpts: str) -> list[Delivery]:
    out = []
    for r in rcpts:  # one message each, one destination domain: one claimed batch
        out += await enqueue(db, [r], raw=RAW.format(r).encode())
    return out


async def delivered_promptly(w, sink, n: int, within: float = 15.0) -> None:
    """The started workers get `n` messages to the sink well before any lease expires."""
    await w.start()
    try:
        deadline = time.monotonic() + within
        while len(sink.messages) < n:
            assert time.monotonic() < deadline, (
                f"{len(sink.messages)} of {n} delivered {within:g} s after the database "
                "returned")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # a duplicate would arrive now
    finally:
        await w.stop()


async def test_claim_cut_off_before_its_batch_started_is_released_once_the_database_returns(
        db, own_pg, dns_server, port, world):  # noqa: F811
    sink, _ = world
    w = workers(db, dns_server, port, Clock())
    [d] = await queue(db, "one@dest.test")
    job = await w._claim_job()  # the claim (lease, attempt 1) is committed ...
    own_pg.stop(mode="immediate")  # ... and the database goes before the batch reads it
    try:
        await w._run_job(job)  # nothing can be read or sent: the claim is owed back
    finally:
        own_pg.start()
    assert sink.messages == []

    await delivered_promptly(w, sink, 1)
    assert len(sink.messages) == 1
    [row] = await rows(db, Delivery, Delivery.id == d.id)
    # Released (attempt given back), then delivered on the first counted attempt.
    assert (row.status, row.attempts, row.lease_owner) == ("delivered", 1, None)


async def test_outcome_the_database_missed_is_recorded_and_the_rest_of_the_batch_released(
        db, own_pg, dns_server, port, world):  # noqa: F811
    sink, _ = world
    w = workers(db, dns_server, port, Clock())
    first, second, third = await queue(db, "a@dest.test", "b@dest.test", "c@dest.test")
    job = await w._claim_job()
    assert len(job.claimed) == 3
    stopped = []

    def stop_once() -> None:  # the next hop takes the first message as the database dies
        if not stopped:
            stopped.append(own_pg.stop(mode="immediate"))

    sink.on_data = stop_once
    try:
        await w._run_job(job)
    finally:
        sink.on_data = None
        own_pg.start()
    # Nothing more went out once the first outcome could not be written.
    assert [m.rcpt_tos for m in sink.messages] == [["a@dest.test"]]

    await delivered_promptly(w, sink, 3)
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == [
        "a@dest.test", "b@dest.test", "c@dest.test"]  # each exactly once
    got = {r.id: r for r in await rows(db, Delivery)}
    for d in (first, second, third):
        assert (got[d.id].status, got[d.id].attempts, got[d.id].lease_owner) == (
            "delivered", 1, None)
