"""Accepted REST sends per second, DKIM signing included.

    .venv/bin/python bench/send_rest.py [--requests 1000] [--concurrency 1,10,50]
                                        [--no-fsync] [--ed25519]

The server is the real HTTP app (`build_app`) under uvicorn on uvloop, in this process,
with an embedded PostgreSQL cluster (fsync on unless --no-fsync). Each request is a
`POST /client/v4/accounts/{id}/email/sending/send` with a Bearer token, text + HTML and
two custom headers, to one recipient; the pipeline runs in full (token check, validation,
sending domain, suppression, rate-limit counters, MIME composition, DKIM RSA-2048 through
OpenSSL, enqueue of message + delivery + Sent event, commit) and answers 200 once
committed. The immediate delivery attempt is off (`sync_delivery_timeout: 0`), so this
measures acceptance; queue_drain.py measures delivery. The client (httpx, keep-alive) runs
in a separate process so it does not share our GIL.

Prints a table and writes JSON to bench/out/send_rest-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run, write_result  # noqa: E402

BODY = {"from": {"address": "noreply@sender.test", "name": "Bench"},
        "to": "user@rcpt.test", "subject": "Your receipt",
        "text": "Thanks for your order.\n" * 40,
        "html": "<p>Thanks for your order.</p>" * 40,
        "headers": {"X-Campaign-ID": "bench", "List-Unsubscribe":
                    "<https://sender.test/u/1>"}}


# --- the client, run as `send_rest.py --client URL TOKEN N CONCURRENCY` -------------------


async def run_client(url: str, token: str, n: int, concurrency: int) -> dict:
    import httpx

    body = json.dumps(BODY)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    counts = {"ok": 0, "errors": 0}
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                t0 = time.perf_counter()
                resp = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                counts["ok" if resp.status_code == 200 else "errors"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {**counts, "seconds": elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


# --- the server -------------------------------------------------------------------------


async def serve_and_measure(url_db: str, requests: int, levels: list[int],
                            ed25519: bool) -> list[dict]:
    import uvicorn

    from mta.api.app import build_app
    from mta.config import Settings
    from mta.dnscache import DnsResolver
    from mta.node import NodeContext
    from mta.sending.domains import onboard_sending_domain
    from mta.sending.limits import SendingLimits
    from mta.sending.service import SendingService
    from mta.store.db import Database
    from mta.store.models import Account, Zone
    from mta.tokens import create_token
    from tests.harness.node import free_port

    settings = Settings()
    settings.node.hostname = "mta.sender.test"
    settings.secret_key = "bench-secret"
    db = Database(url_db, pool_size=20)
    ctx = NodeContext(settings=settings, db=db, resolver=DnsResolver([{"address": "127.0.0.1", "port": 9}], timeout=1),
                      node_id="bench")
    async with db.session() as s:
        acct = Account(name="bench")
        s.add(acct)
        await s.flush()
        s.add(Zone(account_id=acct.id, name="sender.test"))
        await s.flush()
        await onboard_sending_domain(s, settings, "sender.test", ed25519=ed25519)
        _, token = await create_token(s, acct.id, "bench", ["email_sending:send"])
        account = acct.id
    app = build_app(ctx)
    app.state.sending = SendingService(ctx, sync_timeout=0, rate_limits=SendingLimits(
        account_rate=0, account_daily=0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}/client/v4/accounts/{account}/email/sending/send"
    results = []
    try:
        for i, c in enumerate([1, *levels]):  # a short warm-up first (key cache, pools)
            n = 50 if i == 0 else requests
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--client", url, token, str(n), str(c),
                stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            r = json.loads(out)
            results.append({"concurrency": c, "requests": n, **r,
                            "per_second": r["ok"] / r["seconds"]})
        return results[1:]
    finally:
        server.should_exit = True
        await task
        await db.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", default="1,10,50")
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--ed25519", action="store_true", help="dual-sign RSA + Ed25519")
    p.add_argument("--client", nargs=4, metavar=("URL", "TOKEN", "N", "CONCURRENCY"))
    args = p.parse_args()
    if args.client:
        url, token, n, c = args.client
        print(json.dumps(asyncio.run(run_client(url, token, int(n), int(c)))))
        return
    from bench.queue_drain import start_postgres

    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        cluster = start_postgres(Path(tmp), fsync=not args.no_fsync)
        try:
            results = run(serve_and_measure(cluster.url(), args.requests, levels,
                                            args.ed25519))
        finally:
            cluster.stop()
    print(f"{'concurrency':>11} {'ok':>6} {'errors':>6} {'seconds':>8} {'sends/s':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7}")
    for r in results:
        print(f"{r['concurrency']:>11} {r['ok']:>6} {r['errors']:>6} {r['seconds']:>8.2f} "
              f"{r['per_second']:>8.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f}")
    write_result("send_rest", {"requests": args.requests, "fsync": not args.no_fsync,
                               "ed25519": args.ed25519, "results": results})


if __name__ == "__main__":
    main()
