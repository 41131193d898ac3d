"""`mta serve --workers 2` as an operator runs it: one supervisor, two worker processes
sharing the MX port (SO_REUSEPORT), one metrics view, node jobs run once, a killed
worker replaced, a graceful stop exiting 0 — against a real PostgreSQL, real SMTP
clients and the metrics listener over HTTP.

World: account "acme" with zone ours.test (routing on) and a drop rule for
user@ours.test; sender.test publishes `v=spf1 ip4:127.0.0.1 -all`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import time

import httpx

from mta.store.embedded import EmbeddedPostgres
from tests.test_metrics import scrape, seed, send_one, value


def worker_pids(node) -> set[int]:
    ready = node.wait_for_log(lambda e: e.get("event") == "node.ready")
    return set(ready["workers"])


def events(node, name: str) -> list[dict]:
    with node._lock:
        return [e for e in node.log_lines if e.get("event") == name]


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        time.sleep(0.1)


async def test_two_workers_share_one_port_and_one_metrics_view(make_node, db, db_url,
                                                               dns_server):
    await seed(db)
    dns_server.add_txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    node = make_node({"database": {"url": db_url},
                      "observe": {"retention_interval": "1s"}}, workers=2)
    pids = worker_pids(node)
    assert len(pids) == 2 and node.proc.pid not in pids

    before = await asyncio.to_thread(scrape, node.port("metrics"))
    sent = 24
    for _ in range(sent):  # each message on its own connection
        code, text = await asyncio.to_thread(send_one, node.port("mx"))
        assert code == 250, text
    # Each 250 is logged by the worker that took the connection (read off its pipe).
    await asyncio.to_thread(wait_until, lambda: len(events(node, "mx.accepted")) >= sent,
                            10, "an mx.accepted line per message")
    accepted_by = [e["pid"] for e in events(node, "mx.accepted")]
    assert len(accepted_by) == sent
    # The kernel spread the connections over both workers.
    assert set(accepted_by) == pids, accepted_by

    # The supervisor's metrics count what both workers did, once.
    after = await asyncio.to_thread(scrape, node.port("metrics"))
    accepted = (value(after, "mta_inbound_messages_total", outcome="accepted")
                - value(before, "mta_inbound_messages_total", outcome="accepted"))
    assert accepted == sent
    assert value(after, "mta_smtp_sessions_active", listener="mx") == 0
    assert value(after, "python_info", implementation="CPython",
                 major=str(os.sys.version_info.major), minor=str(os.sys.version_info.minor),
                 patchlevel=str(os.sys.version_info.micro), version=os.sys.version.split()[0]
                 ) == 1

    # The HTTP API answers on the shared port whichever worker takes the connection.
    for _ in range(6):
        assert httpx.get(f"http://127.0.0.1:{node.port('http')}/healthz",
                         timeout=10).json()["status"] == "ok"

    # Retention (a once-per-node job) runs in one process only.
    await asyncio.to_thread(wait_until, lambda: len(events(node, "retention.ran")) >= 3,
                            20, "three retention runs")
    assert {e["pid"] for e in events(node, "retention.ran")} <= pids
    assert len({e["pid"] for e in events(node, "retention.ran")}) == 1
    ready = {e["worker"]: e for e in events(node, "worker.ready")}
    jobs = {i: {s.get("worker") for s in r["services"]} for i, r in ready.items()}
    assert "retention" in jobs[0] and "retention" not in jobs[1]

    assert node.stop() == 0
    # The supervisor says node.stopped only after every worker has exited.
    node.wait_for_log(lambda e: e.get("event") == "node.stopped")
    assert {e["pid"] for e in events(node, "worker.stopped")} == pids


def test_a_killed_worker_is_replaced_and_the_supervisor_owns_the_cluster(make_node):
    node = make_node(workers=2)
    pids = worker_pids(node)
    cluster = EmbeddedPostgres(node.directory / "state" / "postgres", database="mta")
    assert cluster.running

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    exited = node.wait_for_log(lambda e: e.get("event") == "worker.exited")
    assert exited["worker_pid"] == victim and exited["returncode"] == -signal.SIGKILL
    started = node.wait_for_log(lambda e: e.get("event") == "worker.started"
                                and e["worker_pid"] not in pids)
    node.wait_for_log(lambda e: e.get("event") == "worker.ready"
                      and e["pid"] == started["worker_pid"])
    assert cluster.running, "a worker's death must not touch the embedded cluster"

    # The node keeps serving on its ports.
    for _ in range(12):
        with smtplib.SMTP("127.0.0.1", node.port("mx"), timeout=20) as s:
            assert s.ehlo()[0] == 250
        assert httpx.get(f"http://127.0.0.1:{node.port('http')}/healthz",
                         timeout=10).status_code == 200

    assert node.stop() == 0
    node.wait_for_log(lambda e: e.get("event") == "node.stopped")
    assert not cluster.running, "the supervisor stops the cluster it started"
    for pid in pids - {victim} | {started["worker_pid"]}:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} left running"


def test_a_node_configured_not_to_deliver_delivers_from_no_process(make_node, db_url):
    """`delivery.workers` is shared out between the processes, but 0 stays 0: each
    process runs no delivery worker (it used to run one)."""
    node = make_node({"database": {"url": db_url}, "delivery": {"workers": 0}}, workers=2)
    worker_pids(node)
    wait_until(lambda: len(events(node, "worker.ready")) == 2, 30, "two ready workers")
    for ready in events(node, "worker.ready"):
        [delivery] = [s for s in ready["services"] if s.get("name") == "delivery"]
        assert delivery["workers"] == 0, ready
