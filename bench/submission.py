"""SMTP submission rate: messages accepted per second over implicit TLS, DKIM included.

    .venv/bin/python bench/submission.py [--messages 600] [--concurrency 1,10,50]
                                         [--per-session 10,1] [--no-fsync]

The server is the real SubmissionServer (`listeners.submission`, implicit TLS, TLS 1.2+)
in this process on uvloop, with an embedded PostgreSQL cluster (fsync on unless
--no-fsync) and the loopback test DNS server as its resolver. Each client session is
TLS handshake, EHLO, `AUTH PLAIN` (api_token + an `email_sending:send` token, looked up
by its SHA-256 in PostgreSQL), then --per-session messages (MAIL, RCPT, DATA), then
QUIT; `--per-session 10,1` runs every concurrency level twice: several messages per
session, and one message per connection (handshake and AUTH paid for each message).
Each message (text + HTML, ~2 KB, List-Unsubscribe and an X- header) goes through the
pipeline REST send_raw uses: header allowlist, sending domain, suppression, MIME
handling, DKIM RSA-2048 through OpenSSL, enqueue of message + delivery + Sent event and
the commit before the `250 2.0.0 Ok <message-id>`. The immediate delivery attempt is off
(`sync_delivery_timeout: 0`): this measures acceptance; queue_drain.py measures delivery.
The clients (aiosmtplib) run in a separate process so they do not share our GIL.

Prints a table and writes JSON to bench/out/submission-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run, write_result  # noqa: E402

SENDER = "noreply@sender.test"
RCPT = "user@rcpt.test"


def make_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Bench <{SENDER}>"
    msg["To"] = RCPT
    msg["Subject"] = "Your receipt"
    msg["List-Unsubscribe"] = "<https://sender.test/u/1>"
    msg["X-Campaign-ID"] = "bench"
    msg.set_content("Thanks for your order.\n" * 40)
    msg.add_alternative("<p>Thanks for your order.</p>" * 40, subtype="html")
    return msg.as_bytes(policy=policy.SMTP)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


# --- the clients, run as `submission.py --client PORT CA TOKEN N CONC PER_SESSION` --------


async def run_clients(port: int, ca_file: str, token: str, count: int, concurrency: int,
                      per_session: int) -> dict:
    import aiosmtplib

    raw = make_message()
    tls = ssl.create_default_context(cafile=ca_file)
    todo = count
    accepted = errors = 0
    latencies: list[float] = []  # per message: MAIL FROM to the 250 after DATA
    setups: list[float] = []  # per session: TCP + TLS handshake + EHLO + AUTH PLAIN
    lock = asyncio.Lock()

    async def worker() -> None:
        nonlocal todo, accepted, errors
        while True:
            async with lock:
                n = min(per_session, todo)
                todo -= n
            if n <= 0:
                return
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True,
                                     tls_context=tls, timeout=60,
                                     local_hostname="client.test")
            try:
                t0 = time.perf_counter()
                await client.connect()
                await client.ehlo()
                await client.auth_plain("api_token", token)
                setups.append(time.perf_counter() - t0)
                for _ in range(n):
                    t1 = time.perf_counter()
                    try:
                        await client.sendmail(SENDER, [RCPT], raw)
                        accepted += 1
                        latencies.append(time.perf_counter() - t1)
                    except aiosmtplib.SMTPException:
                        errors += 1
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                errors += 1
                client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"accepted": accepted, "errors": errors, "seconds": seconds,
            "sessions": len(setups),
            "p50_ms": 1000 * percentile(latencies, 0.5),
            "p99_ms": 1000 * percentile(latencies, 0.99),
            "setup_p50_ms": 1000 * percentile(setups, 0.5)}


def client_main(argv: list[str]) -> None:
    port, ca_file, token, n, conc, per_session = argv
    result = asyncio.run(run_clients(int(port), ca_file, token, int(n), int(conc),
                                     int(per_session)))
    print(json.dumps(result), flush=True)


# --- the server side ----------------------------------------------------------------------


async def bench(args: argparse.Namespace, workdir: Path) -> dict:
    import trustme

    from bench.queue_drain import start_postgres
    from mta.config import Nameserver, Settings
    from mta.dnscache import DnsResolver
    from mta.node import NodeContext
    from mta.sending.domains import onboard_sending_domain
    from mta.sending.limits import SendingLimits
    from mta.sending.service import SendingService
    from mta.smtp.submission import SubmissionServer
    from mta.store.db import Database
    from mta.store.models import Account, Zone
    from mta.tokens import create_token
    from tests.harness.dns_server import TestDnsServer

    cluster = await asyncio.to_thread(start_postgres, workdir, not args.no_fsync)
    dns = TestDnsServer().start()  # loopback only: nothing here may ask a real resolver
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file, ca_file = (workdir / "cert.pem", workdir / "key.pem",
                                    workdir / "ca.pem")
    cert_file.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_file))

    settings = Settings()
    settings.node.hostname = "smtp.sender.test"
    settings.secret_key = "bench-secret"
    settings.dns.nameservers = [Nameserver(**dns.nameserver)]
    lst = settings.listeners.submission
    lst.enabled, lst.address, lst.port = True, "127.0.0.1", 0
    lst.tls_cert, lst.tls_key = str(cert_file), str(key_file)
    settings.limits.max_sessions_per_ip = 1000  # every client is 127.0.0.1
    db = Database(cluster.url(), pool_size=20)
    ctx = NodeContext(settings=settings, db=db,
                      resolver=DnsResolver.from_settings(settings.dns), node_id="bench")
    async with db.session() as s:
        acct = Account(name="bench")
        s.add(acct)
        await s.flush()
        s.add(Zone(account_id=acct.id, name="sender.test"))
        await s.flush()
        await onboard_sending_domain(s, settings, "sender.test")
        _, token = await create_token(s, acct.id, "bench", ["email_sending:send"])
    sending = SendingService(ctx, sync_timeout=0, rate_limits=SendingLimits(
        account_rate=0, account_daily=0))
    server = SubmissionServer(ctx, "submission", sending=sending, shutdown_grace=5)
    await server.start()
    rows = []
    try:
        # Warm-up: the key cache, the connection pool, the TLS session machinery.
        await run_level(server.port, ca_file, token, 50, 5, 10)
        for per_session in args.per_session:
            for conc in args.concurrency:
                cpu0 = time.process_time()
                result = await run_level(server.port, ca_file, token, args.messages, conc,
                                         per_session)
                cpu = time.process_time() - cpu0
                result.update({
                    "per_session": per_session, "concurrency": conc,
                    "messages_per_second": round(result["accepted"] / result["seconds"], 1),
                    "server_cpu_ms_per_message":
                        round(1000 * cpu / max(1, result["accepted"]), 2),
                    "load_average": os.getloadavg()[0]})
                rows.append(result)
                print(f"{per_session:>11} {conc:>11} {result['accepted']:>8} "
                      f"{result['errors']:>6} {result['seconds']:>8.2f} "
                      f"{result['messages_per_second']:>7.1f} {result['p50_ms']:>7.1f} "
                      f"{result['p99_ms']:>7.1f} {result['setup_p50_ms']:>9.1f} "
                      f"{result['server_cpu_ms_per_message']:>8.2f}", flush=True)
        stored = await check_stored(db, sum(r["accepted"] for r in rows) + 50)
    finally:
        await server.stop()
        await db.close()
        dns.stop()
        await asyncio.to_thread(cluster.stop)
    return {"benchmark": "submission", "message_bytes": len(make_message()),
            "fsync": not args.no_fsync, "messages": args.messages, "stored": stored,
            "results": rows}


async def check_stored(db, accepted: int) -> dict:
    """Every 250 is a committed, DKIM-signed message: count the rows and look at one."""
    from sqlalchemy import func, select

    from mta.store.models import Message

    async with db.session() as s:
        n = (await s.execute(select(func.count()).select_from(Message)
                             .where(Message.source == "submission"))).scalar_one()
        raw = (await s.execute(select(Message.raw).where(Message.source == "submission")
                               .limit(1))).scalar_one()
    head = raw.split(b"\r\n\r\n", 1)[0]
    signed = b"DKIM-Signature:" in head and b"a=rsa-sha256" in head
    if n != accepted or not signed:
        raise SystemExit(f"stored {n} submitted messages for {accepted} accepted; "
                         f"DKIM-signed: {signed}")
    return {"messages": n, "dkim_rsa_sha256": signed}


async def run_level(port: int, ca_file: Path, token: str, count: int, conc: int,
                    per_session: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", str(port), str(ca_file), token, str(count),
        str(conc), str(per_session), stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        return client_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=600,
                        help="messages per (per-session, concurrency) run")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 10, 50])
    parser.add_argument("--per-session", type=lambda s: [int(x) for x in s.split(",")],
                        default=[10, 1], help="messages per SMTP session, one run each")
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    print(f"{'per session':>11} {'concurrency':>11} {'accepted':>8} {'errors':>6} "
          f"{'seconds':>8} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'setup ms':>9} "
          f"{'CPU ms':>8}")
    with tempfile.TemporaryDirectory(prefix="bench-submission-") as tmp:
        os.chmod(tmp, 0o755)  # the embedded cluster may run as another user
        result = run(bench(args, Path(tmp)))
    write_result("submission", result)


if __name__ == "__main__":
    main()
