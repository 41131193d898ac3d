"""The long fuzzing run: every target of tests/fuzz/test_fuzz.py fed with random buffers
through hypothesis's `fuzz_one_input` (no shrinking, no example database: as fast as the
target allows), until `--count` inputs per target or `--seconds` per target.

    .venv/bin/python scripts/fuzz.py [--count 1000000] [--seconds S] [--only NAME ...]

A failing input is saved under tests/fuzz/crashes/<target>-<sha1>.bin and printed with
its exception; the run goes on. Each target's count and rate are printed at the end
(record them in README's testing section).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzz import test_fuzz  # noqa: E402

CRASHES = ROOT / "tests" / "fuzz" / "crashes"


def targets() -> dict:
    return {name: fn for name, fn in vars(test_fuzz).items()
            if name.startswith("test_") and hasattr(fn, "hypothesis")}


def run(name: str, fn, count: int, seconds: float | None, seed: int) -> tuple[int, int, float]:
    rng = random.Random(seed)
    fuzz = fn.hypothesis.fuzz_one_input
    started = time.monotonic()
    done = crashes = 0
    while done < count and (seconds is None or time.monotonic() - started < seconds):
        buf = rng.randbytes(rng.choice((16, 64, 256, 1024, 4096)))
        try:
            fuzz(buf)
        except Exception as exc:  # noqa: BLE001 - a crash: keep the input, go on
            crashes += 1
            CRASHES.mkdir(parents=True, exist_ok=True)
            path = CRASHES / f"{name}-{hashlib.sha1(buf).hexdigest()[:12]}.bin"
            path.write_bytes(buf)
            print(f"CRASH {name}: {type(exc).__name__}: {exc} -> {path}", flush=True)
            traceback.print_exception(exc, limit=3)
        done += 1
        if done % 100_000 == 0:
            print(f"  {name}: {done} inputs, {time.monotonic() - started:.0f}s", flush=True)
    return done, crashes, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    found = 0
    rows = []
    for name, fn in targets().items():
        if args.only and name not in args.only:
            continue
        done, crashes, took = run(name, fn, args.count, args.seconds, args.seed)
        found += crashes
        rows.append((name, done, crashes, took))
        print(f"{name}: {done} inputs, {crashes} crashes, {took:.0f}s "
              f"({done / max(took, 1e-9):.0f}/s)", flush=True)
    print("\n| target | inputs | crashes | seconds |\n| --- | ---: | ---: | ---: |")
    for name, done, crashes, took in rows:
        print(f"| {name} | {done:,} | {crashes} | {took:.0f} |")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
