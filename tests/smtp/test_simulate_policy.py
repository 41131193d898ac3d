"""`mta simulate` runs the MX's checks and policy: on a message whose SPF fails (and that
has no DKIM signature) it gives the very reply the real MX gives, and says which check
decided; given results are used instead of DNS."""

from __future__ import annotations

import json
import smtplib
import subprocess

from tests.harness.cli import ROUTING, run_mta

MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: hello@example.test\r\n"
           b"Subject: spf fail\r\nMessage-ID: <sim-1@sender.test>\r\n\r\nhello\r\n")


def mta(cfg, *args: str) -> subprocess.CompletedProcess:
    return run_mta(*args, config=cfg)


def test_simulate_agrees_with_the_mx_on_an_spf_failure(make_node, dns_server, db_url,
                                                       tmp_path):
    dns_server.add_txt("sender.test", "v=spf1 ip4:192.0.2.1 -all")
    dns_server.add_txt("_dmarc.sender.test", "v=DMARC1; p=none")
    node = make_node({"database": {"url": db_url}})
    cfg = node.config_path
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    for args in (["accounts", "create", "acme"], ["apply", str(routing)],
                 ["addresses", "verify", "--email", "you@inbox.test"]):
        assert mta(cfg, *args).returncode == 0

    with smtplib.SMTP("127.0.0.1", node.port("mx"), timeout=30) as client:
        client.ehlo("client.sender.test")
        assert client.mail("alice@sender.test")[0] == 250
        assert client.rcpt("hello@example.test")[0] == 250
        code, text = client.data(MESSAGE)
    mx_reply = f"{code} {text.decode()}"
    assert mx_reply.startswith("550 5.7.26")

    eml = tmp_path / "message.eml"
    eml.write_bytes(MESSAGE)
    sim = mta(cfg, "simulate", "--from", "alice@sender.test", "--to", "hello@example.test",
              "--ip", "127.0.0.1", "--helo", "client.sender.test", str(eml), "--json")
    assert sim.returncode == 1, sim.stderr
    result = json.loads(sim.stdout)
    assert result["smtp_reply"] == mx_reply
    assert result["authentication"]["spf"] == "fail"
    assert result["authentication"]["dkim"] == ["none"]
    assert result["policy"]["reason"] == "not_authenticated"
    assert result["policy"]["decided_by"].startswith("SPF and DKIM")
    assert result["actions"] == []

    text = mta(cfg, "simulate", "--from", "alice@sender.test", "--to", "hello@example.test",
               str(eml))
    assert "authentication: spf=fail dkim=none" in text.stdout
    assert "decided by SPF and DKIM" in text.stdout and text.returncode == 1

    # From the address SPF allows, the same message passes; given results skip DNS.
    ok = mta(cfg, "simulate", "--from", "alice@sender.test", "--to", "hello@example.test",
             "--ip", "192.0.2.1", str(eml), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["smtp_reply"].startswith("250")
    given = json.loads(mta(cfg, "simulate", "--from", "alice@sender.test", "--to",
                           "hello@example.test", "--spf", "pass", "--dkim", "none",
                           "--dmarc", "fail", "--arc", "none", str(eml), "--json").stdout)
    assert given["policy"]["reason"] == "dmarc_reject"
    assert given["smtp_reply"].startswith("550 5.7.1")
