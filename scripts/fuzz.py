"""The long fuzzing run (issue 13): every target of tests/fuzz/targets.py under atheris
(libFuzzer for Python), one child process per target and phase, until `--count` inputs
per target.

    .venv/bin/python scripts/fuzz.py [--count 1000000] [--guided-seconds 60] [--only NAME ...]

Each target runs in two phases over one corpus (tests/fuzz/corpus/<target>/, starting
from the target's seeds and kept between runs):

1. coverage-guided, for `--guided-seconds`: the mta package is instrumented, and every
   input that reaches a new branch of our code is added to the corpus;
2. mass mutation, for the rest of `--count`: the same libFuzzer mutations of that corpus
   without the instrumentation (`-keep_seed=1` keeps every corpus entry), which costs
   five to ten times less per input — what makes a million inputs per target fit in
   minutes on a shared machine.

A failing input is saved as tests/fuzz/crashes/<target>-crash-<sha1> (libFuzzer stops
that target at its first crash) and the child's report is printed. At the end a table
gives each target's inputs (guided / total), branches covered, crashes and seconds:
record it in README's testing section.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CRASHES = ROOT / "tests" / "fuzz" / "crashes"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")
_COVERAGE = re.compile(rb"\bcov: (\d+)")


def child(name: str, phase: str, runs: int, seconds: float) -> None:
    """Run one target in this process under atheris; never returns."""
    import atheris

    if phase == "guided":
        with atheris.instrument_imports(include=["mta"]):
            from tests.fuzz.targets import TARGETS, seeds
    else:
        from tests.fuzz.targets import TARGETS, seeds
    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    CRASHES.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], "-max_len=4096", "-print_final_stats=1", "-keep_seed=1",
            f"-artifact_prefix={CRASHES}/{name}-", str(corpus)]
    argv.insert(1, f"-max_total_time={int(seconds)}" if phase == "guided" else f"-runs={runs}")
    atheris.Setup(argv, TARGETS[name])
    atheris.Fuzz()


def _phase(name: str, phase: str, runs: int, seconds: float) -> tuple[int, int, bool]:
    command = [sys.executable, __file__, "--child", name, "--phase", phase,
               "--count", str(runs), "--guided-seconds", str(seconds)]
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False)
    executed = _EXECUTED.search(proc.stdout)
    coverage = _COVERAGE.findall(proc.stdout)
    crashed = proc.returncode != 0
    if crashed:
        sys.stdout.write(proc.stdout.decode("utf-8", "replace")[-6000:])
    return (int(executed.group(1)) if executed else 0,
            int(coverage[-1]) if coverage else 0, crashed)


def run(name: str, count: int, guided_seconds: float) -> tuple[int, int, int, bool, float]:
    started = time.monotonic()
    guided, cov, crashed = _phase(name, "guided", 0, guided_seconds)
    total = guided
    if not crashed and count > guided:
        done, _, crashed = _phase(name, "mass", count - guided, 0)
        total += done
    return guided, total, cov, crashed, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--guided-seconds", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="guided", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.phase, args.count, args.guided_seconds)
        return 0
    from tests.fuzz.targets import TARGETS

    rows = []
    for name in TARGETS:
        if args.only and name not in args.only:
            continue
        guided, total, cov, crashed, took = run(name, args.count, args.guided_seconds)
        rows.append((name, guided, total, cov, crashed, took))
        print(f"{name}: {total} inputs ({guided} coverage-guided, {cov} branches), "
              f"{'CRASH' if crashed else 'no crash'}, {took:.0f}s", flush=True)
    print("\n| target | inputs | of them coverage-guided | branches | crashes | seconds |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, guided, total, cov, crashed, took in rows:
        print(f"| {name} | {total:,} | {guided:,} | {cov} | {int(crashed)} | {took:.0f} |")
    return 1 if any(row[4] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
