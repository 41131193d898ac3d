"""Queue drain: deliveries per second from the queue of `mta serve` to the counting sink.

    .venv/bin/python bench/queue_drain.py [--recipients 10000] [--workers N]

PostgreSQL started by the benchmark (fsync on). First a `mta serve` whose delivery
cannot proceed (workers off where honoured, `delivery.smart_host` a next hop that never
answers) takes `--recipients` recipients through the send API: sends of 50 recipients
each over 4 destination domains (d0..d3.rcpt.test), every recipient its own delivery
with its own VERP return path, DKIM-signed, queued. That node stops, `mta queue retry
--all` makes the few batches its workers held due again, and `mta queue stats` must
show them all due. Then a `mta serve` with the default
delivery settings (8 workers, batch 20, 4 sessions per domain) and `delivery.smart_host`
= the sink starts on the same database and drains the queue. Measured from its
`node.ready` to the last arrival at the sink: deliveries/s and CPU ms per delivery over
the serve process tree and every PostgreSQL process (the few deliveries made before
`node.ready` are left out of both), SMTP sessions the sink saw.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ACCEPT_ONLY,
    Blackhole,
    Node,
    Postgres,
    Sink,
    World,
    cpu_seconds,
    node_workers,
    queue_depth,
    run_http_load,
    table,
    workdir,
    write_result,
)

PER_SEND = 50


def body() -> dict:
    to = [f"u{i}@d{i % 4}.rcpt.test" for i in range(PER_SEND)]
    return {"from": {"address": "news@sender.test", "name": "Bench"}, "to": to,
            "subject": "Newsletter", "text": "Hello from the benchmark.\n" * 60}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipients", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=None,
                   help="mta serve --workers N (passed when mta serve supports it)")
    p.add_argument("--timeout", type=float, default=400)
    args = p.parse_args(argv)
    sends = max(1, args.recipients // PER_SEND)
    n = sends * PER_SEND
    wd = workdir("queue_drain")
    world, sink = World(wd), Sink()
    pg = Postgres(wd).start()
    url = pg.create_database("drain")
    try:
        hole = Blackhole()
        filler = Node(wd / "fill", url, world, hole, ACCEPT_ONLY)
        ids = filler.setup(forward_to=None, sending=True)
        filler.start()
        try:
            t0 = time.monotonic()
            r = run_http_load({"host": "127.0.0.1", "port": filler.port("http"),
                               "token": ids["token"], "body": body(), "concurrency": 10,
                               "requests": sends, "path": f"/client/v4/accounts/"
                               f"{ids['account_id']}/email/sending/send"})
            enqueue_s = time.monotonic() - t0
        finally:
            filler.stop(hole)
        if r["ok"] != sends:
            raise RuntimeError(f"enqueue: {r['ok']} of {sends} sends ok: {r['first_failure']}")
        # The batches the filler's workers held on the blackhole were deferred: due now.
        filler.cli(["queue", "retry", "--all"])
        before = queue_depth(filler)
        if before.get("due") != n:
            raise RuntimeError(f"expected {n} due deliveries, the queue holds {before}")
        print(f"  enqueued {n} recipients in {enqueue_s:.1f}s: {before}", flush=True)
        drainer = Node(wd / "drain", url, world, sink, {}, workers=node_workers(args.workers))
        drainer.postgres_pid = pg.pid()
        sink.reset()
        drainer.start()
        try:
            cpu0, t_ready, b0 = cpu_seconds(drainer.pids()), time.monotonic(), \
                sink.stats()["messages"]
            st = sink.wait_for(n, args.timeout, stall=30)
            cpu = cpu_seconds(drainer.pids()) - cpu0
            after = queue_depth(drainer)
        finally:
            drainer.stop()
    finally:
        sink.stop()
        world.stop()
        pg.stop()
    done = st["messages"] - b0
    seconds = st["last"] - t_ready
    row = {"recipients": n, "delivered": st["messages"], "before_ready": b0,
           "seconds": round(seconds, 2),
           "deliveries_per_s": round(done / seconds, 1) if seconds > 0 else None,
           "cpu_ms_per_delivery": round(cpu * 1000 / done, 2) if done else None,
           "cpu_s": round(cpu, 2), "smtp_sessions": st["sessions"],
           "enqueue_seconds": round(enqueue_s, 1), "enqueue_per_s": round(n / enqueue_s, 1),
           "queue_before": before, "queue_after": after}
    print()
    print(table(["recipients", "delivered", "seconds", "deliveries/s", "CPU ms/delivery",
                 "SMTP sessions", "enqueue/s"],
                [[n, st["messages"], row["seconds"], row["deliveries_per_s"],
                  row["cpu_ms_per_delivery"], st["sessions"], row["enqueue_per_s"]]]))
    print(f"queue before: {before}; after: {after}\n")
    write_result("queue_drain", {"workers": drainer.workers, "per_send": PER_SEND,
                                 "results": [row]})


if __name__ == "__main__":
    main()
