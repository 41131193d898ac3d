"""The queue against a real PostgreSQL: enqueue, claim with SKIP LOCKED and a lease,
backoff from the attempt count, priorities, operator actions and the `mta queue` CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mta.config import RetrySettings, Settings
from mta.queue import admin
from mta.queue import queue as q
from mta.queue.outcome import Reply
from mta.store.db import Database
from mta.store.models import Account, Delivery, DeliveryAttempt, Message

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
RAW = b"From: a@src.test\r\nTo: x@dest.test\r\nSubject: hello\r\n\r\nbody\r\n"


class Clock:
    """A settable clock: the injected `now` of every queue call."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def retry_policy(jitter: float = 0.0, **kw) -> q.RetryPolicy:
    return q.RetryPolicy(RetrySettings(jitter=jitter, **kw), rng=random.Random(7))


async def make_account(db: Database, name: str = "acme") -> str:
    async with db.session() as s:
        acct = Account(name=name)
        s.add(acct)
        await s.flush()
        return acct.id


async def enqueue(db: Database, rcpts: list, *, now: datetime = T0, mail_from="a@src.test",
                  account_id: str | None = None, priority: int = q.PRIORITY_INTERACTIVE,
                  raw: bytes = RAW, source: str = "api", verp_key: bytes | None = None
                  ) -> list[Delivery]:
    async with db.session() as s:
        msg = Message(direction="outbound", source=source, account_id=account_id,
                      mail_from=mail_from, rcpt_to=[getattr(r, "address", r) for r in rcpts],
                      raw=raw, size=len(raw), received_at=now)
        return await q.enqueue(s, msg, rcpts, now=now, priority=priority, verp_key=verp_key)


async def do_claim(db: Database, node: str = "node-a", *, now: datetime = T0, limit: int = 50,
                   lease: float = 60, policy: q.RetryPolicy | None = None, **kw):
    return await q.claim(db, node, limit=limit, lease_seconds=lease, now=now,
                         policy=policy or retry_policy(), **kw)


async def defer_all(db: Database, claimed, node: str = "node-a", now: datetime = T0):
    outs = [q.StoredOutcome(c, "queued", "deferred", now, now,
                            Reply(451, "4.3.0", "try later")) for c in claimed]
    async with db.session() as s:
        return await q.record_outcomes(s, node, outs, now=now)


def test_backoff_follows_attempt_count_with_cap_and_jitter():
    p = retry_policy()
    assert [p.interval(n).total_seconds() for n in range(1, 8)] == [
        300, 600, 1200, 2400, 3600, 3600, 3600]
    jittery = retry_policy(jitter=0.1)
    for n in range(1, 8):
        base = min(300 * 2 ** (n - 1), 3600)
        assert 0.9 * base <= jittery.interval(n).total_seconds() <= 1.1 * base
    # The last retry is put at the maximum age, not days after it.
    created = T0
    late = T0 + timedelta(days=5) - timedelta(minutes=10)
    assert p.next_attempt(late, 40, created) == created + timedelta(days=5)
    assert not p.expired(late, created) and p.expired(created + timedelta(days=5), created)


def test_per_domain_overrides_cover_subdomains():
    fast = RetrySettings(first_retry=60, max_interval=120, jitter=0)
    p = q.RetryPolicy(RetrySettings(jitter=0), {"slow.test": fast})
    assert p.interval(1, "mx.slow.test").total_seconds() == 60
    assert p.interval(5, "slow.test").total_seconds() == 120
    assert p.interval(1, "other.test").total_seconds() == 300

    class Override:  # the shape a `retry.domains` config entry would have
        domain = "slow.test"
        first_retry = 60.0
        max_age = None

    base = RetrySettings(jitter=0)
    base.domains = [Override()]  # type: ignore[attr-defined]
    p = q.RetryPolicy.from_settings(base)
    assert p.interval(1, "slow.test").total_seconds() == 60
    assert p.max_age("slow.test") == timedelta(days=5)


async def test_enqueue_in_callers_transaction_and_verp(db):
    key = b"k" * 32
    rows = await enqueue(db, ["x@Dest.test", q.Recipient("y@dest.test", verp_domain="cf.src.test"),
                              q.Recipient("z@other.test", envelope_from="SRS0=x@srs.test")],
                         verp_key=key)
    assert [r.domain for r in rows] == ["dest.test", "dest.test", "other.test"]
    assert rows[0].envelope_from == "a@src.test"
    assert rows[1].envelope_from == q.verp_address(rows[1].id, "cf.src.test", key)
    assert rows[1].envelope_from.startswith(f"bounces+{rows[1].id}-")
    assert rows[2].envelope_from == "SRS0=x@srs.test"
    # A rolled back transaction leaves nothing behind.
    try:
        async with db.session() as s:
            await q.enqueue(s, Message(direction="outbound", source="api", mail_from="",
                                       rcpt_to=["n@dest.test"], raw=RAW, size=len(RAW)),
                            ["n@dest.test"], now=T0)
            raise RuntimeError("caller fails before commit")
    except RuntimeError:
        pass
    async with db.session() as s:
        assert len((await s.execute(select(Delivery))).scalars().all()) == 3


async def test_claim_commits_lease_and_next_attempt_before_trying(db):
    [d] = await enqueue(db, ["x@dest.test"])
    [c] = await do_claim(db, now=T0)
    assert (c.id, c.attempts, c.next_attempt_at) == (d.id, 1, T0 + timedelta(minutes=5))
    async with db.session() as s:
        row = await s.get(Delivery, d.id)
        assert (row.lease_owner, row.attempts) == ("node-a", 1)
        assert row.lease_expires_at == T0 + timedelta(seconds=60)
        assert row.next_attempt_at == T0 + timedelta(minutes=5)
    # Leased: nobody else gets it, even when its lease runs out before the backoff does
    # (a crash mid-attempt must not cause a hot retry loop).
    assert await do_claim(db, "node-b", now=T0) == []
    assert await do_claim(db, "node-b", now=T0 + timedelta(seconds=90)) == []
    [again] = await do_claim(db, "node-b", now=T0 + timedelta(minutes=5))
    assert (again.id, again.attempts) == (d.id, 2)
    assert again.next_attempt_at == T0 + timedelta(minutes=5 + 10)


async def test_expired_lease_makes_row_claimable_by_another_node(db):
    policy = retry_policy(first_retry=10)
    [d] = await enqueue(db, ["x@dest.test"])
    [c] = await do_claim(db, "node-a", now=T0, lease=30, policy=policy)
    # node-a "dies": no outcome is ever recorded, its lease is not renewed.
    assert await do_claim(db, "node-b", now=T0 + timedelta(seconds=20), policy=policy) == []
    [taken] = await do_claim(db, "node-b", now=T0 + timedelta(seconds=31), policy=policy)
    assert taken.id == d.id and taken.attempts == 2
    # A renewal by the dead node's stale worker no longer succeeds.
    assert await q.renew_leases(db, "node-a", [d.id], lease_seconds=30,
                                now=T0 + timedelta(seconds=32)) == 0
    assert await q.renew_leases(db, "node-b", [d.id], lease_seconds=30,
                                now=T0 + timedelta(seconds=32)) == 1


async def test_many_concurrent_claimers_never_share_a_row(db_url):
    setup = Database(db_url)
    for dom in range(12):
        await enqueue(setup, [f"r{i}@d{dom}.test" for i in range(40)])
    await setup.close()
    claimed: list[tuple[str, int]] = []

    async def claimer(n: int) -> None:
        database = Database(db_url, pool_size=1)  # a connection of its own
        try:
            while True:
                got = await q.claim(database, f"node-{n}", limit=7, lease_seconds=60, now=T0,
                                    policy=retry_policy())
                if not got:
                    return
                assert len({c.domain for c in got}) == 1
                claimed.extend((f"node-{n}", c.id) for c in got)
        finally:
            await database.close()

    await asyncio.gather(*(claimer(n) for n in range(24)))
    ids = [i for _, i in claimed]
    assert len(ids) == 480 and len(set(ids)) == 480
    assert len({node for node, _ in claimed}) > 1


async def test_claim_groups_one_destination_and_skips_busy_domains(db):
    await enqueue(db, ["a@one.test", "b@two.test"], now=T0)
    await enqueue(db, ["c@one.test", "d@one.test"], now=T0 + timedelta(seconds=1))
    later = T0 + timedelta(seconds=2)
    first = await do_claim(db, now=later)
    assert {c.recipient for c in first} == {"a@one.test", "c@one.test", "d@one.test"}
    assert await do_claim(db, now=later, exclude_domains=["two.test"]) == []
    [other] = await do_claim(db, now=later)
    assert other.recipient == "b@two.test"


async def test_fresh_mail_is_claimed_before_a_backlog_of_retries(db):
    backlog = await enqueue(db, [f"r{i}@slow.test" for i in range(30)], now=T0)
    claimed = await do_claim(db, now=T0)
    assert len(claimed) == 30
    await defer_all(db, claimed)
    bulk = await enqueue(db, ["news@fast.test"], now=T0 + timedelta(hours=2),
                         priority=q.PRIORITY_BULK)
    fresh = await enqueue(db, ["fresh@fast.test"], now=T0 + timedelta(hours=2))
    now = T0 + timedelta(hours=2, seconds=1)  # every retry is long due by now
    [first] = await do_claim(db, now=now, limit=1)
    [second] = await do_claim(db, now=now, limit=1)
    third = await do_claim(db, now=now, limit=50)
    assert first.id == fresh[0].id and second.id == bulk[0].id
    assert {c.id for c in third} == {d.id for d in backlog}


async def test_release_hands_back_untried_work_unchanged(db):
    [d] = await enqueue(db, ["x@dest.test"])
    claimed = await do_claim(db, now=T0)
    assert await q.release(db, "node-a", claimed) == 1
    [c] = await do_claim(db, "node-b", now=T0)
    assert (c.id, c.attempts) == (d.id, 1)


async def test_a_late_release_leaves_the_same_nodes_new_claim_alone(db):
    # The database came back after the lease ran out: this node claimed the delivery
    # again (attempt 2, being sent) before the release of its first claim was written.
    await enqueue(db, ["x@dest.test"])
    [old] = await do_claim(db, now=T0, lease=60)
    later = T0 + timedelta(days=1)
    [new] = await do_claim(db, now=later, lease=60)
    assert (new.id, new.attempts) == (old.id, 2)
    assert await q.release(db, "node-a", [old]) == 0
    assert await do_claim(db, "node-b", now=later) == []  # not sent twice at once


async def test_a_late_deferral_leaves_the_same_nodes_new_claim_alone(db):
    await enqueue(db, ["x@dest.test"])
    [old] = await do_claim(db, now=T0, lease=60)
    later = T0 + timedelta(days=1)
    [new] = await do_claim(db, now=later, lease=60)
    assert await defer_all(db, [old], now=later) == []  # written after the outage
    async with db.session() as s:
        row = await s.get(Delivery, new.id)
    assert (row.lease_owner, row.attempts) == ("node-a", 2)  # still being sent
    assert await defer_all(db, [new], now=later) == [new.id]


async def test_record_outcomes_one_transaction_and_lease_holder_rules(db):
    rows = await enqueue(db, ["ok@dest.test", "no@dest.test", "later@dest.test"])
    c_ok, c_no, c_later = await do_claim(db, now=T0)
    t1 = T0 + timedelta(seconds=2)
    outs = [q.StoredOutcome(c_ok, "delivered", "delivered", T0, t1, Reply(250, "2.0.0", "ok"),
                            mx_host="mx.dest.test", ip="127.0.0.2", tls_version="TLSv1.3"),
            q.StoredOutcome(c_no, "failed", "failed", T0, t1, Reply(550, "5.1.1", "no user")),
            q.StoredOutcome(c_later, "queued", "deferred", T0, t1, None, "connection refused")]
    async with db.session() as s:
        assert sorted(await q.record_outcomes(s, "node-a", outs, now=t1)) == sorted(
            r.id for r in rows)
    async with db.session() as s:
        got = {d.recipient: d for d in (await s.execute(select(Delivery))).scalars()}
        attempts = (await s.execute(select(DeliveryAttempt))).scalars().all()
    assert got["ok@dest.test"].status == "delivered" and got["ok@dest.test"].finished_at == t1
    assert got["no@dest.test"].status == "failed"
    assert got["no@dest.test"].last_reply == "550 5.1.1 no user"
    later = got["later@dest.test"]
    assert (later.status, later.lease_owner, later.last_reply) == (
        "queued", None, "connection refused")
    assert later.priority == q.PRIORITY_RETRY_BAND
    assert later.next_attempt_at == T0 + timedelta(minutes=5)
    assert {(a.result, a.reply_code, a.mx_host, a.tls_version) for a in attempts} == {
        ("delivered", 250, "mx.dest.test", "TLSv1.3"), ("failed", 550, None, None),
        ("deferred", None, None, None)}
    # A stale worker whose lease was taken over cannot reschedule the row.
    [c2] = await do_claim(db, "node-b", now=T0 + timedelta(minutes=5))
    assert await defer_all(db, [c2], node="node-a") == []


async def test_requeue_purge_and_stats(db):
    rows = await enqueue(db, ["a@dest.test", "b@dest.test", "c@other.test"])
    claimed = await do_claim(db, now=T0)
    await defer_all(db, claimed)
    async with db.session() as s:
        stats = await admin.queue_stats(s, now=T0 + timedelta(seconds=1))
    assert stats["depth"]["waiting"] == 2 and stats["depth"]["due"] == 1
    assert stats["top_domains"][0] == {"domain": "dest.test", "queued": 2}
    async with db.session() as s:
        assert await admin.requeue(s, now=T0 + timedelta(seconds=1), domain="dest.test") == 2
    [again, _] = await do_claim(db, now=T0 + timedelta(seconds=1), domain="dest.test")
    assert again.attempts == 2  # the schedule continues, it does not restart
    async with db.session() as s:
        assert await admin.purge(s, now=T0, ids=[rows[2].id]) == 1
        assert (await s.get(Delivery, rows[2].id)).status == "purged"
        stats = await admin.queue_stats(s, now=T0 + timedelta(hours=1))
    assert stats["finished"] == {"purged": 1}


# --- CLI -------------------------------------------------------------------------------------


def cli(settings: Settings, *argv: str):
    from mta.commands import queue as queue_cmd

    parser = argparse.ArgumentParser(prog="mta")
    sub = parser.add_subparsers(dest="command", required=True)
    queue_cmd.register(sub)
    args = parser.parse_args(list(argv))
    return _exit_code(args.func(args, settings))


async def _exit_code(run) -> int:
    """What `mta` would exit with: a CliError is its one stderr line and its code."""
    import sys

    from mta.commands._errors import CliError

    try:
        return await run
    except CliError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return exc.exit_code


async def test_cli_queue_stats_list_show_retry_purge(db, db_url, capsys):
    settings = Settings()
    settings.database.url = db_url
    now = datetime.now(UTC)
    rows = await enqueue(db, ["a@dest.test", "b@dest.test"], now=now)
    await defer_all(db, await do_claim(db, now=now), now=now)

    assert await cli(settings, "queue", "stats", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["depth"]["waiting"] == 2
    assert await cli(settings, "queue", "stats") == 0
    assert "waiting" in capsys.readouterr().out

    assert await cli(settings, "queue", "list") == 0
    out = capsys.readouterr().out
    assert "a@dest.test" in out and "b@dest.test" in out and "451 4.3.0" in out
    assert await cli(settings, "queue", "show", str(rows[0].id)) == 0
    out = capsys.readouterr().out
    assert "a@dest.test" in out and "deferred" in out and "try later" in out
    assert await cli(settings, "queue", "retry", str(rows[0].id)) == 0
    assert "1 delivery" in capsys.readouterr().out
    assert await cli(settings, "queue", "purge", "--domain", "dest.test") == 0
    assert "2 deliveries" in capsys.readouterr().out
    assert await cli(settings, "queue", "show", "999999") == 1


def test_mta_queue_commands_through_the_real_cli(db_url, tmp_path):
    import subprocess
    import sys

    config = tmp_path / "mta.yaml"
    config.write_text(f"database:\n  url: '{db_url}'\nstate_dir: {tmp_path}\n")
    for argv in (["queue", "stats"], ["queue", "list", "--status", "all"]):
        proc = subprocess.run([sys.executable, "-m", "mta", "--config", str(config), *argv],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert "no deliveries match" in proc.stdout
