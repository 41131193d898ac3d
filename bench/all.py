"""Run every benchmark at its default size, then a profile, and write one summary.

    .venv/bin/python bench/all.py [--workers N] [--quick] [--no-profile]
    bash bench/run_all.sh            # the same

In order: forward_e2e, inbound_accept, send_api, submission, queue_drain, idle_sessions
(each its own process, printing its table and writing bench/out/<name>-<stamp>.json),
then forward_e2e again for the node alone at c=10 under py-spy
(bench/out/profile-<stamp>.txt, summed by bench/profile_summary.py). The summary, in
Markdown (what bench/RESULTS.md shows), goes to stdout and to
bench/out/summary-<stamp>.md. `--quick` runs small sizes to check that everything works
(about 6 minutes); the default sizes take about 12-15 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, PY, ROOT, machine  # noqa: E402

QUICK = {
    "forward_e2e": ["--messages", "100"], "inbound_accept": ["--messages", "100"],
    "send_api": ["--requests", "100"], "submission": ["--messages", "100"],
    "queue_drain": ["--recipients", "1000"], "idle_sessions": ["--sessions", "200,1000"],
}


def run(name: str, args: list[str]) -> tuple[dict | None, float]:
    print(f"\n=== {name} {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([PY, str(ROOT / "bench" / f"{name}.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    written = None
    assert proc.stdout
    for line in proc.stdout:
        print(line, end="", flush=True)
        m = re.match(r"wrote (bench/out/\S+\.json)", line.strip())
        if m:
            written = ROOT / m[1]
    proc.wait()
    seconds = time.monotonic() - t0
    if proc.returncode != 0 or written is None:
        print(f"!!! {name} failed ({proc.returncode})", flush=True)
        return None, seconds
    return json.loads(written.read_text()), seconds


def md(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + " ---: |" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def smtp_section(title: str, data: dict, rate: str) -> list[str]:
    res = data["results"]
    rows = []
    for target, levels in res.items():
        for r in levels:
            split = r.get("cpu_ms_per_msg_by_tree") or []
            detail = (f"{r['cpu_ms_per_msg']} ({' + '.join(str(x) for x in split)})"
                      if target == "mta" and len(split) == 2 else r["cpu_ms_per_msg"])
            rows.append([target, r["concurrency"], r["accepted"], r["arrived"],
                         r["accept_per_s"], r["e2e_per_s"], r["p50_ms"], r["p99_ms"], detail,
                         r["refused"] + r["errors"]])
    out = [f"### {title}", "", f"`{data['command']}` — {data['when']}", "",
           md(["target", "c", "accepted", "arrived", "accept/s", "e2e/s", "p50 ms",
               "p99 ms", "CPU ms/msg (mta: node + PostgreSQL)", "refused+errors"], rows), ""]
    ours = {r["concurrency"]: r for r in res.get("mta", [])}
    others = [o for o in ("postfix", "postfix+dkim") if o in res]
    if others:
        keys = [rate, "accept_per_s", "cpu_ms_per_msg"] if rate != "accept_per_s" \
            else ["accept_per_s", "cpu_ms_per_msg"]
        names = {"e2e_per_s": "e2e", "accept_per_s": "accept", "cpu_ms_per_msg": "CPU"}
        rows = []
        for c, r in ours.items():
            line = [c]
            for o in others:
                x = next((y for y in res[o] if y["concurrency"] == c), {})
                line += [round(r[k] / x[k], 2) if r.get(k) and x.get(k) else None
                         for k in keys]
            rows.append(line)
        out += ["mta / Postfix (rates > 1: mta faster; CPU > 1: mta spends more):", "",
                md(["c", *(f"{names[k]} vs {o}" for o in others for k in keys)], rows), ""]
    return out


def summary(results: dict[str, dict], times: dict[str, float], profile: str | None) -> str:
    m = machine()
    out = [f"## Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
           f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
           f"load average at the end {', '.join(f'{x:.1f}' for x in m['loadavg'])}. "
           f"Run times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
           + f"; total {sum(times.values()) / 60:.1f} min.", ""]
    if "forward_e2e" in results:
        out += smtp_section("forward-e2e (bench/forward_e2e.py)", results["forward_e2e"],
                            "e2e_per_s")
    if "inbound_accept" in results:
        out += smtp_section("inbound-accept (bench/inbound_accept.py)",
                            results["inbound_accept"], "accept_per_s")
    if "send_api" in results:
        d = results["send_api"]
        out += ["### send-api (bench/send_api.py)", "", f"`{d['command']}`", "",
                md(["c", "ok", "failed+errors", "sends/s", "p50 ms", "p99 ms", "CPU ms/send"],
                   [[r["concurrency"], r["ok"], r["failed"] + r["errors"], r["sends_per_s"],
                     r["p50_ms"], r["p99_ms"], r["cpu_ms_per_send"]] for r in d["results"]]),
                "", f"Queue afterwards: {d['queue_depth']} for {d['accepted_total']} accepted "
                "sends (warm-up included).", ""]
    if "submission" in results:
        d = results["submission"]
        out += ["### submission (bench/submission.py)", "", f"`{d['command']}`", "",
                md(["c", "accepted", "refused+errors", "msg/s", "p50 ms", "p99 ms",
                    "setup ms", "CPU ms/msg"],
                   [[r["concurrency"], r["accepted"], r["refused"] + r["errors"],
                     r["accept_per_s"], r["p50_ms"], r["p99_ms"], r["setup_p50_ms"],
                     r["cpu_ms_per_msg"]] for r in d["results"]]), ""]
    if "queue_drain" in results:
        d = results["queue_drain"]
        out += ["### queue-drain (bench/queue_drain.py)", "", f"`{d['command']}`", "",
                md(["recipients", "delivered", "seconds", "deliveries/s", "CPU ms/delivery",
                    "SMTP sessions", "enqueue/s (send API)"],
                   [[r["recipients"], r["delivered"], r["seconds"], r["deliveries_per_s"],
                     r["cpu_ms_per_delivery"], r["smtp_sessions"], r["enqueue_per_s"]]
                    for r in d["results"]]), ""]
    if "idle_sessions" in results:
        d = results["idle_sessions"]
        mib = 1024 * 1024
        base = d["idle_node"]
        out += ["### idle sessions (bench/idle_sessions.py)", "", f"`{d['command']}`", "",
                f"Idle node: RSS {base['rss_bytes'] / mib:.0f} MiB, PSS "
                f"{base['pss_bytes'] / mib:.0f} MiB over {base['processes']} processes.", "",
                md(["sessions", "open", "failed", "processes", "RSS MiB", "PSS MiB",
                    "PSS growth MiB", "KiB/session (PSS)"],
                   [[r["sessions"], r["open"], r["failed"], r["processes"],
                     round(r["rss_bytes"] / mib), round(r["pss_bytes"] / mib),
                     round(r["pss_growth_bytes"] / mib), r["kib_per_session_pss"]]
                    for r in d["results"]]), ""]
    out += targets(results)
    if profile:
        out += ["### profile: the node under forward-e2e at c=10 (py-spy)", "", "```",
                profile.strip(), "```", ""]
    return "\n".join(out)


def targets(results: dict[str, dict]) -> list[str]:
    """Issue 12's targets against this run (each needs its benchmark in the run)."""
    rows: list[list] = []

    def at(name: str, target: str, c: int = 50) -> dict:
        levels = results.get(name, {}).get("results", {}).get(target, [])
        return next((r for r in levels if r["concurrency"] == c), {})

    def yes(ok: bool | None) -> str:
        return "-" if ok is None else ("yes" if ok else "no")

    mta, pf, dk = at("forward_e2e", "mta"), at("forward_e2e", "postfix"), \
        at("forward_e2e", "postfix+dkim")
    if mta:
        r = mta.get("e2e_per_s") or 0
        if dk.get("e2e_per_s"):
            rows.append(["forward-e2e at c=50 ≥ 1.5× Postfix + OpenDKIM end to end",
                         f"{r / dk['e2e_per_s']:.2f}× ({r} vs {dk['e2e_per_s']} e2e/s)",
                         yes(r >= 1.5 * dk["e2e_per_s"])])
        if pf.get("accept_per_s"):
            a = mta["accept_per_s"]
            rows.append(["forward-e2e at c=50 ≥ 0.8× plain Postfix's accept rate",
                         f"{a / pf['accept_per_s']:.2f}× ({a} vs {pf['accept_per_s']}/s)",
                         yes(a >= 0.8 * pf["accept_per_s"])])
        split = mta.get("cpu_ms_per_msg_by_tree") or []
        rows.append(["≤ 4 ms CPU per forwarded message, PostgreSQL included",
                     f"{mta['cpu_ms_per_msg']} ms (node + PostgreSQL: "
                     f"{' + '.join(str(x) for x in split)})", yes(mta["cpu_ms_per_msg"] <= 4)])
        rows.append(["p99 of one transaction at c=50 < 100 ms", f"{mta['p99_ms']} ms",
                     yes(mta["p99_ms"] is not None and mta["p99_ms"] < 100)])
    send = next((r for r in results.get("send_api", {}).get("results", [])
                 if r["concurrency"] == 50), None)
    if send:
        rows.append(["send-api ≥ 1,000 sends/s at c=50, ≤ 2 ms CPU per send",
                     f"{send['sends_per_s']}/s, {send['cpu_ms_per_send']} ms",
                     yes(send["sends_per_s"] >= 1000 and send["cpu_ms_per_send"] <= 2)])
    drain = (results.get("queue_drain", {}).get("results") or [None])[0]
    if drain:
        rows.append(["queue-drain ≥ 1,000 deliveries/s, ≤ 1 ms CPU per delivery",
                     f"{drain['deliveries_per_s']}/s, {drain['cpu_ms_per_delivery']} ms "
                     f"({drain['recipients']} recipients)",
                     yes(drain["deliveries_per_s"] >= 1000
                         and drain["cpu_ms_per_delivery"] <= 1)])
    idle = next((r for r in results.get("idle_sessions", {}).get("results", [])
                 if r["sessions"] == 10000), None)
    if idle:
        gib = idle["pss_bytes"] / 2**30
        rows.append(["10,000 idle SMTP sessions in < 1 GiB resident (all our processes)",
                     f"{idle['pss_bytes'] / 2**20:.0f} MiB PSS, {idle['rss_bytes'] / 2**20:.0f}"
                     f" MiB RSS, {idle['open']} open", yes(gib < 1 and idle["open"] == 10000)])
    if not rows:
        return []
    return ["### The targets of issue 12 against this run", "",
            "| target | reached | met |", "| --- | --- | --- |",
            *(f"| {a} | {b} | {c} |" for a, b, c in rows), ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="small sizes, to check it works")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated subset")
    args = p.parse_args()
    names = ["forward_e2e", "inbound_accept", "send_api", "submission", "queue_drain",
             "idle_sessions"]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    results: dict[str, dict] = {}
    times: dict[str, float] = {}
    for name in names:
        extra = (QUICK[name] if args.quick else []) + \
            (["--workers", str(args.workers)] if args.workers else [])
        data, times[name] = run(name, extra)
        if data:
            results[name] = data
    profile_text = None
    py_spy = Path(PY).with_name("py-spy")
    if not args.no_profile:
        if not py_spy.exists():
            subprocess.run([PY, "-m", "pip", "install", "-q", "py-spy"], check=False)
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        prof = OUT / f"profile-{stamp}.txt"
        extra = ["--workers", str(args.workers)] if args.workers else []
        _, times["profile"] = run("forward_e2e", [
            "--no-postfix", "--concurrency", "10", "--messages",
            "100" if args.quick else "400", "--profile", str(prof), *extra])
        if prof.exists():
            from bench.profile_summary import summarize

            profile_text = summarize(str(prof), 15)
    text = summary(results, times, profile_text)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"summary-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.md"
    path.write_text(text + "\n")
    print("\n" + text)
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
