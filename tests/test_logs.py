"""Logs as the operator sees them: with `logging.format: auto` (the default) text on a
terminal and one JSON object a line otherwise (systemd's journal, a pipe); the ready
line names every listener and the database in both."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import yaml

from tests.harness.node import free_port


def start(tmp_path, db_url, stdout) -> tuple[subprocess.Popen, dict]:
    ports = {name: free_port() for name in ("mx", "http", "metrics")}
    cfg = tmp_path / "mta.yaml"
    cfg.write_text(yaml.safe_dump({
        "node": {"hostname": "mx.logs.test"}, "state_dir": str(tmp_path / "state"),
        "database": {"url": db_url},
        "listeners": {n: {"address": "127.0.0.1", "port": p} for n, p in ports.items()},
        "secret_key": "k", "srs": {"domain": "srs.logs.test", "secrets": ["s"]}}))
    proc = subprocess.Popen([sys.executable, "-m", "mta", "serve", "--workers", "1",
                             "--config", str(cfg)], stdout=stdout, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, ports


def read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    assert needle in seen, seen.decode(errors="replace")
    return seen


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_text_on_a_terminal(tmp_path, db_url):
    leader, follower = pty.openpty()
    proc, ports = start(tmp_path, db_url, follower)
    os.close(follower)
    try:
        seen = read_until(leader, b"node ready").decode()
        line = next(x for x in seen.splitlines() if "node ready" in x)
        assert not line.lstrip().startswith("{")
        for name, port in ports.items():
            assert f"{name} 127.0.0.1:{port}" in line, line
        assert "database external postgresql+asyncpg://" in line
    finally:
        stop(proc)
        os.close(leader)


def test_json_when_not_a_terminal(tmp_path, db_url):
    proc, ports = start(tmp_path, db_url, subprocess.PIPE)
    try:
        seen = read_until(proc.stdout.fileno(), b'"node.ready"')
        ready = next(json.loads(x) for x in seen.decode().splitlines()
                     if '"node.ready"' in x)
        for name, port in ports.items():
            assert f"{name} 127.0.0.1:{port}" in ready["msg"]
            assert {"listener": name, "port": port}.items() <= next(
                s for s in ready["services"] if s.get("listener") == name).items()
        assert ready["database"]["kind"] == "external"
    finally:
        stop(proc)
