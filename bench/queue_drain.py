"""Queue drain rate: deliveries per second from the PostgreSQL queue to a loopback SMTP sink.

    .venv/bin/python bench/queue_drain.py [--messages 2000] [--domains 4] [--workers 8]
                                          [--batch 1,20] [--no-fsync]

Everything is real and on this machine: an embedded PostgreSQL cluster (fsync on unless
--no-fsync), the test DNS server, and an aiosmtpd sink in a separate process (so it does
not share our GIL). For each batch size, the same backlog of one-recipient messages with
VERP return paths is enqueued and then drained by one node's DeliveryWorkers through the
real RemoteDelivery. Batch 1 means one claim and one SMTP session per delivery; a larger
batch reuses the session for several deliveries to one domain (RSET between them).

Prints a table and writes JSON to bench/out/queue_drain-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run, write_result  # noqa: E402

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


# --- one drain --------------------------------------------------------------------------------


async def drain(url: str, dns, sink: SinkProcess, n: int, domains: list[str], workers: int,
                batch: int, per_domain: int) -> dict:
    from mta.dnscache import DnsResolver
    from mta.node import NodeContext
    from mta.queue.delivery import DeliveryOptions, DeliveryWorkers
    from mta.queue.remote import RemoteDelivery
    from mta.store.db import Database

    settings = bench_settings()
    db = Database(url, pool_size=workers + 4)
    tag = f"b{batch}-{random.randrange(10**6)}"
    enqueue_s = await enqueue_backlog(db, n, domains, tag, settings)
    before = sink.read()["messages"]
    resolver = DnsResolver([dns.nameserver], timeout=2.0)
    ctx = NodeContext(settings=settings, db=db, resolver=resolver, node_id="bench-node")
    transport = RemoteDelivery(resolver, "bench.mta.test", port=sink.port)
    w = DeliveryWorkers(ctx, transport, options=DeliveryOptions(
        workers=workers, batch_size=batch, per_domain_sessions=per_domain,
        poll_interval=0.05, stats_interval=3600))
    cpu0, t0 = time.process_time(), time.perf_counter()
    sessions0 = sink.read()["sessions"]
    await w.start()
    while True:
        await asyncio.sleep(0.1)
        st = await count_status(db)
        if st.get("queued", 0) == 0:
            break
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await w.stop()
    await db.close()
    await asyncio.sleep(0.3)  # let the sink's counters settle
    got = sink.read()
    return {"batch": batch, "workers": workers, "per_domain_sessions": per_domain,
            "deliveries": n, "seconds": round(elapsed, 3),
            "deliveries_per_s": round(n / elapsed, 1),
            "enqueue_per_s": round(n / enqueue_s, 1),
            "cpu_ms_per_delivery": round(cpu * 1000 / n, 3),
            "smtp_sessions": got["sessions"] - sessions0,
            "sink_messages": got["messages"] - before, "statuses": st}


def table(rows: list[dict]) -> str:
    head = ["batch", "deliveries", "seconds", "deliveries/s", "SMTP sessions",
            "CPU ms/delivery", "enqueue/s"]
    data = [[r["batch"], r["deliveries"], r["seconds"], r["deliveries_per_s"],
             r["smtp_sessions"], r["cpu_ms_per_delivery"], r["enqueue_per_s"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *data, strict=False)]
    return "\n".join("  ".join(str(v).rjust(w) for v, w in zip(r, widths, strict=True))
                     for r in [head, *data])


async def main_async(args) -> int:
    domains = [f"d{i}.bench.test" for i in range(args.domains)]
    workdir = Path(tempfile.mkdtemp(prefix="mta-bench-"))
    os.chmod(workdir, 0o755)
    cluster = await asyncio.to_thread(start_postgres, workdir, not args.no_fsync)
    dns = start_dns(domains)
    sink = SinkProcess(workdir)
    rows = []
    try:
        for batch in [int(b) for b in args.batch.split(",")]:
            r = await drain(cluster.url(), dns, sink, args.messages, domains, args.workers,
                            batch, args.per_domain)
            rows.append(r)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        sink.stop()
        dns.stop()
        await asyncio.to_thread(cluster.stop, "immediate")
    print()
    print(table(rows))
    if len(rows) > 1:
        print(f"\nreuse speed-up (batch {rows[-1]['batch']} vs {rows[0]['batch']}): "
              f"{rows[-1]['deliveries_per_s'] / rows[0]['deliveries_per_s']:.2f}x")
    print()
    write_result("queue_drain", {"fsync": not args.no_fsync, "domains": args.domains,
                                 "results": rows})
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        run_sink(int(sys.argv[2]), sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--domains", type=int, default=4)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--per-domain", type=int, default=4)
    p.add_argument("--batch", default="1,20", help="comma-separated claim batch sizes")
    p.add_argument("--no-fsync", action="store_true", help="PostgreSQL without fsync")
    args = p.parse_args()
    return run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
