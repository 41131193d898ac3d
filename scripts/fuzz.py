"""The long fuzzing run (issue 13): every target of tests/fuzz/targets.py under atheris
(libFuzzer, coverage-guided: the mta package is instrumented, so inputs that reach new
branches of our parsers are kept and mutated further), one child process per target,
until `--count` inputs per target or `--seconds` per target.

    .venv/bin/python scripts/fuzz.py [--count 1000000] [--seconds S] [--only NAME ...]

A failing input is saved as tests/fuzz/crashes/<target>-crash-<sha1> (libFuzzer stops
that target at its first crash) and the child's report is printed. At the end a table
gives each target's inputs, crashes and seconds: record it in README's testing section.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CRASHES = ROOT / "tests" / "fuzz" / "crashes"
_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")


def child(name: str, count: int, seconds: float | None) -> None:
    """Run one target in this process under atheris; never returns."""
    import atheris

    with atheris.instrument_imports(include=["mta"]):
        from tests.fuzz.targets import TARGETS, seeds
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    CRASHES.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-runs={count}", "-max_len=4096", "-print_final_stats=1",
            f"-artifact_prefix={CRASHES}/{name}-", str(corpus)]
    if seconds:
        argv.insert(1, f"-max_total_time={int(seconds)}")
    atheris.Setup(argv, TARGETS[name])
    atheris.Fuzz()


def run(name: str, count: int, seconds: float | None) -> tuple[int, bool, float]:
    started = time.monotonic()
    command = [sys.executable, __file__, "--child", name, "--count", str(count)]
    if seconds:
        command += ["--seconds", str(seconds)]
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False)
    took = time.monotonic() - started
    m = _EXECUTED.search(proc.stdout)
    crashed = proc.returncode != 0
    if crashed:
        sys.stdout.write(proc.stdout.decode("utf-8", "replace")[-6000:])
    return (int(m.group(1)) if m else 0), crashed, took


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.count, args.seconds)
        return 0
    from tests.fuzz.targets import TARGETS

    rows = []
    for name in TARGETS:
        if args.only and name not in args.only:
            continue
        done, crashed, took = run(name, args.count, args.seconds)
        rows.append((name, done, crashed, took))
        print(f"{name}: {done} inputs, {'CRASH' if crashed else 'no crash'}, {took:.0f}s "
              f"({done / max(took, 1e-9):.0f}/s)", flush=True)
    print("\n| target | inputs | crashes | seconds |\n| --- | ---: | ---: | ---: |")
    for name, done, crashed, took in rows:
        print(f"| {name} | {done:,} | {int(crashed)} | {took:.0f} |")
    return 1 if any(crashed for _, _, crashed, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
