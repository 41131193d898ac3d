"""The operator's queue tools on a real node: one id (the 250 reply's queue id) finds the
message with `mta queue show`, `mta events list` and `mta queue cat`, and is in the
forwarded copy's Received header; `mta queue hold` stops a delivery that is due and
`mta queue release` lets it go."""

from __future__ import annotations

import asyncio
import re
import smtplib
import subprocess
import time
from datetime import UTC, datetime

from sqlalchemy import update

from mta.store.db import Database
from mta.store.models import Delivery
from tests.harness.cli import ROUTING, run_mta

MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: hello@example.test\r\n"
           b"Subject: queue tools\r\nMessage-ID: <qt-1@sender.test>\r\n\r\n"
           b"first line of the body\r\n")


def mta(cfg, *args: str) -> subprocess.CompletedProcess:
    done = run_mta(*args, config=cfg, text=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def out(cfg, *args: str) -> str:
    return mta(cfg, *args).stdout.decode()


def make_due(db_url: str, queue_id: str) -> None:
    """Time passes: the held delivery's next attempt is in the past."""
    async def run():
        db = Database(db_url, pool_size=1)
        try:
            async with db.session() as s:
                await s.execute(update(Delivery).values(next_attempt_at=datetime.now(UTC)))
        finally:
            await db.close()
    asyncio.run(run())


def test_one_queue_id_show_cat_events_hold_release(make_node, make_sink, db_url, tmp_path):
    sink = make_sink("127.0.0.2")
    sink.data_replies.append("451 4.3.0 try later")  # the in-session forward is deferred
    node = make_node({
        "database": {"url": db_url},
        "inbound": {"policy": {"monitor_only": True}},
        "delivery": {"poll_interval": "0.2s",
                     "smart_host": {"host": "127.0.0.2", "port": sink.port, "tls": "none"}},
    })
    cfg = node.config_path
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    mta(cfg, "accounts", "create", "acme")
    mta(cfg, "apply", str(routing))
    mta(cfg, "addresses", "verify", "--email", "you@inbox.test")

    with smtplib.SMTP("127.0.0.1", node.port("mx"), timeout=30) as client:
        client.ehlo("client.sender.test")
        assert client.mail("alice@sender.test")[0] == 250
        assert client.rcpt("hello@example.test")[0] == 250
        code, answer = client.data(MESSAGE)
    assert code == 250, answer
    queue_id = re.search(rb"queued as ([0-9a-f]{32})", answer).group(1).decode()

    # queue show: the message, its forwarded copy, the delivery and a readable attempt
    shown = out(cfg, "queue", "show", queue_id)
    assert f"message {queue_id}" in shown and "<you@inbox.test>: queued" in shown
    attempt = next(x for x in shown.splitlines() if "deferred" in x)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  deferred ", attempt)
    assert "via 127.0.0.2, no TLS" in attempt and "451 4.3.0 try later" in attempt
    delivery_id = re.search(r"delivery (\d+) to <you@inbox.test>", shown).group(1)
    assert f"message {queue_id}" in out(cfg, "queue", "show", delivery_id)
    assert f"message {queue_id}" in out(cfg, "queue", "show", "<qt-1@sender.test>")
    assert queue_id in out(cfg, "queue", "list")

    # queue cat: the message as stored, with our Received header naming the queue id
    whole = mta(cfg, "queue", "cat", queue_id).stdout
    assert re.search(rb"by mx\.node\.test \(mta\) with ESMTP id " + queue_id.encode(), whole)
    assert whole.endswith(b"first line of the body\r\n")
    headers = mta(cfg, "queue", "cat", queue_id, "--headers").stdout
    assert b"Subject: queue tools" in headers and b"first line" not in headers
    assert mta(cfg, "queue", "cat", queue_id, "--body").stdout == b"first line of the body\r\n"
    copy = mta(cfg, "queue", "cat", queue_id, "--copy").stdout
    assert b"ARC-Seal:" in copy and b"DKIM-Signature:" in copy

    # events: the same id finds the message's events, the forward's included
    events = out(cfg, "events", "list", "--message-id", queue_id, "--json")
    assert '"Forwarded"' in events

    # hold: a due delivery is not tried; release: it is, at once
    held = out(cfg, "queue", "hold", queue_id)
    assert held.startswith("1 delivery held")
    assert "held" in out(cfg, "queue", "list", "--status", "held")
    make_due(db_url, queue_id)
    time.sleep(2)  # ten poll intervals
    assert len(sink.messages) == 0
    released = out(cfg, "queue", "release", queue_id)
    assert released.startswith("1 delivery released")
    got = sink.wait_for(1, timeout=20)[0]
    assert got.rcpt_tos == ["you@inbox.test"]
    assert re.search(rb"with ESMTP id " + queue_id.encode(), got.data)
    shown = out(cfg, "queue", "show", queue_id)
    assert "<you@inbox.test>: delivered, 2 attempt(s)" in shown
    assert "Delivered" in out(cfg, "events", "list", "--message-id", queue_id)
