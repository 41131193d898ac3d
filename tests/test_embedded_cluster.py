"""The embedded PostgreSQL as an operator lives with it: `mta serve` owns it, `mta`
commands run beside a live node without stopping it, one node per state directory.

Real `mta serve` processes on the embedded cluster, set up with the `mta` CLI, a message
submitted over SMTP (implicit TLS) and delivered to a real sink found through the test DNS
server.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time

import httpx
import pytest
from sqlalchemy import text

from mta.store.cluster import use_cluster
from mta.store.db import Database, DatabaseUnavailable, is_unavailable
from mta.store.embedded import EmbeddedPostgres
from tests.conftest import server_owned_dir
from tests.harness.node import NodeProcess
from tests.harness.smtp_sink import _free_port

SENDER = "welcome@sender.test"
RCPT = "recipient@rcpt.test"


def mta(node, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "--config", str(node.config_path),
                           *args], capture_output=True, text=True, timeout=90, check=check)


def cluster_of(node) -> EmbeddedPostgres:
    return EmbeddedPostgres(node.directory / "state" / "postgres", database="mta")


@pytest.fixture
def sending_node(make_node, make_sink, dns_server, tls, tmp_path):
    """A node on its embedded cluster with submission on, rcpt.test's MX a sink; returns
    (node, sink, send) where send() submits one message and returns the DATA reply."""
    port = _free_port("127.0.0.2")
    dns_server.add_zone("""
        rcpt.test.     300 IN MX 10 mx.rcpt.test.
        mx.rcpt.test.  300 IN A 127.0.0.2
    """)
    sink = make_sink("127.0.0.2", port=port)
    cert, key = tls.write_server_files(tmp_path, "localhost", "127.0.0.1")
    node = make_node({"delivery": {"port": port},
                      "listeners": {"submission": {"enabled": True, "tls_cert": str(cert),
                                                   "tls_key": str(key)}}})
    assert node.wait_for_log(lambda e: e.get("event") == "node.ready")["database"][
        "kind"] == "embedded"
    token: list[str] = []

    def setup() -> None:
        account = mta(node, "accounts", "create", "acme").stdout.strip()
        mta(node, "zones", "create", "--account", account, "sender.test")
        mta(node, "domains", "onboard", "--sending", "sender.test")
        out = mta(node, "tokens", "create", "--account", account, "--name", "smtp",
                  "--permission", "email_sending:send").stdout
        token.append(out.strip().splitlines()[-1])

    def send(subject: str = "hello") -> tuple[int, bytes]:
        body = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: {subject}\r\n\r\nHi.\r\n"
        with smtplib.SMTP_SSL("127.0.0.1", node.port("submission"),
                              context=tls.client_context(), timeout=30) as s:
            s.login("api_token", token[0])
            s.mail(SENDER)
            s.rcpt(RCPT)
            return s.data(body.encode())

    return node, sink, setup, send


def _healthy(node) -> bool:
    r = httpx.get(f"http://127.0.0.1:{node.port('http')}/healthz", timeout=10)
    return r.status_code == 200 and r.json()["status"] == "ok"


def test_cli_commands_beside_a_live_node_leave_it_serving(sending_node):
    node, sink, setup, send = sending_node
    setup()  # four `mta` commands, each opening and closing the node's own cluster
    assert mta(node, "accounts", "list").returncode == 0
    assert mta(node, "queue", "list").returncode == 0
    assert mta(node, "db", "upgrade").stdout.strip() == "database at head"
    assert cluster_of(node).running
    assert _healthy(node)

    code, text = send("after the commands")
    assert code == 250, text
    [received] = sink.wait_for(1, 30)
    assert b"Subject: after the commands" in received.data


def test_second_serve_on_the_same_state_dir_refuses_and_changes_nothing(sending_node):
    node, sink, setup, send = sending_node
    setup()
    second = subprocess.run([sys.executable, "-m", "mta", "serve", "--config",
                             str(node.config_path)], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode != 0
    [line] = second.stderr.strip().splitlines()
    assert f"pid {node.proc.pid}" in line and "state directory" in line, line
    assert node.proc.poll() is None
    assert cluster_of(node).running and _healthy(node)
    code, text = send("after the second serve")
    assert code == 250, text
    [received] = sink.wait_for(1, 30)
    assert b"Subject: after the second serve" in received.data


def test_command_without_a_node_runs_its_own_cluster_and_stops_it(make_node):
    node = make_node()
    assert node.stop() == 0
    cluster = cluster_of(node)
    assert not cluster.running
    assert mta(node, "accounts", "create", "solo").returncode == 0
    assert not cluster.running, "the command left the cluster it started running"
    assert "solo" in mta(node, "accounts", "list").stdout
    assert not cluster.running


def test_a_state_dir_deeper_than_a_socket_path_can_be(make_node):
    base = server_owned_dir("mta-test-long-")
    try:
        state = base / ("d" * 100) / ("e" * 100) / "state"
        assert len(str(state / "postgres" / "run" / ".s.PGSQL.5432")) > 107
        node = make_node({"state_dir": str(state)})
        ready = node.wait_for_log(lambda e: e.get("event") == "node.ready")
        assert ready["database"]["kind"] == "embedded"
        assert len(ready["database"]["socket"]) <= 107
        assert _healthy(node)
        assert mta(node, "accounts", "create", "deep").returncode == 0
        assert "deep" in mta(node, "accounts", "list").stdout
        assert node.stop() == 0
        assert not EmbeddedPostgres(state / "postgres").running
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_node_restarts_its_killed_postmaster_and_serves_again(sending_node):
    node, sink, setup, send = sending_node
    setup()
    cluster = cluster_of(node)
    pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    down = node.wait_for_log(lambda e: e.get("event") == "database.down", timeout=30)
    assert down["database"] == cluster.socket_path  # named, not a bare errno
    while True:  # the operator does nothing; a client simply retries
        try:
            code, text = send("after the restart")
        except (smtplib.SMTPException, OSError) as exc:
            code, text = 0, str(exc).encode()
        if code == 250:
            break
        assert time.monotonic() - killed < 30, f"not serving 30 s after the kill: {text}"
        time.sleep(0.5)
    assert time.monotonic() - killed < 30
    node.wait_for_log(lambda e: e.get("event") == "database.restarted", timeout=1)
    [received] = sink.wait_for(1, 30)
    assert b"Subject: after the restart" in received.data
    assert _healthy(node)
    assert int((cluster.data_dir / "postmaster.pid").read_text().split()[0]) != pid


async def test_connection_errors_name_the_database(tmp_path):
    gone = tmp_path / "no-such-dir"
    db = Database(f"postgresql+asyncpg://mta@/mta?host={gone}", connect_timeout=2)
    try:
        with pytest.raises(DatabaseUnavailable) as e:
            async with db.session() as s:
                await s.execute(text("SELECT 1"))
    finally:
        await db.close()
    assert f"{gone}/.s.PGSQL.5432 (database mta)" in str(e.value)
    assert is_unavailable(e.value)


def test_after_sigkill_no_stale_lock_and_the_next_node_adopts_the_cluster(make_node):
    node = make_node()
    cluster = cluster_of(node)
    pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    node.kill()  # SIGKILL: no shutdown at all; the postmaster outlives it
    assert cluster.running
    node.start()  # the kernel dropped the dead node's locks: nothing to clean up first
    node.wait_for_log(lambda e: e.get("event") == "database.adopted")
    assert int((cluster.data_dir / "postmaster.pid").read_text().split()[0]) == pid
    assert _healthy(node)
    assert mta(node, "accounts", "create", "after-kill").returncode == 0
    assert node.stop() == 0
    assert not cluster.running  # the adopter owns it now, and stopped it


def test_a_supervisor_of_workers_restarts_its_killed_postmaster_too(make_node):
    node = make_node(workers=2)
    cluster = cluster_of(node)
    pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    node.wait_for_log(lambda e: e.get("event") == "database.restarted", timeout=30)
    # Both workers answer again (each with its own connection pool).
    healthy = 0
    while healthy < 6:
        healthy = healthy + 1 if _healthy(node) else 0
        assert time.monotonic() - killed < 30, "workers not healthy 30 s after the kill"
        time.sleep(0.2)
    assert node.stop() == 0
    assert not cluster.running


def test_a_node_starting_while_a_command_owns_the_cluster_waits_for_it(dns_server):
    base = server_owned_dir("mta-test-wait-")
    node = NodeProcess(base / "node", {}, dns_nameserver=dns_server.nameserver)
    cluster = cluster_of(node)
    command = use_cluster(cluster)  # what `mta accounts create` holds while it runs
    assert command.owned and cluster.running
    starting = threading.Thread(target=node.start, kwargs={"timeout": 90})
    try:
        starting.start()
        node.wait_for_log(lambda e: e.get("event") == "database.owner_wait", timeout=60)
        time.sleep(1)
        assert not any(e.get("event") == "node.ready" for e in node.log_lines)
        command.release()  # the command ends: it stops the cluster it started
        starting.join(90)
        assert _healthy(node)
        assert node.stop() == 0
        assert not cluster.running
    finally:
        command.release()
        node.kill()
        shutil.rmtree(base, ignore_errors=True)
