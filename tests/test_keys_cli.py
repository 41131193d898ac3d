"""The forwarding DKIM key exists once a node has started (before any forward), and
`mta keys list|show` show it with the TXT record to publish."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def mta(cfg, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
    return subprocess.run([sys.executable, "-m", "mta", *args, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, env=env)


def test_forwarding_key_is_made_at_start_and_shown(make_node, db_url):
    node = make_node({"database": {"url": db_url}})  # srs.domain srs.node.test
    generated = node.wait_for_log(lambda e: e.get("event") == "routing.key_generated")
    assert generated["domain"] == "srs.node.test"
    cfg = node.config_path
    listed = mta(cfg, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert "srs.node.test  mta-fwd   rsa        active" in listed.stdout
    shown = json.loads(mta(cfg, "keys", "show", "srs.node.test", "--json").stdout)
    assert [(k["name"], k["state"]) for k in shown] == [
        ("mta-fwd._domainkey.srs.node.test", "active")]
    assert shown[0]["content"].startswith("v=DKIM1; k=rsa; p=MII")
    assert shown[0]["content"].split("p=")[1] in generated["msg"]
    missing = mta(cfg, "keys", "show", "nokeys.test")
    assert missing.returncode == 1 and "no DKIM key for nokeys.test" in missing.stderr
