"""The `mta` command as the operator runs it, for tests: in a fresh interpreter, with a
routing document most CLI tests start from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ROUTING", "run_mta"]

# One account with one verified destination and one forwarding rule.
ROUTING = """
version: 1
accounts:
  - account: acme
    destination_addresses: [you@inbox.test]
    zones:
      - name: example.test
        routing: true
        rules:
          - {name: hello, to: hello@example.test, forward: [you@inbox.test]}
"""


def run_mta(*args: str, config: Path | str | None = None, env: dict | None = None,
            text: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m mta ARGS [--config CONFIG]`: the test process's MTA_* variables left
    out (they would override the config file), `env` added."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
    command = [sys.executable, "-m", "mta", *args]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(command, capture_output=True, text=text, timeout=timeout,
                          env={**base, **(env or {})})
