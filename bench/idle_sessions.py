"""Idle SMTP sessions against resident memory of every process of `mta serve`.

    .venv/bin/python bench/idle_sessions.py [--sessions 1000,10000] [--workers N]

A real `mta serve` (PostgreSQL started by the benchmark) with `limits.max_sessions` and
`limits.max_sessions_per_ip` raised above the largest level (every client here is
127.0.0.1) and the open-file limit raised for it and the client. For each level the
client (bench/idle_client.py, its own process) opens N sessions to the MX, reads the
banner, says EHLO and then stays idle; once all are established (plus 3 s), RSS and PSS
are summed over the serve process tree and every PostgreSQL process, from /proc
(smaps_rollup). Reported: the totals, the growth over the idle node, and per session.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    PY,
    ROOT,
    Node,
    Postgres,
    World,
    memory,
    node_workers,
    raise_nofile,
    table,
    workdir,
    write_result,
)

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", default="1000,10000")
    p.add_argument("--workers", type=int, default=None,
                   help="mta serve --workers N (passed when mta serve supports it)")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.sessions.split(",")]
    nofile = raise_nofile(max(levels) * 2 + 1024)
    wd = workdir("idle")
    world = World(wd)
    pg = Postgres(wd).start()
    limit = 2 * max(levels)  # per process under --workers; the kernel spreads unevenly
    rows = []
    try:
        node = Node(wd, pg.create_database("idle"), world, None,
                    {"limits": {"max_sessions": limit, "max_sessions_per_ip": limit}},
                    workers=node_workers(args.workers))
        node.setup()
        node.postgres_pid = pg.pid()
        node.start()
        try:
            time.sleep(2)
            base = memory(node.pids())
            for n in levels:
                client = subprocess.Popen(
                    [PY, str(ROOT / "bench" / "idle_client.py"), "127.0.0.1",
                     str(node.port("mx")), str(n)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert client.stdout and client.stdin
                opened = json.loads(client.stdout.readline())
                time.sleep(3)
                mem = memory(node.pids())
                client.stdin.write("close\n")
                client.stdin.flush()
                client.wait(60)
                rows.append({"sessions": n, **opened, **mem,
                             "rss_growth_bytes": mem["rss_bytes"] - base["rss_bytes"],
                             "pss_growth_bytes": mem["pss_bytes"] - base["pss_bytes"],
                             "kib_per_session_pss": round(
                                 (mem["pss_bytes"] - base["pss_bytes"]) / 1024 / max(1, opened["open"]),
                                 1)})
                print(f"  {n}: {opened['open']} open, {opened['failed']} failed, "
                      f"PSS {mem['pss_bytes'] / MIB:.0f} MiB", flush=True)
                time.sleep(3)  # let the node notice the closed sessions
        finally:
            node.stop()
    finally:
        world.stop()
        pg.stop()
    print()
    print(f"idle node: RSS {base['rss_bytes'] / MIB:.0f} MiB, PSS {base['pss_bytes'] / MIB:.0f}"
          f" MiB over {base['processes']} processes (open-file limit {nofile})")
    print(table(["sessions", "open", "failed", "processes", "RSS MiB", "PSS MiB",
                 "PSS growth MiB", "KiB/session (PSS)"],
                [[r["sessions"], r["open"], r["failed"], r["processes"],
                  round(r["rss_bytes"] / MIB), round(r["pss_bytes"] / MIB),
                  round(r["pss_growth_bytes"] / MIB), r["kib_per_session_pss"]]
                 for r in rows]))
    if any(r["first_error"] for r in rows):
        print("first errors:", [r["first_error"] for r in rows if r["first_error"]])
    print()
    write_result("idle_sessions", {"workers": node.workers, "idle_node": base,
                                   "nofile": nofile, "results": rows})


if __name__ == "__main__":
    main()
