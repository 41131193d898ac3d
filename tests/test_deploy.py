"""What deploy/ and systemd/ install, checked with the tools an operator has: the unit
with `systemd-analyze`, install.sh with shellcheck and a run under a throwaway root, and
the embedded PostgreSQL with the setting the unit's hardening needs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mta.store.embedded import EmbeddedPostgres
from tests.conftest import server_owned_dir

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "mta.service"
MTA = Path(sys.executable).parent / "mta"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/test.sh installs it: "
                    f"apt-get install -y {'systemd' if 'systemd' in name else name})")
    return path


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's `mta` (verify checks that the
    programs it names exist); nothing else changed."""
    text = UNIT.read_text().replace("/opt/mta/.venv/bin/mta", str(MTA))
    path = tmp_path / "mta.service"
    path.write_text(text)
    return path


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


# --- systemd ------------------------------------------------------------------------------


def test_unit_verifies_clean(tmp_path):
    analyze = tool("systemd-analyze")
    done = subprocess.run([analyze, "verify", str(unit_here(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        done.stdout + done.stderr)


def test_unit_is_notify_with_watchdog_and_keeps_its_hardening():
    d = directives(UNIT)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["KillMode"] == ["mixed"]  # SIGTERM to the supervisor, which stops the workers
    assert "--workers" not in d["ExecStart"][0]  # default: one worker per CPU, one unit
    for key, value in [("MemoryDenyWriteExecute", "yes"), ("NoNewPrivileges", "yes"),
                       ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("SystemCallFilter", "@system-service"), ("User", "mta")]:
        assert value in d[key], key


def test_security_exposure_is_the_one_deploy_readme_records(tmp_path):
    analyze = tool("systemd-analyze")
    done = subprocess.run([analyze, "security", "--offline=yes", "--no-pager",
                           str(unit_here(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for mta\.service: (\d+\.\d)", done.stdout)
    assert m, done.stdout + done.stderr
    readme = (ROOT / "deploy" / "README.md").read_text()
    recorded = re.search(r"exposure level (\d+\.\d)", readme)
    assert recorded, "deploy/README.md records no systemd-analyze security score"
    assert m.group(1) == recorded.group(1), (m.group(1), recorded.group(1))


def test_embedded_cluster_runs_without_jit():
    """MemoryDenyWriteExecute=yes in the unit forbids the W+X memory LLVM JIT needs."""
    base = server_owned_dir("mta-test-jit-")
    cluster = EmbeddedPostgres(base / "postgres", database="mta")
    try:
        cluster.start()
        assert cluster.psql("SHOW jit").strip() == "off"
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- deploy/install.sh -------------------------------------------------------------------

INSTALL = ROOT / "deploy" / "install.sh"
SITE = ["--hostname", "mx1.example.test", "--domain", "example.test",
        "--srs-domain", "srs.example.test", "--public-url", "https://mail.example.test/"]


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                          timeout=300)


def test_install_sh_is_shellcheck_clean():
    done = subprocess.run([tool("shellcheck"), str(INSTALL)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_install_dry_run_writes_nothing_and_shows_everything(tmp_path):
    root = tmp_path / "root"
    done = install("--prefix", str(root), "--no-venv", "--dry-run", *SITE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not root.exists()
    out = done.stdout
    for expected in (f"would write {root}/etc/mta/mta.yaml (mode 0640)",
                     "|     address: '::'", "|   verification_base_url: https://mail.example.test",
                     f"would write {root}/etc/mta/secrets.env (mode 0640)",
                     f"would write {root}/usr/local/bin/mta (mode 0755)",
                     f"$ install -m 0644 {ROOT}/systemd/mta.service",
                     "$ mta dns srs.example.test --forwarding",
                     "$ mta dns example.test --routing", "dry run: nothing was changed"):
        assert expected in out, expected


def test_debian_default_cluster_is_disabled_only_for_the_embedded_one():
    """Dry runs on this machine's real paths (nothing is run or written)."""
    heading = "Debian's default PostgreSQL cluster: stopped, start=manual"
    embedded = install("--dry-run", "--no-venv", *SITE)
    assert embedded.returncode == 0, embedded.stdout + embedded.stderr
    assert heading in embedded.stdout
    external = install("--dry-run", "--no-venv", *SITE,
                       "--database-url", "postgresql+asyncpg://mta:x@db.example.test/mta")
    assert external.returncode == 0, external.stdout + external.stderr
    assert heading not in external.stdout
    assert "postgresql@" not in external.stdout and "start.conf" not in external.stdout


def test_install_under_a_prefix_is_a_working_idempotent_node_setup(tmp_path, db_url):
    root = tmp_path / "root"
    first = install("--prefix", str(root), "--no-venv", *SITE, "--database-url", db_url)
    assert first.returncode == 0, first.stdout + first.stderr
    etc = root / "etc" / "mta"

    from mta.config_load import load_settings

    s = load_settings(etc / "mta.yaml", env={})
    assert (s.listeners.mx.address, s.listeners.mx.port) == ("::", 25)
    assert s.listeners.submission_starttls.address == "::"
    assert s.routing.verification_base_url == "https://mail.example.test"
    assert (s.node.hostname, s.srs.domain) == ("mx1.example.test", "srs.example.test")
    secrets = (etc / "secrets.env").read_text()
    assert (etc / "secrets.env").stat().st_mode & 0o777 == 0o640
    assert f"MTA_DATABASE_URL={db_url}" in secrets and "MTA_SECRET_KEY=" in secrets
    assert (root / "etc/systemd/system/mta.service").read_text() == UNIT.read_text()

    # `mta` on PATH: the node's config and secrets.env (here: the database URL).
    wrapper = root / "usr" / "local" / "bin" / "mta"
    lint = subprocess.run([tool("shellcheck"), str(wrapper)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    listed = subprocess.run([str(wrapper), "accounts", "list"], capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert listed.returncode == 0, listed.stdout + listed.stderr

    # Every record to publish, from `mta dns`.
    out = first.stdout
    dkim = re.search(r'TXT  mta-fwd\._domainkey\.srs\.example\.test "v=DKIM1; k=rsa; p=(\S+)"',
                     out)
    assert dkim, out
    for record in ("MX   example.test 10 mx1.example.test",
                   'TXT  example.test "v=spf1 include:_spf.mx1.example.test ~all"',
                   "MX   srs.example.test 10 mx1.example.test",
                   'TXT  srs.example.test "v=spf1 include:_spf.mx1.example.test ~all"',
                   'TXT  _mta-sts.example.test "v=STSv1; id=',
                   'TXT  _smtp._tls.example.test "v=TLSRPTv1; rua=mailto:postmaster@example.test"',
                   '_spf.mx1.example.test.       TXT      "v=spf1 ip4:'):
        assert record in out, record

    again = install("--prefix", str(root), "--no-venv", *SITE, "--database-url", db_url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"kept the existing {etc}/mta.yaml" in again.stdout
    assert f"kept the existing {etc}/secrets.env" in again.stdout
    assert (etc / "secrets.env").read_text() == secrets
    assert dkim.group(0) in again.stdout  # the same forwarding key, not a new one
