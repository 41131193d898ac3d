"""`mta simulate` (the real CLI in a subprocess) and the optional dev endpoint, on the
reference's sample message ([Local development > Email routing])."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from mta.config_load import settings_from_text
from mta.store.db import Database
from mta.store.models import Account, DestinationAddress, RoutingDomain, RoutingRule, Zone

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "handlers"

SAMPLE = """Received: from smtp.example.com (127.0.0.1)
        by cloudflare-email.com (unknown) id 4fwwffRXOpyR
        for <recipient@example.com>; Tue, 27 Aug 2024 15:50:20 +0000
From: "John" <sender@example.com>
Reply-To: sender@example.com
To: recipient@example.com
Subject: Testing Email Workers Local Dev
Content-Type: text/html; charset="windows-1252"
X-Mailer: Curl
Date: Tue, 27 Aug 2024 08:49:44 -0700
Message-ID: <6114391943504294873000@ZSH-GHOSTTY>

Hi there
"""


async def _seed(db_url: str) -> None:
    db = Database(db_url, pool_size=2)
    async with db.session() as s:
        acct = Account(id=uuid.uuid4().hex, name="sim")
        s.add(acct)
        await s.flush()
        zone = Zone(account_id=acct.id, name="example.com", routing_enabled=True)
        s.add(zone)
        await s.flush()
        s.add_all([RoutingDomain(zone_id=zone.id, name="example.com"),
                   DestinationAddress(account_id=acct.id, email="team@example.org",
                                      verified_at=datetime.now(UTC))])
        for to in ("recipient@example.com", "support@example.com"):
            s.add(RoutingRule(zone_id=zone.id, name=to, matchers=[
                {"type": "literal", "field": "to", "value": to}],
                actions=[{"type": "worker", "value": ["support"]}]))
    await db.close()


def _config(db_url: str) -> str:
    return f"""
database:
  url: "{db_url}"
handlers:
  registry:
    - name: support
      target: {EXAMPLES / "support.py"}
      vars: ["FORWARD_TO=team@example.org"]
  dev_endpoint:
    enabled: true
"""


async def test_mta_simulate_prints_the_actions(db_url, tmp_path):
    await _seed(db_url)
    cfg = tmp_path / "mta.yaml"
    cfg.write_text(_config(db_url))
    eml = tmp_path / "message.eml"
    eml.write_text(SAMPLE)

    def run(to: str) -> subprocess.CompletedProcess:
        # Authentication results given (no DNS here): SPF passes, as from the sender's MX.
        return subprocess.run([sys.executable, "-m", "mta", "--config", str(cfg), "simulate",
                               "--from", "sender@example.com", "--to", to, "--spf", "pass",
                               "--dkim", "none", "--dmarc", "pass", "--arc", "none", str(eml)],
                              capture_output=True, text=True, timeout=60)

    out = run("recipient@example.com")
    assert out.returncode == 0, out.stderr
    assert "rule: recipient@example.com (exact)" in out.stdout
    assert '- forward [handler support] {"to": "team@example.org"' in out.stdout
    assert "SMTP reply: 250" in out.stdout and "nothing was delivered" in out.stdout
    assert "policy: accept (accepted)" in out.stdout
    assert "(given: arc, dkim, dmarc, spf)" in out.stdout
    out = run("support@example.com")
    assert out.returncode == 0, out.stderr
    assert "reply from <support@example.com> to <sender@example.com>" in out.stdout
    assert "  | In-Reply-To: <6114391943504294873000@ZSH-GHOSTTY>" in out.stdout
    assert "  | Content-Type: multipart/alternative;" in out.stdout
    eml.write_text(SAMPLE.replace("Message-ID: <6114391943504294873000@ZSH-GHOSTTY>\n", ""))
    out = run("recipient@example.com")
    assert out.returncode == 2 and "Message-ID" in out.stderr


async def test_dev_endpoint_only_when_enabled(db_url, dns_server):
    from mta.api.app import build_app
    from mta.dnscache import DnsResolver
    from mta.node import NodeContext

    await _seed(db_url)
    settings = settings_from_text(_config(db_url))
    db = Database(db_url, pool_size=2)
    ctx = NodeContext(settings=settings, db=db, resolver=DnsResolver.from_settings(
        settings.dns), node_id="t")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(ctx)),
                                     base_url="http://t") as c:
            r = await c.post("/cdn-cgi/handler/email", content=SAMPLE.encode(),
                             params={"from": "sender@example.com",
                                     "to": "recipient@example.com"})
            assert r.status_code == 200, r.text
            result = r.json()["result"]
            assert result["actions"][0]["type"] == "forward"
            assert result["actions"][0]["to"] == "team@example.org"
            assert result["smtp_reply"].startswith("250")
            r = await c.post("/cdn-cgi/handler/email", content=b"Subject: x\r\n\r\nhi",
                             params={"from": "a@b.c", "to": "recipient@example.com"})
            assert r.status_code == 400
        settings.handlers.dev_endpoint.enabled = False
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(ctx)),
                                     base_url="http://t") as c:
            r = await c.post("/cdn-cgi/handler/email", content=SAMPLE.encode(),
                             params={"from": "sender@example.com",
                                     "to": "recipient@example.com"})
            assert r.status_code in (404, 405)
    finally:
        await db.close()
