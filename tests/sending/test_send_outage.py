"""A send whose commit succeeded never gets an error answer (issue 17): the database
stops while the immediate delivery attempt is on the wire, so neither its outcome nor
the states read back for the report can be written or read. The send still succeeds
(reported queued), and once the database is back the outcome is recorded and the
message was delivered exactly once."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mta.store.db import Database
from mta.store.models import Delivery
from tests.sending.test_service import SENDER, world  # noqa: F401 - the `world` fixture


@pytest.fixture
def db_url(own_pg) -> str:  # the world's database lives in a cluster this test stops
    return own_pg.url("mta")


async def test_database_stopping_after_the_commit_still_answers_success(world, own_pg):  # noqa: F811
    service = world.service(sync_timeout=5.0)
    world.sink.on_data = lambda: own_pg.stop(mode="fast")
    try:
        result = await service.send(world.account, {"from": SENDER, "to": "bob@rcpt.test",
                                                    "subject": "s", "text": "t"})
    finally:
        world.sink.on_data = None
        own_pg.start()
    assert result.queued == ["bob@rcpt.test"] and result.delivered == []
    assert len(world.sink.messages) == 1
    await service.close()  # the background attempt records its outcome now
    db = Database(world.db.url, pool_size=1)
    try:
        async with db.session() as s:
            [d] = (await s.execute(select(Delivery))).scalars().all()
    finally:
        await db.close()
    assert (d.status, d.attempts, d.lease_owner) == ("delivered", 1, None)
    assert len(world.sink.messages) == 1
