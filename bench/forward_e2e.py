"""Forward end to end: `mta serve` against Postfix, in one run, to the same counting sink.

    .venv/bin/python bench/forward_e2e.py [--messages 500] [--concurrency 1,10,50]
        [--per-session 10] [--workers N] [--no-postfix] [--profile FILE]

Targets, one after the other, each driven by the same client (bench/smtpload.py, its own
process) with a ~3.2 KB message DKIM-signed (RSA-2048) by good.test, 10 per connection:

- mta: a real `mta serve` process (`--workers N` passed through when `mta serve` has
  it), PostgreSQL started by the benchmark (fsync on), the loopback DNS server of the
  tests (SPF/DKIM/DMARC pass; the node's cache is warm after the warm-up), a catch-all
  rule of ours.test forwarding to dest@sink.test, tried in-session through
  `delivery.smart_host` = the sink: MX, checks, routing, SRS, ARC seal, DKIM signature,
  delivery, all before the 250. Defaults otherwise, except
  `limits.max_sessions_per_ip` (every client here is 127.0.0.1).
- postfix: Debian's Postfix as a private instance relaying to the sink.
- postfix+dkim: the same with OpenDKIM signing (milter, unix socket, RSA-2048).

Per level: accepted messages per second (client side), end-to-end rate (messages arrived
at the sink / (last arrival - first connect)), p50/p99 of one transaction (MAIL to the
250 after DATA), and CPU ms per message over every process of the target (mta: the serve
process tree and every PostgreSQL process; Postfix: master and every daemon it forked,
and OpenDKIM). Then the ratios of mta to both Postfix variants.

`--profile FILE` also records the node with py-spy during the c=10 level (collapsed
stacks; `bench/profile_summary.py FILE` sums them by area).

bench/inbound_accept.py runs the same with the forward queued instead of tried
in-session. Prints the tables and writes JSON to bench/out/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Node,
    Postgres,
    Sink,
    World,
    process_tree,
    queue_depth,
    raise_nofile,
    ratio,
    serve_supports_workers,
    smtp_level,
    table,
    workdir,
    write_result,
)

NODE_LIMITS = {"limits": {"max_sessions_per_ip": 1000}}


def parse(argv: list[str] | None, doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--messages", type=int, default=500, help="messages per level")
    p.add_argument("--concurrency", default="1,10,50")
    p.add_argument("--per-session", type=int, default=10)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--workers", type=int, default=None,
                   help="mta serve --workers N (when supported)")
    p.add_argument("--no-postfix", action="store_true")
    p.add_argument("--profile", default=None, help="py-spy collapsed stacks of the node "
                   "during the c=10 level (mta target only)")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.concurrency.split(",")]
    return args


def run(name: str, args: argparse.Namespace, *, queued: bool) -> dict:
    """Run every target; `queued` = accept only (the forward queued, Postfix holding)."""
    raise_nofile(65536)
    wd = workdir(name)
    world, sink = World(wd), Sink()
    pg = Postgres(wd).start()
    results: dict[str, list[dict]] = {}
    notes: dict = {"workers": None}
    try:
        from bench import postfix as pf

        targets = ["mta"]
        if not args.no_postfix:
            pf.ensure_installed()
            notes["postfix_system_instance_running"] = pf.system_instance_running()
            targets += ["postfix", "postfix+dkim"]
        for target in targets:
            if target == "mta":
                results[target] = run_mta(wd, pg, world, sink, args, queued, notes)
            else:
                inst = pf.PostfixInstance(wd, (sink.address, sink.port),
                                          dkim=target.endswith("dkim"), hold=queued)
                inst.start()
                try:
                    results[target] = levels(inst.pids, inst.port, world, sink, args,
                                             queued)
                finally:
                    inst.stop()
    finally:
        sink.stop()
        world.stop()
        pg.stop()
    report(results, queued)
    print(f"mta queue afterwards: {notes.get('queue_after')}\n")
    return {"message_bytes": world.message.stat().st_size, "per_session": args.per_session,
            "queued": queued, "notes": notes, "results": results}


def run_mta(wd: Path, pg: Postgres, world: World, sink: Sink, args, queued: bool,
            notes: dict) -> list[dict]:
    overrides = dict(NODE_LIMITS)
    if queued:
        # No switch exists to queue a single-destination forward without trying it:
        # a zero in-session timeout gives up at once and queues it (attempt counted,
        # next try after retry.first_retry, so nothing is delivered during the level).
        overrides["routing"] = {"in_session_timeout": "0s"}
    workers = args.workers if args.workers and serve_supports_workers() else None
    notes["workers"] = workers
    node = Node(wd, pg.create_database("forward"), world, sink, overrides, workers=workers)
    node.setup()
    node.postgres_pid = pg.pid()
    node.start()
    notes["node_processes"] = len(process_tree([node.proc.pid]))  # supervisor + workers
    try:
        rows = levels(node.pids, node.port("mx"), world, sink, args, queued,
                      profile=args.profile, profile_pid=node.proc.pid)
        # accept-only: every accepted message must be waiting in the queue
        notes["queue_after"] = queue_depth(node)
        return rows
    finally:
        node.stop()


def levels(roots, port: int, world: World, sink: Sink, args, queued: bool,
           profile: str | None = None, profile_pid: int | None = None) -> list[dict]:
    common_args = dict(end_to_end=not queued, world=world)
    smtp_level(roots, sink, port, world.message, 5, args.warmup, args.per_session,
               **common_args)
    rows = []
    for c in args.levels:
        spy = None
        if profile and c == 10:
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                 str(profile_pid), "--subprocesses", "--format", "raw", "--rate", "200",
                 "-o", profile], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        try:
            row = smtp_level(roots, sink, port, world.message, c, args.messages,
                             args.per_session, **common_args)
        finally:
            if spy:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has
                spy.wait(30)
        rows.append(row)
        print(f"  c={c}: accepted {row['accepted']}, arrived {row['arrived']}, "
              f"{row['accept_per_s']} accepted/s, e2e {row['e2e_per_s']}/s, "
              f"{row['cpu_ms_per_msg']} CPU ms/msg", flush=True)
    return rows


def report(results: dict[str, list[dict]], queued: bool) -> None:
    rows = []
    for target, rs in results.items():
        for r in rs:
            rows.append([target, r["concurrency"], r["accepted"], r["arrived"],
                         r["accept_per_s"], r["e2e_per_s"], r["p50_ms"], r["p99_ms"],
                         r["cpu_ms_per_msg"], r["refused"] + r["errors"]])
    print()
    print(table(["target", "c", "accepted", "arrived", "accept/s", "e2e/s", "p50 ms",
                 "p99 ms", "CPU ms/msg", "refused+errors"], rows))
    ours = {r["concurrency"]: r for r in results.get("mta", [])}
    others = [o for o in ("postfix", "postfix+dkim") if o in results]
    if others:
        keys = ["accept_per_s", "cpu_ms_per_msg"] if queued else \
            ["e2e_per_s", "accept_per_s", "cpu_ms_per_msg"]
        names = {"e2e_per_s": "e2e", "accept_per_s": "accept", "cpu_ms_per_msg": "CPU"}
        out = []
        for c, r in ours.items():
            line = [c]
            for other in others:
                o = next((x for x in results[other] if x["concurrency"] == c), {})
                line += [ratio(r[k], o.get(k)) for k in keys]
            out.append(line)
        print()
        print("mta / Postfix (rates > 1: mta faster; CPU > 1: mta spends more per message)")
        print(table(["c", *(f"{names[k]} vs {o}" for o in others for k in keys)], out))
    print()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv, __doc__)
    result = run("forward_e2e", args, queued=False)
    write_result("forward_e2e", result)


if __name__ == "__main__":
    main()
