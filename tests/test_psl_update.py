"""The Public Suffix List is refreshed without a release: `mta psl update` fetches a list
(here from a loopback HTTP server) into the state directory, and what DMARC takes for
an organizational domain follows it."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import yaml

from mta.checks.psl import BUNDLED_LIST


def mta(cfg, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
    return subprocess.run([sys.executable, "-m", "mta", *args, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_update_from_a_url_changes_organizational_domains(tmp_path):
    fresh = BUNDLED_LIST.read_text() + "\n// a suffix added after the release\npsl-fresh.test\n"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "list.dat").write_text(fresh)
    (tmp_path / "www" / "junk.dat").write_text("<html>not a list</html>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    cfg = tmp_path / "mta.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    try:
        before = mta(cfg, "psl", "check", "mail.shop.psl-fresh.test")
        assert "organizational domain psl-fresh.test" in before.stdout, before.stderr
        junk = mta(cfg, "psl", "update", f"{base}/junk.dat")
        assert junk.returncode == 1 and "not a Public Suffix List" in junk.stderr
        assert not (tmp_path / "state" / "public_suffix_list.dat").exists()
        done = mta(cfg, "psl", "update", f"{base}/list.dat")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "state" / "public_suffix_list.dat").read_text() == fresh
        after = mta(cfg, "psl", "check", "mail.shop.psl-fresh.test")
        assert "public suffix psl-fresh.test, organizational domain shop.psl-fresh.test" \
            in after.stdout
        assert str(tmp_path / "state" / "public_suffix_list.dat") in after.stdout
    finally:
        server.shutdown()
