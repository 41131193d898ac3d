"""Run `mta serve` as a real process from a config the test builds.

The config starts from loopback defaults (free ports, the test DNS server, a
state directory inside the test's tmp dir) and the test's dict is merged over it.
Without a `database.url` the node uses its embedded PostgreSQL. Tests run one process
(`--workers 1`) unless they ask for more (`workers=N`: a supervisor and N workers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

__all__ = ["NodeProcess", "free_port"]


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class NodeProcess:
    def __init__(self, directory: Path, config: dict, dns_nameserver: dict | None = None,
                 env: dict | None = None, workers: int = 1) -> None:
        self.directory = Path(directory)
        self.workers = workers
        self.directory.mkdir(parents=True, exist_ok=True)
        listeners = {name: {"address": "127.0.0.1", "port": free_port()}
                     for name in ("mx", "submission", "http", "metrics")}
        base = {
            "node": {"hostname": "mx.node.test"},
            "state_dir": str(self.directory / "state"),
            "listeners": listeners,
            "dns": {"nameservers": [dns_nameserver] if dns_nameserver else [],
                    "timeout": "2s"},
            "logging": {"level": "debug", "format": "json"},
            "secret_key": "test-secret-key-not-for-production",
            "srs": {"domain": "srs.node.test", "secrets": ["test-srs-secret"]},
        }
        self.config = _merge(base, config)
        self.config_path = self.directory / "mta.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_lines: list[dict] = []
        self._raw_lines: list[str] = []
        self._lock = threading.Lock()

    def port(self, listener: str) -> int:
        return self.config["listeners"][listener]["port"]

    def start(self, timeout: float = 60) -> NodeProcess:
        env = dict(os.environ, **self.env)
        with self._lock:  # a restart must not see the previous run's "ready" line
            self.log_lines.clear()
            self._raw_lines.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mta", "serve", "--config", str(self.config_path),
             "--workers", str(self.workers)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
            start_new_session=True)
        threading.Thread(target=self._read_output, daemon=True).start()
        self.wait_for_log(lambda e: e.get("event") == "node.ready", timeout=timeout)
        return self

    def _read_output(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            with self._lock:
                self._raw_lines.append(line.rstrip("\n"))
                try:
                    self.log_lines.append(json.loads(line))
                except json.JSONDecodeError:
                    pass

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self._raw_lines)

    def wait_for_log(self, predicate, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                lines = self.log_lines[seen:]
                seen = len(self.log_lines)
            for entry in lines:
                if predicate(entry):
                    return entry
            if self.proc and self.proc.poll() is not None and not lines:
                raise AssertionError(
                    f"node exited with {self.proc.returncode}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"log line not seen within {timeout}s:\n{self.output}")

    def signal(self, sig: int) -> None:
        assert self.proc
        self.proc.send_signal(sig)

    def interrupt(self) -> None:
        """Ctrl-C on a terminal: SIGINT to the node's whole process group."""
        assert self.proc
        os.killpg(self.proc.pid, signal.SIGINT)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node did not stop on SIGTERM:\n{self.output}") from None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
