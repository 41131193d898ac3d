"""The package's metadata: building it prints no deprecation warning of ours, the
license is an SPDX expression, and only what the code imports is a run-time dependency
(the independent oracles pyspf, authheaders and pynacl are test extras)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_builds_without_deprecation_warnings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    output = (done.stdout + done.stderr).lower()
    assert "deprecat" not in output, done.stdout + done.stderr
    wheel = next(tmp_path.glob("mta-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = z.read(name).decode()
    assert "License-Expression: Apache-2.0" in metadata
    requires = [line.split(":", 1)[1].strip().lower() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    names = {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
             for r in requires}
    assert not names & {"pynacl", "publicsuffix2", "pyspf", "authheaders"}, names
    assert any(r.startswith("aiosmtpd") and "<" in r for r in requires), requires
    assert any(r.startswith("dkimpy") and "<" in r for r in requires), requires
