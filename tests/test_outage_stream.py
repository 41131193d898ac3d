"""PostgreSQL stops in the middle of a stream of sends and comes back (issue 17).

A real `mta serve` on a PostgreSQL cluster of the test's own forwards everything for
ours.test in-session to a sink (a catch-all rule), and sends over the REST API to the
same sink. An SMTP client and an HTTP client each send a stream of uniquely numbered
messages while the cluster is stopped (immediate) and started again under the node.

What a sender may see: on SMTP only 2xx or 4xx replies (a refused connection counts as
not acknowledged), on HTTP only 200 or 503. What must hold afterwards: every message
that was acknowledged (250 / 200) arrives exactly once, and none that was answered 4xx
or 503 arrives at all.

Once flaky (2 of 19 runs: an HTTP send answered 200 still undelivered after 90 s): the
send was committed with its delivery leased to the node, and the database stopped as the
immediate attempt read the message back, so the claim stayed leased for
`delivery.lease_seconds` (300 s). The node now hands such claims back as soon as the
database returns (mta/queue/unsettled.py; tests/queue/test_delivery_outage.py). Do not
widen the waits below to make this pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import smtplib
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import formatdate

import httpx

from mta.cli import main as mta_main
from mta.store.db import Database
from mta.store.models import Account, DestinationAddress, RoutingDomain, RoutingRule, Zone

SMTP_FROM = "alice@client.test"
SMTP_TO = "anyone@ours.test"  # caught by the catch-all, forwarded to FORWARD_TO
FORWARD_TO = "dest@inbox.test"
API_FROM = "welcome@sender.test"
API_TO = "recipient@inbox.test"
TAG = re.compile(rb"^Subject: (stream-(?:smtp|http)-(?:\d+|warmup))\r?$", re.M)


async def seed_routing(url: str) -> None:
    db = Database(url, pool_size=1)
    try:
        async with db.session() as s:
            acct = Account(id=uuid.uuid4().hex, name="routing")
            s.add(acct)
            await s.flush()
            zone = Zone(account_id=acct.id, name="ours.test", routing_enabled=True)
            s.add(zone)
            await s.flush()
            s.add_all([
                RoutingDomain(zone_id=zone.id, name="ours.test"),
                DestinationAddress(account_id=acct.id, email=FORWARD_TO,
                                   verified_at=datetime.now(UTC)),
                RoutingRule(zone_id=zone.id, name="catch-all", is_catch_all=True,
                            matchers=[{"type": "all"}],
                            actions=[{"type": "forward", "value": [FORWARD_TO]}]),
            ])
    finally:
        await db.close()


def mta(node, *args: str) -> str:
    """`mta --config NODE'S CONFIG ARGS` in this process (a subprocess costs seconds of
    interpreter start each on a busy machine); returns stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = mta_main(["--config", str(node.config_path), *args])
    assert code == 0, f"mta {' '.join(args)} -> {code}\n{out.getvalue()}"
    return out.getvalue().strip()


def smtp_send(port: int, tag: str) -> str:
    """One SMTP transaction; returns "ack", "tempfail" or "unconnected", or a description
    of anything else (a 5xx, a connection dropped without a reply)."""
    msg = EmailMessage()
    msg["From"] = SMTP_FROM
    msg["To"] = SMTP_TO
    msg["Subject"] = tag
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<{tag}@client.test>"
    msg.set_content(f"Message {tag}.\n")
    try:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60)
    except smtplib.SMTPConnectError as e:  # the greeting was not 220
        return "tempfail" if 400 <= e.smtp_code < 500 else f"greeting {e.smtp_code}"
    except OSError:
        return "unconnected"
    try:
        steps = [lambda: s.ehlo(), lambda: s.mail(SMTP_FROM), lambda: s.rcpt(SMTP_TO)]
        for step in steps:
            code, text = step()
            if code >= 300:
                return "tempfail" if 400 <= code < 500 else f"{code} {text!r}"
        try:
            code, text = s.data(msg.as_bytes(policy=policy.SMTP))
        except smtplib.SMTPDataError as e:
            code, text = e.smtp_code, e.smtp_error
        if 200 <= code < 300:
            return "ack"
        return "tempfail" if 400 <= code < 500 else f"{code} {text!r}"
    except (smtplib.SMTPServerDisconnected, OSError) as e:
        return f"dropped without a reply: {e!r}"
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            s.close()


def test_database_outage_in_a_stream_of_sends(own_pg, make_node, make_sink, dns_server):
    url = own_pg.url("mta")
    asyncio.run(seed_routing(url))
    sink = make_sink("127.0.0.2")
    dns_server.add_zone("""
        1.0.0.127.in-addr.arpa. 300 IN PTR client.test.
        client.test.   300 IN A 127.0.0.1
        client.test.   300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
        inbox.test.    300 IN MX 10 mx.inbox.test.
        mx.inbox.test. 300 IN A 127.0.0.2
    """)
    node = make_node({"database": {"url": url}, "delivery": {"port": sink.port},
                      "retry": {"first_retry": "1s", "jitter": 0},
                      "logging": {"level": "info"}})
    account = mta(node, "accounts", "create", "acme")
    mta(node, "zones", "create", "--account", account, "sender.test")
    mta(node, "domains", "onboard", "--sending", "sender.test")
    token = mta(node, "tokens", "create", "--account", account, "--name", "api",
                "--permission", "email_sending:send").splitlines()[-1]
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{node.port('http')}/client/v4/accounts/{account}",
        headers={"Authorization": f"Bearer {token}"}, timeout=60)

    smtp_outcomes: dict[str, str] = {}
    http_outcomes: dict[str, str] = {}
    stop = threading.Event()

    def smtp_loop() -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            tag = f"stream-smtp-{i}"
            smtp_outcomes[tag] = smtp_send(node.port("mx"), tag)
            if smtp_outcomes[tag] != "ack":
                time.sleep(0.05)  # no busy loop against a node that is refusing

    def http_loop() -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            tag = f"stream-http-{i}"
            try:
                r = api.post("/email/sending/send", json={
                    "from": API_FROM, "to": API_TO, "subject": tag, "text": f"{tag}."})
                http_outcomes[tag] = str(r.status_code)
            except httpx.HTTPError as e:
                http_outcomes[tag] = f"no answer: {e!r}"
            if http_outcomes[tag] != "200":
                time.sleep(0.05)

    # Both streams work before the outage.
    assert smtp_send(node.port("mx"), "stream-smtp-warmup") == "ack"
    r = api.post("/email/sending/send", json={
        "from": API_FROM, "to": API_TO, "subject": "stream-http-warmup", "text": "."})
    assert r.status_code == 200, r.text

    loops = [threading.Thread(target=smtp_loop), threading.Thread(target=http_loop)]
    for t in loops:
        t.start()
    try:
        time.sleep(4)
        own_pg.stop(mode="immediate")
        time.sleep(5)
    finally:
        if not own_pg.running:
            own_pg.start()
        time.sleep(4)
        stop.set()
        for t in loops:
            t.join(timeout=180)
    assert not any(t.is_alive() for t in loops), "a send loop did not finish"

    smtp = Counter(v if v in ("ack", "tempfail", "unconnected") else "other"
                   for v in smtp_outcomes.values())
    http = Counter(http_outcomes.values())
    print(f"smtp: {dict(smtp)}; http: {dict(http)}")
    odd = {k: v for k, v in {**smtp_outcomes, **http_outcomes}.items()
           if v not in ("ack", "tempfail", "unconnected", "200", "503")}
    assert odd == {}, "answers other than 2xx/4xx on SMTP or 200/503 on HTTP"
    # The outage was seen by both streams, and both streams worked outside it.
    assert smtp["ack"] > 0 and http["200"] > 0
    assert smtp["tempfail"] + smtp["unconnected"] > 0 and http["503"] > 0

    acked = {k for k, v in {**smtp_outcomes, **http_outcomes}.items() if v in ("ack", "200")}
    acked |= {"stream-smtp-warmup", "stream-http-warmup"}
    refused = {k for k, v in {**smtp_outcomes, **http_outcomes}.items()
               if v in ("tempfail", "unconnected", "503")}

    def arrived() -> Counter:
        with sink._lock:
            received = list(sink.messages)
        tags = Counter()
        for m in received:
            assert m.rcpt_tos in ([FORWARD_TO], [API_TO]), m.rcpt_tos
            found = TAG.findall(m.data)
            assert len(found) == 1, m.data[:2000]
            tags[found[0].decode()] += 1
        return tags

    deadline = time.monotonic() + 90
    while not acked <= set(arrived()):
        if time.monotonic() > deadline:
            missing = sorted(acked - set(arrived()))
            raise AssertionError(f"acknowledged but not delivered within 90 s: {missing}")
        time.sleep(0.5)
    time.sleep(3)  # a duplicate or a late delivery of a refused message would show now
    tags = arrived()
    print(f"acknowledged: {len(acked)}, refused: {len(refused)}, delivered: {len(tags)}")
    assert {k: n for k, n in tags.items() if n != 1} == {}, "delivered more than once"
    assert sorted(refused & set(tags)) == [], "answered 4xx/503 yet delivered"
    assert set(tags) <= acked, "delivered although never acknowledged"
