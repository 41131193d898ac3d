"""What every benchmark script shares: running its event loop, and writing its result
as JSON to bench/out/ with the facts needed to compare runs."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def run(coro):
    """Run `coro` on uvloop (as `mta serve` does) when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def write_result(name: str, result: dict) -> Path:
    """Write `result` to bench/out/<name>-<UTC stamp>.json, adding the command line, the
    time, the CPU count and the Python version; prints and returns the path."""
    record = {"benchmark": name,
              "command": " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
              "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "cpus": os.cpu_count(), "python": platform.python_version(), **result}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path.relative_to(ROOT)}")
    return path
