"""Inbound rate: messages per second accepted by the MX listener with every check on.

    .venv/bin/python bench/inbound.py [--messages 600] [--concurrency 1,10,50]
                                      [--per-session 10] [--no-fsync]

Everything is real and on this machine: an embedded PostgreSQL cluster (fsync on unless
--no-fsync), the loopback test DNS server (answers are cached by the node's resolver
after the first message, as in production), and the MxServer running in-process on
uvloop, as `mta serve` runs it. The clients are aiosmtplib in a separate process (so
they do not share the server's GIL), CONCURRENCY sessions at once, each sending
--per-session messages. Every message is DKIM-signed (RSA-2048) by good.test, whose
SPF allows 127.0.0.1 and whose DMARC is p=reject: SPF, DKIM, ARC (none), DMARC, the
policy decision, the Authentication-Results/Received headers and the commit of the
message + event all run for each one.

Prints a table and writes JSON to bench/out/inbound-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run, write_result  # noqa: E402

# --- the clients, run as `inbound.py --client PORT CONC COUNT PER_SESSION RAWFILE` ---------


async def run_clients(port: int, concurrency: int, count: int, per_session: int,
                      raw: bytes) -> dict:
    import aiosmtplib

    todo = count
    accepted = errors = 0
    lock = asyncio.Lock()

    async def worker() -> None:
        nonlocal todo, accepted, errors
        while True:
            async with lock:
                n = min(per_session, todo)
                todo -= n
            if n <= 0:
                return
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60,
                                     local_hostname="client.test")
            try:
                await client.connect()
                for _ in range(n):
                    try:
                        await client.sendmail("alice@good.test", ["user@ours.test"], raw)
                        accepted += 1
                    except aiosmtplib.SMTPException:
                        errors += 1
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"accepted": accepted, "errors": errors, "seconds": time.perf_counter() - started}


def client_main(argv: list[str]) -> None:
    port, conc, count, per_session = (int(x) for x in argv[:4])
    raw = Path(argv[4]).read_bytes()
    result = asyncio.run(run_clients(port, conc, count, per_session, raw))
    print(json.dumps(result), flush=True)


# --- the server side ----------------------------------------------------------------------


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


async def bench(args: argparse.Namespace, workdir: Path) -> dict:
    from mta.config import Nameserver, Settings
    from mta.dnscache import DnsResolver
    from mta.node import NodeContext
    from mta.smtp.mx import MxServer
    from mta.store.db import Database
    from tests.harness.dns_server import TestDnsServer
    from tests.smtp.conftest import _make_key, dkim_sign, make_message, publish_world, seed

    cluster = await asyncio.to_thread(start_postgres, workdir, not args.no_fsync)
    dns = TestDnsServer().start()
    keys = {name: _make_key() for name in ("good", "strict", "forwarder", "sealer")}
    publish_world(dns, keys)
    settings = Settings()
    settings.node.hostname = "mx.bench.test"
    settings.listeners.mx.port = 0
    settings.dns.nameservers = [Nameserver(**dns.nameserver)]
    settings.limits.max_sessions_per_ip = 1000
    settings.database.pool_size = 20
    db = Database(cluster.url(), pool_size=settings.database.pool_size)
    await seed(db)
    server = MxServer(NodeContext(settings=settings, db=db,
                                  resolver=DnsResolver.from_settings(settings.dns),
                                  node_id="bench"))
    await server.start()
    body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 60  # ~3.5 KB
    raw = dkim_sign(make_message("alice@good.test", body=body), "good.test", "sel",
                    keys["good"])
    raw_file = workdir / "message.eml"
    raw_file.write_bytes(raw)
    rows = []
    try:
        # Warm-up: fills the DNS cache and the connection pool.
        await run_level(server.port, 5, 50, args.per_session, raw_file)
        for conc in args.concurrency:
            result = await run_level(server.port, conc, args.messages, args.per_session,
                                     raw_file)
            result["concurrency"] = conc
            result["messages_per_second"] = round(result["accepted"] / result["seconds"], 1)
            rows.append(result)
            print(f"{conc:>11}  {result['accepted']:>8}  {result['errors']:>6}  "
                  f"{result['seconds']:>8.2f}  {result['messages_per_second']:>10.1f}",
                  flush=True)
    finally:
        await server.stop()
        await db.close()
        dns.stop()
        await asyncio.to_thread(cluster.stop)
    return {"benchmark": "inbound", "message_bytes": len(raw), "fsync": not args.no_fsync,
            "per_session": args.per_session, "results": rows}


async def run_level(port: int, conc: int, count: int, per_session: int, raw_file: Path) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), str(conc), str(count),
        str(per_session), str(raw_file), stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        return client_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 10, 50])
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    print(f"{'concurrency':>11}  {'accepted':>8}  {'errors':>6}  {'seconds':>8}  {'msg/s':>10}")
    with tempfile.TemporaryDirectory(prefix="bench-inbound-") as tmp:
        os.chmod(tmp, 0o755)  # the embedded cluster may run as another user
        result = run(bench(args, Path(tmp)))
    write_result("inbound", result)


if __name__ == "__main__":
    main()
