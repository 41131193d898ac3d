"""`mta serve` as an operator runs it: real process, embedded or external database."""

import subprocess
import sys

import httpx

from mta.store.embedded import EmbeddedPostgres


def test_node_on_embedded_database_starts_stops_and_keeps_data(make_node, tmp_path):
    node = make_node()
    ready = node.wait_for_log(lambda e: e.get("event") == "node.ready")
    assert ready["database"]["kind"] == "embedded"
    listeners = {s["listener"]: s for s in ready["services"] if "listener" in s}
    assert {"http", "metrics"} <= set(listeners)
    assert listeners["http"]["port"] == node.port("http")

    health = httpx.get(f"http://127.0.0.1:{node.port('http')}/healthz").json()
    assert health["status"] == "ok"
    metrics = httpx.get(f"http://127.0.0.1:{node.port('metrics')}/metrics").text
    assert "python_info" in metrics

    cluster = EmbeddedPostgres(node.directory / "state" / "postgres", database="mta")
    cluster.psql("INSERT INTO accounts (id, name) VALUES (repeat('b', 32), 'kept')", "mta")

    assert node.stop() == 0
    node.wait_for_log(lambda e: e.get("event") == "node.stopped")
    assert not cluster.running, "embedded PostgreSQL still running after shutdown"

    # A second run reuses the state directory and its data.
    node.start()
    assert cluster.psql("SELECT name FROM accounts", "mta").strip() == "kept"
    # Ctrl-C reaches the whole process group: the node still shuts down in order
    # (the embedded server runs in its own session and is stopped by the node).
    node.interrupt()
    assert node.proc.wait(30) == 0
    node.wait_for_log(lambda e: e.get("event") == "node.stopped")
    assert not cluster.running
    assert "received fast shutdown request" in (cluster.base_dir / "postgresql.log").read_text()


def test_node_on_configured_database_url(make_node, db_url):
    node = make_node({"database": {"url": db_url}})
    ready = node.wait_for_log(lambda e: e.get("event") == "node.ready")
    assert ready["database"]["kind"] == "external"
    assert not (node.directory / "state" / "postgres").exists()
    assert node.stop() == 0


def test_bad_config_exits_nonzero_and_says_why(tmp_path):
    cfg = tmp_path / "mta.yaml"
    cfg.write_text("listeners:\n  htp: {}\n")
    result = subprocess.run([sys.executable, "-m", "mta", "serve", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1  # an error, not a usage error (those exit 2)
    assert "listeners.htp" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
