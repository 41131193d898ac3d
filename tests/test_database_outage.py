"""The HTTP side of a node whose database is really down: a real `mta serve` on a
PostgreSQL cluster of the test's own, stopped and started again under it.

During the outage the API answers 503 in the reference's envelope with a Retry-After,
/healthz names the database as the dependency that is down, and `mta_database_up` is 0;
afterwards everything answers again without touching the node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from mta.store.embedded import EmbeddedPostgres
from tests.conftest import server_owned_dir
from tests.harness.smtp_sink import _free_port

SENDER = "welcome@sender.test"
RCPT = "recipient@rcpt.test"


def mta(node, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mta", "--config", str(node.config_path),
                           *args], capture_output=True, text=True, timeout=90,
                          check=True).stdout.strip()


@pytest.fixture
def own_cluster():
    base = server_owned_dir("mta-test-outage-")
    cluster = EmbeddedPostgres(base, database="mta")
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")
    shutil.rmtree(base, ignore_errors=True)


def database_up(node) -> float:
    text = httpx.get(f"http://127.0.0.1:{node.port('metrics')}/metrics", timeout=10).text
    return float(re.search(r"^mta_database_up (\S+)$", text, re.M).group(1))


def test_api_answers_503_with_retry_after_while_the_database_is_down(
        own_cluster, make_node, make_sink, dns_server):
    port = _free_port("127.0.0.2")
    dns_server.add_zone("""
        rcpt.test.     300 IN MX 10 mx.rcpt.test.
        mx.rcpt.test.  300 IN A 127.0.0.2
    """)
    sink = make_sink("127.0.0.2", port=port)
    node = make_node({"database": {"url": own_cluster.url()}, "delivery": {"port": port}})
    account = mta(node, "accounts", "create", "acme")
    mta(node, "zones", "create", "--account", account, "sender.test")
    mta(node, "domains", "onboard", "--sending", "sender.test")
    token = mta(node, "tokens", "create", "--account", account, "--name", "api",
                "--permission", "email_sending:send",
                "--permission", "email_routing:read").splitlines()[-1]
    base = f"http://127.0.0.1:{node.port('http')}"
    api = httpx.Client(base_url=f"{base}/client/v4/accounts/{account}", timeout=30,
                       headers={"Authorization": f"Bearer {token}"})

    def send(subject: str) -> httpx.Response:
        return api.post("/email/sending/send", json={
            "from": SENDER, "to": RCPT, "subject": subject, "text": "Hi."})

    assert api.get("/email/routing/addresses").status_code == 200
    assert httpx.get(f"{base}/healthz").json()["down"] == []
    assert database_up(node) == 1

    own_cluster.stop()
    for r in (api.get("/email/routing/addresses"), send("during the outage")):
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "5"
        body = r.json()
        assert body["success"] is False and body["result"] is None
        [err] = body["errors"]
        assert (err["code"], err["error_code"]) == (10100, "E_TEMPORARILY_UNAVAILABLE")
        assert "PostgreSQL" not in r.text  # no internal detail reaches the client
    health = httpx.get(f"{base}/healthz", timeout=10)
    assert health.status_code == 503
    assert health.json()["down"] == ["database"]
    assert own_cluster.socket_path in health.json()["database"]  # names it, not [Errno 2]
    assert database_up(node) == 0
    down = node.wait_for_log(lambda e: e.get("event") == "database.unreachable")
    assert own_cluster.socket_path in down["msg"]

    own_cluster.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "not healthy 30 s after the database returned"
        time.sleep(0.5)
    assert database_up(node) == 1
    assert api.get("/email/routing/addresses").status_code == 200
    r = send("after the outage")
    assert r.status_code == 200, r.text
    [received] = sink.wait_for(1, 30)
    assert b"Subject: after the outage" in received.data
    assert b"during the outage" not in received.data
