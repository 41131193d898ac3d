"""Pattern rules end to end (issue 14): a real `mta serve` node, rules made through the
official SDK (the `pattern` key travels as `extra_body`, and strict response validation
still passes), mail over real SMTP forwarded to a real sink through the smart host, and
`mta simulate` agreeing with the MX."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from email import message_from_bytes

import httpx
import pytest
from cloudflare import BadRequestError, Cloudflare

DESTS = ("eu@inbox.test", "sales@inbox.test", "tickets@inbox.test", "evil@inbox.test")


def _mta(config_path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=60, check=check)


def _forward(dest: str) -> list[dict]:
    return [{"type": "forward", "value": [dest]}]


@pytest.fixture
def deployment(make_node, make_sink, db_url, tmp_path):
    sink = make_sink("127.0.0.2")
    node = make_node({
        "database": {"url": db_url},
        "inbound": {"recipient_cache_ttl": "0s", "policy": {"monitor_only": True}},
        "delivery": {"smart_host": {"host": "127.0.0.2", "port": sink.port, "tls": "none"}},
    })
    cfg = node.config_path
    account = _mta(cfg, "accounts", "create", "acme").stdout.strip()
    zone = _mta(cfg, "zones", "create", "--account", account, "example.test").stdout.strip()
    token = _mta(cfg, "tokens", "create", "--account", account, "--name", "ops",
                 "--permission", "email_routing:read",
                 "--permission", "email_routing:edit").stdout.strip()
    api = f"http://127.0.0.1:{node.port('http')}/client/v4"
    cf = Cloudflare(api_token=token, base_url=api, max_retries=0, timeout=10,
                    _strict_response_validation=True)
    cf.email_routing.dns.create(zone_id=zone)
    for dest in DESTS:
        cf.email_routing.addresses.create(account_id=account, email=dest)
        _mta(cfg, "addresses", "verify", "--email", dest)
    http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"},
                        timeout=10)
    yield node, sink, cf, http, zone
    http.close()


def _send(node, rcpt: str) -> tuple[int, bytes]:
    """One message to `rcpt` on the node's MX; the RCPT reply (the DATA one when 250)."""
    with smtplib.SMTP("127.0.0.1", node.port("mx"), timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("alice@sender.test")
        code, text = smtp.rcpt(rcpt)
        if code != 250:
            return code, text
        msg = (f"From: alice@sender.test\r\nTo: {rcpt}\r\nSubject: for {rcpt}\r\n"
               f"Message-ID: <{time.monotonic_ns()}@sender.test>\r\n\r\nhello\r\n")
        return smtp.data(msg.encode())


def _routed(sink, count: int) -> dict[str, list[str]]:
    """Recipient (from the test's Subject) -> where the forward went; the destinations'
    verification mails, which reach the same sink, are left out."""
    deadline = time.monotonic() + 30
    while True:
        routed = {}
        for m in list(sink.messages):
            subject = message_from_bytes(m.data)["Subject"] or ""
            if subject.startswith("for "):
                routed[subject.removeprefix("for ")] = m.rcpt_tos
        if len(routed) >= count or time.monotonic() > deadline:
            return routed
        time.sleep(0.1)


def test_pattern_rules_route_in_priority_order_with_literal_rules(deployment, tmp_path):
    node, sink, cf, http, zone = deployment
    rules = cf.email_routing.rules
    sales = rules.create(zone_id=zone, name="sales", priority=10, matchers=[],
                         actions=_forward("sales@inbox.test"),
                         extra_body={"pattern": {"type": "wildcard",
                                                 "value": "Sales-*@Example.test"}})
    # The SDK parses the rule strictly; the extension is an extra key it keeps.
    assert sales.matchers == [] and sales.priority == 10
    assert sales.to_dict()["pattern"] == {"type": "wildcard", "field": "to",
                                          "value": "sales-*@example.test"}
    rules.create(zone_id=zone, name="eu", priority=5, actions=_forward("eu@inbox.test"),
                 matchers=[{"type": "literal", "field": "to", "value": "sales-eu@example.test"}])
    rules.create(zone_id=zone, name="us-late", priority=20, actions=_forward("eu@inbox.test"),
                 matchers=[{"type": "literal", "field": "to", "value": "sales-us@example.test"}])
    tickets = rules.create(zone_id=zone, name="tickets", priority=10, matchers=[],
                           actions=_forward("tickets@inbox.test"),
                           extra_body={"pattern": {"type": "regex",
                                                   "value": r"ticket-[0-9]{1,8}@example\.test"}})
    listed = list(rules.list(zone_id=zone))  # strict validation of every item
    assert [r.name for r in listed] == ["eu", "sales", "tickets", "us-late"]
    assert [r.to_dict()["pattern"] is None for r in listed] == [True, False, False, True]

    expected = {
        "sales-eu@example.test": "eu@inbox.test",  # the literal rule of higher priority
        "sales-us@example.test": "sales@inbox.test",  # the pattern of higher priority
        "SALES-Asia@example.test": "sales@inbox.test",
        "ticket-42@example.test": "tickets@inbox.test",
        "ticket-42+urgent@example.test": "tickets@inbox.test",  # subaddressing, base matches
    }
    for rcpt in expected:
        code, text = _send(node, rcpt)
        assert code == 250, (rcpt, text)
    assert _routed(sink, len(expected)) == {rcpt: [dest] for rcpt, dest in expected.items()}
    # No rule and no catch-all: refused at RCPT.
    for rcpt in ("ticket-x@example.test", "presales-eu@example.test"):
        code, _ = _send(node, rcpt)
        assert code == 550, rcpt

    # `mta simulate` resolves a pattern-matched recipient as the MX did.
    eml = tmp_path / "m.eml"
    eml.write_text("From: alice@sender.test\nTo: x\nSubject: s\nMessage-ID: <s@sender.test>\n"
                   "\nhi\n")
    out = _mta(node.config_path, "simulate", "--from", "alice@sender.test",
               "--to", "sales-us@example.test", "--spf", "pass", "--dkim", "none",
               "--dmarc", "none", str(eml)).stdout
    assert "rule: sales (pattern)" in out and "sales@inbox.test" in out, out
    out = _mta(node.config_path, "simulate", "--from", "alice@sender.test",
               "--to", "sales-eu@example.test", "--spf", "pass", "--dkim", "none",
               "--dmarc", "none", str(eml)).stdout
    assert "rule: eu (exact)" in out, out

    # A full replacement (PUT) turns the pattern rule into a literal one and back.
    r = rules.update(tickets.id, zone_id=zone, name="tickets", actions=_forward(
        "tickets@inbox.test"), matchers=[{"type": "literal", "field": "to",
                                          "value": "ticket-1@example.test"}])
    assert r.to_dict()["pattern"] is None and len(r.matchers) == 1
    assert _send(node, "ticket-42@example.test")[0] == 550
    r = rules.update(tickets.id, zone_id=zone, name="tickets", matchers=[],
                     actions=_forward("tickets@inbox.test"),
                     extra_body={"pattern": {"type": "regex", "value": r"ticket-\d+@example\.test"}})
    assert r.to_dict()["pattern"]["value"] == r"ticket-\d+@example\.test"
    assert _send(node, "ticket-42@example.test")[0] == 250


def test_pathological_patterns_are_refused_or_bounded(deployment):
    node, sink, cf, http, zone = deployment
    url = f"/zones/{zone}/email/routing/rules"

    def create(pattern: dict, **extra) -> httpx.Response:
        return http.post(url, json={"name": "p", "matchers": [], "pattern": pattern,
                                    "actions": _forward("evil@inbox.test"), **extra})

    refused = [
        ({"type": "regex", "value": "a" * 257 + "@example.test"}, "E_PATTERN_TOO_LONG"),
        ({"type": "regex", "value": "[a-z]{1000}@example\\.test"}, "E_PATTERN_TOO_COMPLEX"),
        ({"type": "regex", "value": r"(a+)\1@example\.test"}, "E_PATTERN_INVALID"),
        ({"type": "regex", "value": r"(?=admin)\w+@example\.test"}, "E_PATTERN_INVALID"),
        ({"type": "wildcard", "value": "sales-*"}, "E_PATTERN_INVALID"),
        ({"type": "glob", "value": "sales-*@example.test"}, "E_PATTERN_INVALID"),
    ]
    for pattern, code in refused:
        r = create(pattern)
        assert r.status_code == 400, (pattern, r.text)
        error = r.json()["errors"][0]
        assert (error["code"], error["error_code"]) == (10001, code), r.text
        assert error["source"]["pointer"].startswith("/pattern/")
    # A wildcard on a domain outside the zone; matchers and a pattern together.
    r = create({"type": "wildcard", "value": "x-*@elsewhere.test"})
    assert r.status_code == 400 and "elsewhere.test" in r.json()["errors"][0]["detail"]
    r = http.post(url, json={"matchers": [{"type": "literal", "value": "a@example.test"}],
                             "pattern": {"type": "wildcard", "value": "b-*@example.test"},
                             "actions": _forward("evil@inbox.test")})
    assert r.status_code == 400 and r.json()["errors"][0]["source"]["pointer"] == "/matchers"
    # The SDK raises its 400 error, with our error code among the kept keys.
    with pytest.raises(BadRequestError) as err:
        cf.email_routing.rules.create(zone_id=zone, matchers=[],
                                      actions=_forward("evil@inbox.test"),
                                      extra_body={"pattern": {"type": "regex",
                                                              "value": "(a" * 200}})
    assert "E_PATTERN" in str(err.value.body)
    assert list(cf.email_routing.rules.list(zone_id=zone)) == []

    # The classic catastrophic-backtracking pattern is accepted: RE2 matches it in
    # linear time, so a hostile RCPT is answered at once (Python's re: 2^60 steps).
    r = create({"type": "regex", "value": "(a+)+$"})
    assert r.status_code == 200, r.text
    started = time.monotonic()
    code, _ = _send(node, "a" * 60 + "!@example.test")
    assert code == 550 and time.monotonic() - started < 5
