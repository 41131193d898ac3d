"""Rate limits and daily quotas shared through PostgreSQL: two service instances with
their own connection pools (two nodes) on one database never exceed a limit together."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from mta.errors import MtaError
from mta.sending import limits as rate
from mta.sending.limits import SendingLimits
from mta.store import suppression
from mta.store.db import Database
from mta.store.models import DestinationAddress
from tests.sending.test_service import SENDER, world  # noqa: F401

OK = {"from": SENDER, "to": "bob@rcpt.test", "subject": "s", "text": "t"}


async def outcome(service, account, body) -> str:
    try:
        await service.send(account, body)
    except MtaError as exc:
        return exc.code
    return "ok"


async def test_two_nodes_share_one_rate_limit(world, db_url):  # noqa: F811
    second = Database(db_url, pool_size=5)
    try:
        limits = SendingLimits(account_rate=7)
        a = world.service(sync_timeout=0, rate=limits)
        b = world.service(sync_timeout=0, rate=limits, db=second)
        results = await asyncio.gather(*(outcome(s, world.account, OK)
                                         for s in [a, b] * 10))
    finally:
        await second.close()
    assert results.count("ok") == 7
    assert results.count("E_RATE_LIMIT_EXCEEDED") == 13


async def test_multi_recipient_sends_count_each_recipient_and_all_or_nothing(world):  # noqa: F811
    service = world.service(sync_timeout=0, rate=SendingLimits(account_rate=3))
    await service.send(world.account, {**OK, "to": ["a@rcpt.test", "b@rcpt.test"]})
    assert await outcome(service, world.account,
                         {**OK, "to": ["c@rcpt.test", "d@rcpt.test"]}) == "E_RATE_LIMIT_EXCEEDED"
    assert await outcome(service, world.account, {**OK, "to": "c@rcpt.test"}) == "ok"


async def test_daily_quota_and_per_domain_limits(world):  # noqa: F811
    daily = world.service(sync_timeout=0, rate=SendingLimits(account_rate=0,
                                                              account_daily=1))
    assert await outcome(daily, world.account, OK) == "ok"
    assert await outcome(daily, world.account, OK) == "E_DAILY_LIMIT_EXCEEDED"
    per_domain = world.service(sync_timeout=0, rate=SendingLimits(
        account_rate=0, account_daily=0, domain_rate=1))
    assert await outcome(per_domain, world.account, OK) == "ok"
    with pytest.raises(MtaError) as e:
        await per_domain.send(world.account, OK)
    assert e.value.code == "E_RATE_LIMIT_EXCEEDED" and "sender.test" in e.value.message


async def test_verified_destinations_and_suppressed_recipients_do_not_count(world):  # noqa: F811
    async with world.db.session() as s:
        s.add(DestinationAddress(account_id=world.account, email="me@rcpt.test",
                                 verified_at=world.ctx.clock()))
        await suppression.add(s, world.account, "gone@rcpt.test", "hard_bounce",
                              now=world.ctx.clock())
    service = world.service(sync_timeout=0, rate=SendingLimits(account_rate=1))
    for _ in range(3):
        assert await outcome(service, world.account, {**OK, "to": "me@rcpt.test"}) == "ok"
        assert await outcome(service, world.account,
                             {**OK, "to": "gone@rcpt.test"}) == "E_RECIPIENT_SUPPRESSED"
    result = await service.send(world.account, {**OK, "to": ["bob@rcpt.test",
                                                             "gone@rcpt.test"]})
    assert result.suppressed_recipients == ["gone@rcpt.test"]  # 1 unit: bob only
    assert await outcome(service, world.account, OK) == "E_RATE_LIMIT_EXCEEDED"


async def test_windows_roll_over_and_old_counters_are_purged(db):
    keys_then = rate.counter_keys(SendingLimits(account_rate=1, account_daily=5), "acct",
                                  None, datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC))
    keys_later = rate.counter_keys(SendingLimits(account_rate=1, account_daily=5), "acct",
                                   None, datetime(2026, 1, 1, 12, 1, 5, tzinfo=UTC))
    async with db.session() as s:
        await rate.consume(s, keys_then, 1)
    with pytest.raises(MtaError):
        async with db.session() as s:
            await rate.consume(s, keys_then, 1)
    async with db.session() as s:
        await rate.consume(s, keys_later, 1)  # a new minute, the same day
        counts = dict((await s.execute(text(
            "SELECT period, sum(count) FROM send_counters GROUP BY period"))).all())
    assert counts == {"rate": 2, "day": 2}
    async with db.session() as s:
        assert await rate.purge_old(s, datetime(2026, 1, 5, tzinfo=UTC)) == 3
