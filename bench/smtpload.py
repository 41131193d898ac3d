"""SMTP load generator for the benchmarks, run in its own process (so it never shares the
measured server's GIL or CPU accounting).

    python bench/smtpload.py '<json job>'

The job: host, port, concurrency, messages, per_session, message (a file of CRLF lines,
sent as is after dot-stuffing), mail_from, rcpt, and optionally tls (implicit TLS, no
certificate check: the benchmarks use a throw-away certificate), auth ([user, password],
SASL PLAIN), ehlo. Each of `concurrency` workers opens a session, sends up to
`per_session` messages in it (MAIL, RCPT and DATA pipelined when the server offers
PIPELINING, as Postfix's own client does), QUITs and starts the next session, until
`messages` have been sent. Prints one JSON line: accepted, refused (5xx/4xx replies),
errors, the first refusal, monotonic start/end, p50/p99 of one transaction (MAIL to the
final reply after DATA) and p50 of session set-up (connect + banner + EHLO [+ AUTH]).

Written on asyncio streams, without an SMTP library, so the client costs far less than
the servers it drives.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
import time


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def run(job: dict) -> dict:
    raw = open(job["message"], "rb").read()
    body = raw.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    body += b".\r\n"
    mail = f"MAIL FROM:<{job['mail_from']}>\r\n".encode()
    rcpt = f"RCPT TO:<{job['rcpt']}>\r\n".encode()
    ehlo = f"EHLO {job.get('ehlo', 'client.test')}\r\n".encode()
    auth = None
    if job.get("auth"):
        user, password = job["auth"]
        auth = b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"
    tls = None
    if job.get("tls"):
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    todo = job["messages"]
    stats = {"accepted": 0, "refused": 0, "errors": 0, "first_refusal": None,
             "first_error": None}
    latencies: list[float] = []
    setups: list[float] = []

    def take() -> int:
        nonlocal todo
        n = min(job["per_session"], todo)
        todo -= n
        return n

    async def one_session(n: int) -> None:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(job["host"], job["port"], ssl=tls,
                                                       limit=1 << 20)
        try:
            code, _ = await reply(reader)
            if code != 220:
                raise ConnectionError(f"banner {code}")
            writer.write(ehlo)
            code, text = await reply(reader)
            pipelining = b"PIPELINING" in text.upper()
            if auth:
                writer.write(auth)
                code, text = await reply(reader)
                if code != 235:
                    raise ConnectionError(f"AUTH {text!r}")
            setups.append(time.perf_counter() - t0)
            for _ in range(n):
                t1 = time.perf_counter()
                if pipelining:
                    writer.write(mail + rcpt + b"DATA\r\n")
                    codes = [(await reply(reader)) for _ in range(3)]
                else:
                    codes = []
                    for command in (mail, rcpt, b"DATA\r\n"):
                        writer.write(command)
                        codes.append(await reply(reader))
                        if codes[-1][0] >= 400:
                            break
                if codes[-1][0] != 354:
                    stats["refused"] += 1
                    stats["first_refusal"] = stats["first_refusal"] or repr(codes)
                    writer.write(b"RSET\r\n")
                    await reply(reader)
                    continue
                writer.write(body)
                code, text = await reply(reader)
                latencies.append(time.perf_counter() - t1)
                if code == 250:
                    stats["accepted"] += 1
                else:
                    stats["refused"] += 1
                    stats["first_refusal"] = stats["first_refusal"] or text.decode(
                        "ascii", "replace").strip()
            writer.write(b"QUIT\r\n")
            await reply(reader)
        finally:
            writer.close()

    async def worker() -> None:
        while (n := take()) > 0:
            try:
                await asyncio.wait_for(one_session(n), job.get("timeout", 120))
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
                stats["errors"] += n
                stats["first_error"] = stats["first_error"] or repr(exc)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(job["concurrency"])))
    end = time.monotonic()
    ms = 1000.0
    return {**stats, "start": start, "end": end, "seconds": end - start,
            "p50_ms": _r(percentile(latencies, 0.50), ms),
            "p99_ms": _r(percentile(latencies, 0.99), ms),
            "setup_p50_ms": _r(percentile(setups, 0.50), ms)}


def _r(value: float | None, scale: float) -> float | None:
    return None if value is None else round(value * scale, 2)


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    try:
        import uvloop
        result = uvloop.run(run(job))
    except ImportError:
        result = asyncio.run(run(job))
    print(json.dumps(result), flush=True)
