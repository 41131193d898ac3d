"""Send API: accepted REST sends per second, DKIM signing included, against `mta serve`.

    .venv/bin/python bench/send_api.py [--requests 300] [--concurrency 1,10,50]
                                       [--workers N]

A real `mta serve` process (PostgreSQL started by the benchmark, fsync on) with sending
domain sender.test (RSA-2048 DKIM key, onboarded through `mta apply`) and an
`email_sending:send` token. The client (bench/httpload.py, its own process) POSTs
`/client/v4/accounts/{id}/email/sending/send` over keep-alive connections: text + HTML
(~2 KB), one recipient, `List-Unsubscribe` and an X- header. The whole pipeline runs
(token, validation, sending domain, suppression, MIME composition, DKIM signature,
enqueue and commit) and the 200 comes once the message is queued:
`sending.sync_delivery_timeout: 0s`, rate limits off, and delivery kept out of the
measurement (`delivery.workers: 0`, and `delivery.smart_host` a next hop that never
answers, where workers hang on their first batch; bench/queue_drain.py measures
delivery). Per level: sends/s, p50/p99
of one request, CPU ms per send over the serve process tree and every PostgreSQL
process. Afterwards `mta queue stats` must show one queued delivery per accepted send.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ACCEPT_ONLY,
    Blackhole,
    Node,
    Postgres,
    World,
    add_common_args,
    cpu_seconds,
    node_workers,
    queue_depth,
    run_http_load,
    table,
    workdir,
    write_result,
)

BODY = {"from": {"address": "noreply@sender.test", "name": "Bench"},
        "to": "user@d0.rcpt.test", "subject": "Your receipt",
        "text": "Thanks for your order.\n" * 40,
        "html": "<p>Thanks for your order.</p>" * 40,
        "headers": {"X-Campaign-ID": "bench",
                    "List-Unsubscribe": "<https://sender.test/u/1>"}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=300, help="sends per level")
    add_common_args(p, 500)
    args = p.parse_args(argv)
    wd = workdir("send_api")
    world = World(wd)
    pg = Postgres(wd).start()
    hole = Blackhole()
    rows = []
    try:
        node = Node(wd, pg.create_database("send"), world, hole, ACCEPT_ONLY,
                    workers=node_workers(args.workers))
        ids = node.setup(forward_to=None, sending=True)
        node.postgres_pid = pg.pid()
        node.start()
        job = {"host": "127.0.0.1", "port": node.port("http"), "token": ids["token"],
               "path": f"/client/v4/accounts/{ids['account_id']}/email/sending/send",
               "body": BODY}
        try:
            warm = run_http_load({**job, "concurrency": 5, "requests": 30})
            total = warm["ok"]
            if warm["ok"] == 0:
                raise RuntimeError(f"sends refused: {warm['first_failure']}")
            for c in [int(x) for x in args.concurrency.split(",")]:
                cpu0 = cpu_seconds(node.pids())
                r = run_http_load({**job, "concurrency": c, "requests": args.requests})
                cpu = cpu_seconds(node.pids()) - cpu0
                total += r["ok"]
                rows.append({"concurrency": c, "requests": args.requests, "ok": r["ok"],
                             "failed": r["failed"], "errors": r["errors"],
                             "sends_per_s": round(r["ok"] / r["seconds"], 1),
                             "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                             "cpu_ms_per_send": round(cpu * 1000 / r["ok"], 2) if r["ok"]
                             else None, "cpu_s": round(cpu, 2),
                             "client_cpu_s": r["client_cpu_s"],
                             "first_failure": r["first_failure"]})
                print(f"  c={c}: {rows[-1]['sends_per_s']} sends/s, "
                      f"{rows[-1]['cpu_ms_per_send']} CPU ms/send", flush=True)
            depth = queue_depth(node)
        finally:
            node.stop(hole)
    finally:
        world.stop()
        pg.stop()
    print()
    print(table(["c", "ok", "failed+errors", "sends/s", "p50 ms", "p99 ms", "CPU ms/send"],
                [[r["concurrency"], r["ok"], r["failed"] + r["errors"], r["sends_per_s"],
                  r["p50_ms"], r["p99_ms"], r["cpu_ms_per_send"]] for r in rows]))
    print(f"queue after the run: {depth} (accepted sends: {total})\n")
    write_result("send_api", {"workers": node.workers, "queue_depth": depth,
                              "accepted_total": total, "results": rows})


if __name__ == "__main__":
    main()
