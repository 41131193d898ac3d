"""The admin API as `mta serve` serves it: a real node process on a database the test
made, set up with the `mta` CLI, driven by the official SDK."""

from __future__ import annotations

import subprocess
import sys

from cloudflare import Cloudflare


def _mta(config_path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mta", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_node_serves_the_admin_api(make_node, db_url):
    node = make_node({"database": {"url": db_url}})
    cfg = node.config_path
    account = _mta(cfg, "accounts", "create", "acme")
    zone = _mta(cfg, "zones", "create", "--account", account, "example.test")
    assert zone in _mta(cfg, "zones", "list")
    token = _mta(cfg, "tokens", "create", "--account", account, "--name", "ops",
                 "--permission", "email_routing:read", "--permission", "email_routing:edit")
    cf = Cloudflare(api_token=token, base_url=f"http://127.0.0.1:{node.port('http')}/client/v4",
                    max_retries=0, timeout=10, _strict_response_validation=True)
    settings = cf.email_routing.dns.create(zone_id=zone)
    assert (settings.id, settings.name, settings.enabled) == (zone, "example.test", True)
    addr = cf.email_routing.addresses.create(account_id=account, email="ops@dest.test")
    rule = cf.email_routing.rules.create(
        zone_id=zone, name="ops", matchers=[{"type": "literal", "field": "to",
                                             "value": "ops@example.test"}],
        actions=[{"type": "forward", "value": [addr.email]}])
    assert [r.id for r in cf.email_routing.rules.list(zone_id=zone)] == [rule.id]
    assert "pending" in _mta(cfg, "addresses", "list", "--account", "acme")
