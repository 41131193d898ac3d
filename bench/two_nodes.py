"""Soak run: two node processes drain one queue; one is killed with SIGKILL mid-run.

    .venv/bin/python bench/two_nodes.py [--recipients 10000] [--kill-at 0.3] [--no-fsync]

Not part of the default test suite (it takes about a minute); `pytest -m slow` runs it
through tests/queue/test_delivery.py::test_two_nodes_soak.

Set-up, all real and on loopback: an embedded PostgreSQL cluster, the test DNS server,
an aiosmtpd sink in its own process that counts every recipient it accepts, and two
separate node processes (`two_nodes.py --node ...`), each running DeliveryWorkers with
RemoteDelivery against one shared database. When `--kill-at` of the recipients have been
delivered, node A gets SIGKILL: its leases are never released, so node B must take the
rows over once they expire. Passes when every recipient reached the sink (none lost) and
the duplicates are at most the deliveries node A held a lease on when it died
(at-least-once: only in-flight work may be delivered twice).

Prints a table and writes JSON to bench/out/two_nodes-<timestamp>.json; exit code 0 on pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import soak_support as qd  # noqa: E402

from bench.common import run, write_result  # noqa: E402

LEASE_SECONDS = 6.0


# --- a node process ----------------------------------------------------------------------


async def run_node(args) -> None:
    from mta.dnscache import DnsResolver
    from mta.node import NodeContext
    from mta.queue.delivery import DeliveryOptions, DeliveryWorkers
    from mta.queue.remote import RemoteDelivery
    from mta.store.db import Database

    settings = qd.bench_settings(first_retry=2, max_interval=5, jitter=0.1)
    db = Database(args.db, pool_size=args.workers + 4)
    resolver = DnsResolver([{"address": "127.0.0.1", "port": args.dns_port}], timeout=2.0)
    ctx = NodeContext(settings=settings, db=db, resolver=resolver, node_id=args.node)
    transport = RemoteDelivery(resolver, f"{args.node}.bench.test", port=args.sink_port)
    workers = DeliveryWorkers(ctx, transport, options=DeliveryOptions(
        workers=args.workers, batch_size=args.batch, per_domain_sessions=4,
        lease_seconds=LEASE_SECONDS, poll_interval=0.1, stats_interval=3600))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await workers.start()
    print("READY", flush=True)
    await stop.wait()
    await workers.stop()  # graceful: finishes in-flight work, releases the rest
    await db.close()
    print(json.dumps(dict(workers.counters)), flush=True)


def spawn_node(name: str, url: str, dns_port: int, sink_port: int, workers: int,
               batch: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--node", name, "--db", url, "--dns-port", str(dns_port),
         "--sink-port", str(sink_port), "--workers", str(workers), "--batch", str(batch)],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout and proc.stdout.readline().strip() == "READY"
    return proc


# --- the orchestrator ----------------------------------------------------------------------


async def leased_to(db, node: str) -> int:
    from sqlalchemy import func, select

    from mta.store.models import Delivery

    async with db.session() as s:
        return (await s.execute(select(func.count()).where(
            Delivery.status == "queued", Delivery.lease_owner == node,
            Delivery.lease_expires_at > datetime.now(UTC)))).scalar_one()


async def main_async(args) -> int:
    from mta.store.db import Database

    domains = [f"d{i}.soak.test" for i in range(args.domains)]
    workdir = Path(tempfile.mkdtemp(prefix="mta-soak-"))
    os.chmod(workdir, 0o755)
    cluster = await asyncio.to_thread(qd.start_postgres, workdir, not args.no_fsync)
    dns = qd.start_dns(domains)
    sink = qd.SinkProcess(workdir)
    db = Database(cluster.url(), pool_size=4)
    nodes: dict[str, subprocess.Popen] = {}
    result: dict = {}
    try:
        enqueue_s = await qd.enqueue_backlog(db, args.recipients, domains, "soak",
                                             qd.bench_settings())
        t0 = time.perf_counter()
        for name in ("node-a", "node-b"):
            nodes[name] = spawn_node(name, cluster.url(), dns.port, sink.port, args.workers,
                                     args.batch)
        killed_at, in_flight = None, 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            st = await qd.count_status(db)
            if killed_at is None and st.get("delivered", 0) >= args.kill_at * args.recipients:
                in_flight = await leased_to(db, "node-a")  # upper bound at the kill
                nodes["node-a"].send_signal(signal.SIGKILL)
                nodes["node-a"].wait()
                killed_at = st.get("delivered", 0)
                print(f"killed node-a (SIGKILL) at {killed_at} delivered, "
                      f"{in_flight} leased to it", flush=True)
            if st.get("queued", 0) == 0:
                break
        elapsed = time.perf_counter() - t0
        nodes["node-b"].send_signal(signal.SIGTERM)
        out_b, _ = nodes["node-b"].communicate(timeout=30)
        await asyncio.sleep(0.3)
        got = sink.read()["rcpts"]
        expected = {f"u{i}-soak@{domains[i % len(domains)]}" for i in range(args.recipients)}
        lost = sorted(expected - set(got))
        dups = sum(n - 1 for r, n in got.items() if r in expected and n > 1)
        st = await qd.count_status(db)
        result = {
            "recipients": args.recipients, "seconds": round(elapsed, 2),
            "deliveries_per_s": round(args.recipients / elapsed, 1),
            "enqueue_per_s": round(args.recipients / enqueue_s, 1),
            "killed_at_delivered": killed_at, "leased_to_killed_node": in_flight,
            "lost": len(lost), "delivered_twice": dups, "statuses": st,
            "node_b_counters": json.loads(out_b.strip().splitlines()[-1] or "{}"),
            "lease_seconds": LEASE_SECONDS, "workers_per_node": args.workers,
            "batch": args.batch, "fsync": not args.no_fsync,
        }
        result["passed"] = (killed_at is not None and not lost and dups <= in_flight
                            and st.get("queued", 0) == 0)
    finally:
        for p in nodes.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        await db.close()
        sink.stop()
        dns.stop()
        await asyncio.to_thread(cluster.stop, "immediate")
    rows = [["recipients", result["recipients"]], ["seconds", result["seconds"]],
            ["deliveries/s (two nodes)", result["deliveries_per_s"]],
            ["SIGKILL of node-a at delivered", result["killed_at_delivered"]],
            ["leased to node-a when killed", result["leased_to_killed_node"]],
            ["lost", result["lost"]], ["delivered twice", result["delivered_twice"]],
            ["final statuses", result["statuses"]],
            ["result", "PASS" if result["passed"] else "FAIL"]]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    write_result("two_nodes", result)
    return 0 if result["passed"] else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipients", type=int, default=10000)
    p.add_argument("--domains", type=int, default=10)
    p.add_argument("--workers", type=int, default=8, help="delivery workers per node")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--kill-at", type=float, default=0.3,
                   help="fraction delivered when node A is killed")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--node", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--dns-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.node:
        run(run_node(args))
        return 0
    return run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
