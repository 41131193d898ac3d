"""HTTP load generator for the benchmarks, run in its own process.

    python bench/httpload.py '<json job>'

The job: host, port, path, token (Bearer), body (a JSON document, sent as is),
concurrency, requests. `concurrency` keep-alive HTTP/1.1 connections each POST the body
until `requests` have been sent. Prints one JSON line: ok (2xx), failed (other status),
errors, the first failure, monotonic start/end, p50/p99 of one request.

Written on asyncio streams, without an HTTP library, so the client costs far less than
the server it drives.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = await reader.readline()
    if not status:
        raise ConnectionError("connection closed")
    length, chunked = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(length)
    return int(status.split()[1]), body


async def run(job: dict) -> dict:
    body = json.dumps(job["body"]).encode()
    request = (f"POST {job['path']} HTTP/1.1\r\nHost: {job['host']}:{job['port']}\r\n"
               f"Authorization: Bearer {job['token']}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    todo = job["requests"]
    stats = {"ok": 0, "failed": 0, "errors": 0, "first_failure": None}
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal todo
        reader = writer = None
        while todo > 0:
            todo -= 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(job["host"], job["port"])
                t0 = time.perf_counter()
                writer.write(request)
                status, text = await asyncio.wait_for(response(reader), 120)
                latencies.append(time.perf_counter() - t0)
                if 200 <= status < 300:
                    stats["ok"] += 1
                else:
                    stats["failed"] += 1
                    stats["first_failure"] = stats["first_failure"] or \
                        f"{status} {text[:300].decode('utf-8', 'replace')}"
            except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError,
                    ValueError) as exc:
                stats["errors"] += 1
                stats["first_failure"] = stats["first_failure"] or repr(exc)
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(job["concurrency"])))
    end = time.monotonic()
    latencies.sort()

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * q))], 2)

    return {**stats, "start": start, "end": end, "seconds": end - start,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    try:
        import uvloop
        result = uvloop.run(run(job))
    except ImportError:
        result = asyncio.run(run(job))
    print(json.dumps(result), flush=True)
