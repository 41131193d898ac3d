"""Delivery-event webhooks over real sockets (issue 14).

A real `mta serve` on the test's PostgreSQL sends through a sink on 127.0.0.2 and posts
its events to a real HTTP receiver on loopback that the test starts (and stops, slows
down or holds). The endpoint is made with `mta webhooks create`, whose last line is the
signing secret; every POST must verify with it.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from email.message import EmailMessage

import httpx
import pytest

from mta.store.db import Database
from mta.store.models import DestinationAddress, RoutingDomain, RoutingRule, Zone
from mta.webhooks.signature import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.harness.http_receiver import WebhookReceiver
from tests.test_database_outage import mta

DNS = """
    1.0.0.127.in-addr.arpa. 300 IN PTR client.test.
    client.test.   300 IN A 127.0.0.1
    client.test.   300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
    inbox.test.    300 IN MX 10 mx.inbox.test.
    mx.inbox.test. 300 IN A 127.0.0.2
    evil.test.     300 IN TXT "v=spf1 -all"
"""
FAST = {"poll_interval": "0.2s", "first_retry": "1s", "max_backoff": "2s",
        "lease_seconds": "6s", "timeout": "5s",
        "allow_private_targets": True}  # the receivers are on loopback


@pytest.fixture
def receiver():
    r = WebhookReceiver().start()
    yield r
    r.hold.set()
    r.stop()


async def seed_routing(url: str, account_id: str) -> None:
    """ours.test of the account: a catch-all forwarding to dest@inbox.test."""
    db = Database(url, pool_size=1)
    try:
        async with db.session() as s:
            zone = Zone(account_id=account_id, name="ours.test", routing_enabled=True)
            s.add(zone)
            await s.flush()
            s.add_all([
                RoutingDomain(zone_id=zone.id, name="ours.test"),
                DestinationAddress(account_id=account_id, email="dest@inbox.test",
                                   verified_at=datetime.now(UTC)),
                RoutingRule(zone_id=zone.id, name="catch-all", is_catch_all=True,
                            matchers=[{"type": "all"}],
                            actions=[{"type": "forward", "value": ["dest@inbox.test"]}])])
    finally:
        await db.close()


class Deployment:
    def __init__(self, node, url: str) -> None:
        self.node = node
        self.account = mta(node, "accounts", "create", "acme")
        mta(node, "zones", "create", "--account", self.account, "sender.test")
        mta(node, "domains", "onboard", "--sending", "sender.test")
        token = mta(node, "tokens", "create", "--account", self.account, "--name", "api",
                    "--permission", "account:admin").splitlines()[-1]
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{node.port('http')}/client/v4/accounts/{self.account}",
            headers={"Authorization": f"Bearer {token}"}, timeout=60)
        asyncio.run(seed_routing(url, self.account))

    def webhook(self, receiver: WebhookReceiver, *types: str) -> tuple[str, str]:
        """(endpoint id, secret) of a new endpoint, through the CLI."""
        args = [a for t in types for a in ("--event", t)]
        out = json.loads(mta(self.node, "webhooks", "create", receiver.url, "--account",
                             self.account, *args, "--json"))
        return out["id"], out["secret"]

    def send(self, to: str, subject: str) -> httpx.Response:
        return self.api.post("/email/sending/send", json={
            "from": "app@sender.test", "to": to, "subject": subject, "text": "hello"})


def node_config(url: str, sink, **webhooks) -> dict:
    return {"database": {"url": url}, "delivery": {"port": sink.port},
            "retry": {"first_retry": "30s", "jitter": 0},
            "webhooks": {**FAST, **webhooks}, "logging": {"level": "info"}}


def smtp_send(port: int, subject: str, sender: str = "alice@client.test") -> float:
    """One SMTP transaction to the MX; the seconds until its 250."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "anyone@ours.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@client.test>"
    msg.set_content("hi\n")
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
        s.send_message(msg)
    return time.monotonic() - started


def by_message(events: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        out[e["message_id"]].append(e["type"])
    return out


def test_events_are_delivered_signed_and_in_order(make_node, make_sink, dns_server, db_url,
                                                  receiver):
    sink = make_sink("127.0.0.2")
    sink.rcpt_replies["bad@inbox.test"] = "550 5.1.1 no such user"
    sink.rcpt_replies["later@inbox.test"] = "451 4.2.0 try again later"
    dns_server.add_zone(DNS)
    node = make_node(node_config(db_url, sink))
    d = Deployment(node, db_url)
    endpoint_id, secret = d.webhook(receiver)

    assert d.send("ok@inbox.test", "fine").status_code == 200
    assert d.send("bad@inbox.test", "hard").status_code == 200
    assert d.send("later@inbox.test", "soon").status_code == 200
    refused = d.send("bad@inbox.test", "again")  # suppressed after the hard bounce
    assert refused.status_code != 200
    assert smtp_send(node.port("mx"), "inbound") < 10
    with pytest.raises(smtplib.SMTPDataError) as refused_in:  # SPF fails, no DKIM
        smtp_send(node.port("mx"), "forged", sender="ceo@evil.test")
    assert refused_in.value.smtp_code == 550

    want = {"sent", "delivered", "bounced", "deferred", "suppressed", "inbound.forwarded",
            "inbound.rejected"}
    events = receiver.wait_for(lambda ev: want <= {e["type"] for e in ev})
    assert {e["type"] for e in events} == want | {"sent"}, events  # nothing else

    # Every POST verifies with the secret, and not with another, nor with a changed body.
    for r in receiver.received:
        assert verify(secret, r.headers, r.body), r.headers
        assert not verify("whsec_other", r.headers, r.body)
        assert not verify(secret, r.headers, r.body + b" ")
        assert abs(int(r.headers[TIMESTAMP_HEADER]) - time.time()) < 60
        assert r.headers[EVENT_ID_HEADER] == r.event["id"]
        assert r.headers[SIGNATURE_HEADER].startswith("v1=")

    order = by_message(events)
    assert any(v == ["sent", "delivered"] for v in order.values()), order
    assert any(v == ["sent", "bounced"] for v in order.values()), order
    assert any(v == ["sent", "deferred"] for v in order.values()), order
    first = {e["type"]: e for e in events}
    assert first["bounced"]["bounce"] == {"type": "hard"}
    assert first["bounced"]["recipient"] == "bad@inbox.test"
    assert "550" in first["bounced"]["details"]["reply"]
    assert first["suppressed"]["recipient"] == "bad@inbox.test"
    assert first["inbound.forwarded"]["recipient"] == "anyone@ours.test"
    assert first["inbound.forwarded"]["details"]["destination"] == "dest@inbox.test"
    rejected = first["inbound.rejected"]
    assert (rejected["sender"], rejected["recipient"]) == ("ceo@evil.test", "anyone@ours.test")
    assert rejected["details"]["reply"].startswith("550")
    assert all(e["account_id"] == d.account for e in events)

    # The endpoint's log says each was delivered at the first attempt, answered 200.
    log = json.loads(mta(node, "webhooks", "log", endpoint_id, "--json"))
    assert log["total"] == len(events)
    assert {(x["status"], x["attempts"], x["last_status_code"]) for x in log["items"]} == {
        ("delivered", 1, 200)}
    listed = d.api.get("/email/webhooks").json()["result"]
    assert [(w["id"], w["deliveries"]["delivered"], w["deliveries"]["pending"])
            for w in listed] == [(endpoint_id, len(events), 0)]
    assert "secret" not in listed[0]

    # `test` POSTs a signed test event now.
    tested = d.api.post(f"/email/webhooks/{endpoint_id}/test").json()["result"]
    assert tested["ok"] and tested["status_code"] == 200
    last = receiver.received[-1]
    assert last.event["type"] == "test" and verify(secret, last.headers, last.body)

    metrics = httpx.get(f"http://127.0.0.1:{node.port('metrics')}/metrics").text
    delivered = [line for line in metrics.splitlines()
                 if line.startswith('mta_webhook_events_total{result="delivered"}')]
    assert delivered and float(delivered[0].split()[-1]) >= len(events)
    assert "mta_webhook_pending" in metrics

    # Deleted: no more events for it.
    assert d.api.delete(f"/email/webhooks/{endpoint_id}").status_code == 200
    before = len(receiver.received)
    d.send("ok@inbox.test", "after delete")
    time.sleep(2)
    assert len(receiver.received) == before


def test_an_endpoint_that_is_down_gets_the_events_when_it_comes_back(
        make_node, make_sink, dns_server, db_url, receiver):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone(DNS)
    node = make_node(node_config(db_url, sink))
    d = Deployment(node, db_url)
    endpoint_id, secret = d.webhook(receiver, "sent", "delivered")
    receiver.stop()  # connection refused from now on
    for i in range(3):
        assert d.send(f"user{i}@inbox.test", f"m{i}").status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the sender has tried and failed
        log = json.loads(mta(node, "webhooks", "log", endpoint_id, "--json"))["items"]
        if len(log) == 6 and all(x["attempts"] >= 1 and x["last_error"] for x in log
                                 if x["type"] == "sent"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no failed attempts logged: {log}")
    assert all(x["status"] == "pending" for x in log)
    assert receiver.received == []

    receiver.start()
    events = receiver.wait_for(lambda ev: len({e["id"] for e in ev}) == 6)
    assert all(verify(secret, r.headers, r.body) for r in receiver.received)
    assert all(v == ["sent", "delivered"] for v in by_message(events).values())
    log = json.loads(mta(node, "webhooks", "log", endpoint_id, "--json"))["items"]
    assert {x["status"] for x in log} == {"delivered"}
    assert max(x["attempts"] for x in log) >= 2  # retried, not first-time lucky
    listed = json.loads(mta(node, "webhooks", "list", "--json"))
    assert listed[0]["deliveries"]["delivered"] == 6 and listed[0]["deliveries"]["failed"] == 0


def test_a_node_killed_with_events_pending_loses_none(make_node, make_sink, dns_server,
                                                      db_url, receiver):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone(DNS)
    node = make_node(node_config(db_url, sink, concurrency=2))
    d = Deployment(node, db_url)
    endpoint_id, _ = d.webhook(receiver, "sent", "delivered")
    receiver.hold.clear()  # the endpoint takes the POSTs and does not answer yet
    for i in range(5):
        assert d.send(f"user{i}@inbox.test", f"m{i}").status_code == 200
    deadline = time.monotonic() + 20
    while receiver.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.in_flight == 2, "no POST in flight when the node died: nothing tested"
    node.kill()  # SIGKILL, with two POSTs out and the rest pending
    receiver.hold.set()  # the abandoned requests end; their answers go nowhere
    time.sleep(0.5)
    got_before = {e["id"] for e in receiver.events()}
    log = json.loads(mta(node, "webhooks", "log", endpoint_id, "--json"))["items"]
    assert len(log) == 10 and all(x["status"] == "pending" for x in log)

    node.start()
    events = receiver.wait_for(lambda ev: len({e["id"] for e in ev}) == 10, timeout=60)
    assert {x["event_id"] for x in log} == {e["id"] for e in events} | got_before
    log = json.loads(mta(node, "webhooks", "log", endpoint_id, "--json"))["items"]
    assert {x["status"] for x in log} == {"delivered"}
    assert all(v[-1] == "delivered" for v in by_message(events).values())


def test_a_slow_endpoint_does_not_delay_smtp_acceptance(make_node, make_sink, dns_server,
                                                        db_url, receiver):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone(DNS)
    node = make_node(node_config(db_url, sink, concurrency=2, timeout="20s",
                                 lease_seconds="25s"))
    d = Deployment(node, db_url)
    d.webhook(receiver)
    baseline = [smtp_send(node.port("mx"), f"warm{i}") for i in range(3)]
    receiver.wait_for(lambda ev: len(ev) >= 3)
    receiver.hold.clear()  # from now on the endpoint never answers
    # Two messages whose events take both of the sender's slots; only once they hang
    # is the endpoint really holding the sender up.
    for i in range(2):
        smtp_send(node.port("mx"), f"hold{i}")
    deadline = time.monotonic() + 15
    while receiver.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.in_flight == 2, "the sender was not held up: nothing tested"
    took = [smtp_send(node.port("mx"), f"m{i}") for i in range(10)]
    assert receiver.in_flight == 2  # still hanging while the mail went through
    # The endpoint holds every POST for the whole test (timeout 20 s); mail that waited
    # for it would take that long.
    assert max(took) < 5, (baseline, took)
    assert len(sink.wait_for(15, 30)) >= 15  # the mail itself went on


def test_retries_are_bounded_then_the_event_is_marked_failed(make_node, make_sink, dns_server,
                                                             db_url, receiver):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone(DNS)
    node = make_node(node_config(db_url, sink, max_attempts=3))
    d = Deployment(node, db_url)
    endpoint_id, _ = d.webhook(receiver, "sent")
    receiver.status = 500
    assert d.send("user@inbox.test", "m").status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [entry] = json.loads(mta(node, "webhooks", "log", endpoint_id, "--json"))["items"]
        if entry["status"] != "pending":
            break
        time.sleep(0.5)
    assert (entry["status"], entry["attempts"], entry["last_status_code"]) == ("failed", 3, 500)
    assert len(receiver.received) == 3  # tried three times, then no more
    time.sleep(3)
    assert len(receiver.received) == 3
    metrics = httpx.get(f"http://127.0.0.1:{node.port('metrics')}/metrics").text
    assert 'mta_webhook_events_total{result="failed"} 1.0' in metrics
    assert 'mta_webhook_attempts_total{result="http_error"} 3.0' in metrics


def test_two_nodes_share_the_outbox_without_sending_an_event_twice(
        make_node, make_sink, dns_server, db_url, receiver):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone(DNS)
    # One POST at a time per node: two in flight at once means both nodes are sending.
    one = node_config(db_url, sink, concurrency=1, per_endpoint=1)
    a = make_node(one)
    d = Deployment(a, db_url)
    make_node(one)
    d.webhook(receiver, "sent", "delivered")
    receiver.hold.clear()
    for i in range(6):
        assert d.send(f"user{i}@inbox.test", f"m{i}").status_code == 200
    deadline = time.monotonic() + 20
    while receiver.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.in_flight == 2, "the second node never sent"
    receiver.hold.set()
    events = receiver.wait_for(lambda ev: len({e["id"] for e in ev}) == 12)
    time.sleep(1)
    ids = [e["id"] for e in receiver.events()]
    assert len(ids) == len(set(ids)) == 12, ids  # no lease ran out: each exactly once
    assert all(v == ["sent", "delivered"] for v in by_message(events).values())
