"""The README's "First mail in five minutes", run as written.

The three shell blocks are read from README.md at test time (each follows a
`<!-- first-mail: NAME -->` marker) and run with bash from a copy of the repository's
layout: the same scripts, virtualenv and configuration files, except that the four
loopback port numbers of the walk-through are replaced with free ones, in the blocks
and in config/first-mail.yaml alike, so parallel runs do not collide. The forwarded
copy must reach the sink the README starts.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import server_owned_dir
from tests.harness.node import free_port

ROOT = Path(__file__).resolve().parents[1]
PORTS = ("2525", "2526", "8080", "9325")  # MX, sink, HTTP, metrics in the walk-through

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")


def readme_blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## First mail in five minutes", 1)[1].split("\n## ", 1)[0]
    blocks = dict(re.findall(r"<!-- first-mail: (\w+) -->\n```sh\n(.*?)```", section, re.S))
    assert set(blocks) == {"node", "sink", "commands"}, blocks.keys()
    return blocks


class Shell:
    """One terminal: a bash process running a block, its output collected."""

    def __init__(self, script: str, cwd: Path, env: dict) -> None:
        self.proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                                     env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.2)  # the reader thread may still hold lines
                hits = [x for x in self.lines if re.search(pattern, x)]
                if hits:
                    return hits[0]
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.output}")
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen in {timeout}s:\n{self.output}")

    def interrupt(self) -> int:
        """Ctrl-C, as in the terminal."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def walk_dir():
    """The walk-through's directory, outside pytest's own tmp tree: as root the embedded
    cluster runs as the unprivileged `mta` user, who must be able to reach its state dir,
    and pytest keeps its tmp root at mode 0700."""
    path = server_owned_dir("mta-first-mail-")
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_readme_first_mail_reaches_the_sink(walk_dir):
    blocks = readme_blocks()
    ports = {p: str(free_port()) for p in PORTS}

    def ported(text: str) -> str:
        return re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: ports[m.group(1)], text)

    # The repository's layout, the walk-through's files with their ports replaced.
    for name in ("scripts", ".venv", "pyproject.toml", "mta", "migrations", "README.md"):
        (walk_dir / name).symlink_to(ROOT / name)
    (walk_dir / "config").mkdir()
    for name in ("first-mail.yaml", "first-mail.routing.yaml"):
        (walk_dir / "config" / name).write_text(ported((ROOT / "config" / name).read_text()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}

    node = Shell(ported(blocks["node"]), walk_dir, env)
    sink = None
    try:
        node.wait_for(r"node ready", timeout=120)
        assert "state/first-mail/postgres" in node.wait_for(r"node ready", 1)
        assert any("generated secret_key into" in x for x in node.lines), node.output
        sink = Shell(ported(blocks["sink"]), walk_dir, env)
        sink.wait_for(r"listening on", timeout=30)

        commands = subprocess.run(["bash", "-euo", "pipefail", "-c",
                                   ported(blocks["commands"])], cwd=walk_dir, env=env,
                                  capture_output=True, text=True, timeout=300)
        assert commands.returncode == 0, commands.stdout + commands.stderr
        queued = re.search(r"250 2\.0\.0 OK: queued as (\S+)", commands.stdout)
        assert queued, commands.stdout

        got = sink.wait_for(r"^message 1: ", timeout=60)
        assert "to=<you@inbox.test>" in got
        assert re.search(r"from=<SRS0=[^>]*=sender\.test=alice@srs\.first-mail\.test>", got)
        assert "subject='first mail'" in got
        assert "Traceback" not in node.output + commands.stderr
    finally:
        if sink is not None:
            sink.interrupt()
        assert node.interrupt() == 0, node.output
