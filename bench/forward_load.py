"""CPU per forwarded message of a real `mta serve` process (node + its PostgreSQL).

    .venv/bin/python bench/forward_load.py [--messages 1000] [--concurrency 10]
                                           [--per-session 10] [--profile FILE]

A working tool for the database side of issue 12 (the official benchmarks live in the
other bench/ scripts): one PostgreSQL cluster (fsync on), the loopback test DNS server,
a counting sink on 127.0.0.2 reached through `delivery.smart_host`, and `mta serve` with
the rule user@ours.test -> dest@inbox.test. Clients (aiosmtplib, in a separate process)
send DKIM-signed ~3.5 KB messages. The CPU time of the node process and of every
PostgreSQL process is read from /proc before and after the measured run; with --profile
py-spy records the node during it. Also per message: PostgreSQL commits, WAL bytes, rows
inserted and updated (pg_stat_database). Prints one JSON line.
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

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


def postgres_pids(postmaster: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True)
    return [postmaster, *(int(p) for p in out.stdout.split())]


async def main(args: argparse.Namespace, workdir: Path) -> dict:

    from mta.store.db import Database
    from tests.harness.dns_server import TestDnsServer
    from tests.harness.node import NodeProcess
    from tests.harness.smtp_sink import SmtpSink
    from tests.smtp.conftest import _make_key, dkim_sign, make_message, publish_world, seed

    cluster = await asyncio.to_thread(start_postgres, workdir, True)
    dns = TestDnsServer().start()
    keys = {name: _make_key() for name in ("good", "strict", "forwarder", "sealer")}
    publish_world(dns, keys)
    db = Database(cluster.url())
    await seed(db)
    await db.close()
    sink = SmtpSink("127.0.0.2").start()
    config = {
        "database": {"url": cluster.url(), "pool_size": 20},
        "limits": {"max_sessions_per_ip": 1000},
        "logging": {"level": "info"},
        "delivery": {"smart_host": {"host": "127.0.0.2", "port": sink.port, "tls": "none"}},
    }
    node = NodeProcess(workdir / "node", config, dns.nameserver)
    try:
        node.start()
    except BaseException:
        node.kill()
        sink.stop()
        dns.stop()
        await asyncio.to_thread(cluster.stop)
        raise
    body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 60
    raw = dkim_sign(make_message("alice@good.test", body=body), "good.test", "sel",
                    keys["good"])
    raw_file = workdir / "message.eml"
    raw_file.write_bytes(raw)
    port = node.port("mx")
    try:
        await run_level(port, 5, 50, args.per_session, raw_file)  # warm-up
        await _wait_for(sink, 50)
        pg_pids = postgres_pids(_postmaster_pid(workdir / "pg" / "data"))
        stats0 = await _pg_stats(cluster.url())
        before_node, before_pg = cpu_seconds([node.proc.pid]), cpu_seconds(pg_pids)
        delivered0 = len(sink.messages)
        spy = None
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                    "-p", str(node.proc.pid), "-o", args.profile, "-f",
                                    args.format, "-r", "50", "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.0)
        started = time.perf_counter()
        result = await run_level(port, args.concurrency, args.messages, args.per_session,
                                 raw_file)
        await _wait_for(sink, delivered0 + result["accepted"])
        seconds = time.perf_counter() - started
        node_cpu = cpu_seconds([node.proc.pid]) - before_node
        pg_cpu = cpu_seconds(postgres_pids(_postmaster_pid(workdir / "pg" / "data"))) - before_pg
        stats1 = await _pg_stats(cluster.url())
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        n = max(result["accepted"], 1)
        return {"concurrency": args.concurrency, **result,
                "e2e_seconds": round(seconds, 2),
                "delivered": len(sink.messages) - delivered0,
                "e2e_per_second": round(result["accepted"] / seconds, 1),
                "node_cpu_ms_per_message": round(1000 * node_cpu / n, 2),
                "pg_cpu_ms_per_message": round(1000 * pg_cpu / n, 2),
                "commits_per_message": round((stats1[0] - stats0[0]) / n, 2),
                "wal_bytes_per_message": round((stats1[1] - stats0[1]) / n),
                "rows_inserted_per_message": round((stats1[2] - stats0[2]) / n, 2),
                "rows_updated_per_message": round((stats1[3] - stats0[3]) / n, 2)}
    finally:
        node.stop()
        sink.stop()
        dns.stop()
        await asyncio.to_thread(cluster.stop)


async def run_clients(port: int, concurrency: int, count: int, per_session: int,
                      raw: bytes) -> dict:
    """CONCURRENCY aiosmtplib sessions, each sending up to PER_SESSION messages."""
    import aiosmtplib

    todo, accepted, errors = count, 0, 0

    async def worker() -> None:
        nonlocal todo, accepted, errors
        while todo > 0:
            n = min(per_session, todo)
            todo -= n
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


async def run_level(port: int, conc: int, count: int, per_session: int, raw_file: Path) -> dict:
    """The clients in a process of their own (they must not share the node's CPU count)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), str(conc), str(count),
        str(per_session), str(raw_file), stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


def start_postgres(workdir: Path, fsync: bool):
    from mta.store.embedded import EmbeddedPostgres
    from mta.store.migrate import upgrade

    extra = ["max_connections = 300", "shared_buffers = 128MB"]
    if not fsync:
        extra += ["fsync = off", "synchronous_commit = off"]
    cluster = EmbeddedPostgres(workdir / "pg", database="bench", extra_settings=tuple(extra))
    cluster.start()
    cluster.create_database("bench")
    upgrade(cluster.url())
    return cluster


async def _pg_stats(url: str) -> tuple[int, int, int, int]:
    """(commits, WAL bytes written, rows inserted, rows updated) of the bench database so
    far (the statistics collector lags a little: read after the run has settled)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = await asyncpg.connect(host=u.query.get("host"), user=u.username,
                                 database=u.database)
    try:
        await asyncio.sleep(0.6)  # let backends report their counters
        row = await conn.fetchrow(
            "SELECT d.xact_commit, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, "
            "d.tup_inserted, d.tup_updated FROM pg_stat_database d "
            "WHERE d.datname = current_database()")
        return tuple(row)
    finally:
        await conn.close()


def _postmaster_pid(datadir: Path) -> int:
    return int((datadir / "postmaster.pid").read_text().split()[0])


async def _wait_for(sink, count: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while len(sink.messages) < count and time.monotonic() < end:
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, conc, count, per = (int(x) for x in sys.argv[2:6])
        print(json.dumps(asyncio.run(run_clients(port, conc, count, per,
                                                 Path(sys.argv[6]).read_bytes()))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--profile")
    parser.add_argument("--format", default="raw")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fwd-") as tmp:
        os.chmod(tmp, 0o755)
        print(json.dumps(asyncio.run(main(args, Path(tmp)))))
