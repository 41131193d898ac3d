"""Idle SMTP sessions for bench/idle_sessions.py, in their own process.

    python bench/idle_client.py HOST PORT N

Opens N sessions (at most 200 connecting at once), reads each banner, sends EHLO and
reads the reply, then keeps them all open and idle. Prints one JSON line once they are
established ({"open": ..., "failed": ..., "first_error": ..., "seconds": ...}), then
waits for a line on stdin and closes them all.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time


async def main(host: str, port: int, n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gate = asyncio.Semaphore(200)
    writers: list[asyncio.StreamWriter] = []
    stats = {"open": 0, "failed": 0, "first_error": None}

    async def one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                banner = await asyncio.wait_for(reader.readline(), 60)
                if not banner.startswith(b"220"):
                    raise ConnectionError(banner.decode(errors="replace").strip())
                writer.write(b"EHLO idle.test\r\n")
                while True:
                    line = await asyncio.wait_for(reader.readline(), 60)
                    if not line.startswith(b"250"):
                        raise ConnectionError(line.decode(errors="replace").strip())
                    if line[3:4] == b" ":
                        break
                writers.append(writer)
                stats["open"] += 1
            except (OSError, ConnectionError, TimeoutError) as exc:
                stats["failed"] += 1
                stats["first_error"] = stats["first_error"] or repr(exc)

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    print(json.dumps({**stats, "seconds": round(time.monotonic() - t0, 2)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in writers:
        w.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
