"""In-process helpers of the two-node soak (bench/two_nodes.py, `pytest -m slow`): an
embedded PostgreSQL, the test DNS server, an aiosmtpd sink in its own process
(`soak_support.py --sink PORT RESULT_FILE`) and a backlog enqueued through the queue API.
The queue-drain benchmark itself is bench/queue_drain.py (a real `mta serve`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


SINK_IP = "127.0.0.2"


# --- the sink, run as `queue_drain.py --sink PORT RESULT_FILE` in its own process ---------


def run_sink(port: int, result_file: str) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self) -> None:
            self.messages = 0
            self.rcpts: dict[str, int] = {}
            self.peers: set = set()

        async def handle_DATA(self, server, session, envelope) -> str:
            self.messages += 1
            self.peers.add(session.peer)
            for r in envelope.rcpt_tos:
                self.rcpts[r] = self.rcpts.get(r, 0) + 1
            return "250 2.0.0 ok"

    handler = Handler()
    controller = Controller(handler, hostname=SINK_IP, port=port, enable_SMTPUTF8=True)
    controller.start()
    done = False

    def finish(*_a) -> None:
        nonlocal done
        done = True

    signal.signal(signal.SIGTERM, finish)
    print("READY", flush=True)
    while not done:
        time.sleep(0.1)
        Path(result_file + ".tmp").write_text(json.dumps(
            {"messages": handler.messages, "sessions": len(handler.peers),
             "rcpts": handler.rcpts}))
        os.replace(result_file + ".tmp", result_file)
    controller.stop()


class SinkProcess:
    def __init__(self, workdir: Path) -> None:
        from tests.harness.smtp_sink import _free_port

        self.port = _free_port(SINK_IP)
        self.result = workdir / f"sink-{self.port}.json"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--sink", str(self.port), str(self.result)],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "READY"

    def read(self) -> dict:
        try:
            return json.loads(self.result.read_text())
        except (OSError, ValueError):
            return {"messages": 0, "sessions": 0, "rcpts": {}}

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        return self.read()


# --- shared set-up ------------------------------------------------------------------------


def start_postgres(workdir: Path, fsync: bool):
    from mta.store.embedded import EmbeddedPostgres
    from mta.store.migrate import upgrade

    extra = ["max_connections = 300", "shared_buffers = 128MB"]
    if not fsync:
        extra += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
    cluster = EmbeddedPostgres(workdir / "pg", database="bench", extra_settings=tuple(extra))
    cluster.start()
    cluster.create_database("bench")
    upgrade(cluster.url())
    return cluster


def start_dns(domains: list[str]):
    from tests.harness.dns_server import TestDnsServer

    dns = TestDnsServer().start()
    for d in domains:
        dns.add_zone(f"{d}. 300 IN MX 10 mx.{d}.\nmx.{d}. 300 IN A {SINK_IP}")
    return dns


def bench_settings(**retry):
    from mta.config import Settings

    s = Settings()
    s.node.hostname = "bench.mta.test"
    s.secret_key = "bench-secret"
    for k, v in retry.items():
        setattr(s.retry, k, v)
    return s


async def enqueue_backlog(db, n_messages: int, domains: list[str], tag: str,
                          settings, chunk: int = 500) -> float:
    """Enqueue `n_messages` one-recipient messages with VERP; returns seconds taken."""
    from mta.queue import bounces
    from mta.queue.queue import Recipient, enqueue
    from mta.store.models import Message

    key = bounces.verp_key(settings)
    t0 = time.perf_counter()
    for start in range(0, n_messages, chunk):
        async with db.session() as s:
            for i in range(start, min(start + chunk, n_messages)):
                rcpt = f"u{i}-{tag}@{domains[i % len(domains)]}"
                raw = (f"From: news@src.test\r\nTo: {rcpt}\r\nSubject: bench {i}\r\n"
                       f"Message-ID: <{tag}-{i}@src.test>\r\n\r\n" + ("x" * 76 + "\r\n") * 26
                       ).encode()
                msg = Message(direction="outbound", source="api", mail_from="news@src.test",
                              rcpt_to=[rcpt], raw=raw, size=len(raw))
                await enqueue(s, msg, [Recipient(rcpt, verp_domain="cf-bounce.src.test")],
                              now=datetime.now(UTC), verp_key=key)
    return time.perf_counter() - t0


async def count_status(db) -> dict[str, int]:
    from sqlalchemy import func, select

    from mta.store.models import Delivery

    async with db.session() as s:
        return dict((await s.execute(select(Delivery.status, func.count())
                                     .group_by(Delivery.status))).all())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        run_sink(int(sys.argv[2]), sys.argv[3])
        return 0
    print("helpers of bench/two_nodes.py; the queue-drain benchmark is bench/queue_drain.py")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
