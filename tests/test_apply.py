"""`mta apply` / `mta export` as an operator runs them: the real CLI in a subprocess,
on a real migrated PostgreSQL database, checked through the database itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from mta.store.models import (
    AuditEntry,
    DestinationAddress,
    RoutingDomain,
    RoutingRule,
    SendingDomain,
    Zone,
)

ROUTING = """\
version: 1
accounts:
  - account: acme
    destination_addresses:
      - ops@dest.test
      - Boss@Dest.test
    zones:
      - name: example.test
        routing: true
        subaddressing: false
        subdomains: [lists.example.test]
        catch_all:
          enabled: true
          forward: [ops@dest.test]
        rules:
          - name: ops
            to: ops@example.test
            forward: [ops@dest.test, boss@dest.test]
            priority: 10
          - name: noreply
            to: noreply@lists.example.test
            drop: true
          - name: hooks
            to: hooks@example.test
            worker: [my_handler]
            enabled: false
        sending_domains:
          - name: example.test
"""


def mta(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def ok(config: Path, *args: str) -> str:
    done = mta(config, *args)
    assert done.returncode == 0, f"mta {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def config(tmp_path, db_url) -> Path:
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump({
        "node": {"hostname": "mx.node.test"}, "state_dir": str(tmp_path / "state"),
        "database": {"url": db_url, "pool_size": 2}, "secret_key": "test-secret-key",
        "logging": {"level": "warning", "format": "text"}}))
    ok(path, "accounts", "create", "acme")
    return path


def write(tmp_path: Path, text: str, name: str = "routing.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def audit_rows(db) -> list[AuditEntry]:
    async with db.session() as s:
        return list((await s.execute(select(AuditEntry).where(
            AuditEntry.resource_type != "account").order_by(AuditEntry.id))).scalars())


async def count(db, model) -> int:
    async with db.session() as s:
        return (await s.execute(select(func.count()).select_from(model))).scalar_one()


async def test_apply_creates_everything_then_reports_no_change(db, config, tmp_path):
    routing = write(tmp_path, ROUTING)
    first = ok(config, "apply", str(routing))
    assert "+ create zone: zone example.test" in first
    assert "+ create routing_rule: zone example.test rule ops" in first
    assert "+ create sending_subdomain: sending domain example.test" in first
    # 2 addresses, zone, subdomain, sending domain, catch-all, 3 rules
    assert first.count("+ create") == 9
    async with db.session() as s:
        zone = (await s.execute(select(Zone))).scalar_one()
        assert (zone.routing_enabled, zone.support_subaddress) == (True, False)
        rules = {r.name: r for r in (await s.execute(select(RoutingRule))).scalars()}
        assert rules["ops"].priority == 10
        assert rules["ops"].actions == [{"type": "forward",
                                         "value": ["ops@dest.test", "boss@dest.test"]}]
        assert rules["hooks"].enabled is False
        assert rules[""].is_catch_all and rules[""].enabled
        emails = set((await s.execute(select(DestinationAddress.email))).scalars())
        assert emails == {"ops@dest.test", "boss@dest.test"}
        domains = set((await s.execute(select(RoutingDomain.name))).scalars())
        assert domains == {"example.test", "lists.example.test"}
        assert (await s.execute(select(SendingDomain.name))).scalar_one() == "example.test"
    rows = await audit_rows(db)
    assert len(rows) == 9 and all(r.actor.startswith("cli:") for r in rows)

    second = ok(config, "apply", str(routing))
    assert second.strip() == "no changes"
    assert len(await audit_rows(db)) == 9


async def test_one_rule_edited_is_one_update_and_one_audit_entry(db, config, tmp_path):
    ok(config, "apply", str(write(tmp_path, ROUTING)))
    before = await audit_rows(db)
    edited = ROUTING.replace("priority: 10", "priority: 3")
    out = ok(config, "apply", str(write(tmp_path, edited, "edited.yaml")))
    assert out.splitlines() == ["~ update routing_rule: zone example.test rule ops",
                                "    priority: 10 -> 3",
                                "1 change: 0 create, 1 update, 0 delete"]
    after = await audit_rows(db)
    assert len(after) == len(before) + 1
    entry = after[-1]
    assert (entry.action, entry.resource_type) == ("update", "routing_rule")
    assert (entry.before["priority"], entry.after["priority"]) == (10, 3)
    assert entry.actor.startswith("cli:")


async def test_dry_run_prints_the_diff_and_writes_nothing(db, config, tmp_path):
    routing = write(tmp_path, ROUTING)
    dry = ok(config, "apply", "--dry-run", str(routing))
    assert "+ create routing_rule: zone example.test rule ops" in dry
    assert "dry run: nothing was written" in dry
    for model in (Zone, RoutingRule, DestinationAddress, SendingDomain):
        assert await count(db, model) == 0
    assert await audit_rows(db) == []
    real = ok(config, "apply", str(routing))
    assert real.splitlines()[:-2] == dry.splitlines()[:-2]  # same diff, less the footers


async def test_prune_removes_an_undeclared_rule_and_only_with_prune(db, config, tmp_path):
    ok(config, "apply", str(write(tmp_path, ROUTING)))
    without_hooks = ROUTING.split("          - name: hooks")[0] + (
        "        sending_domains:\n          - name: example.test\n")
    path = write(tmp_path, without_hooks, "smaller.yaml")
    assert ok(config, "apply", str(path)).strip() == "no changes"
    assert await count(db, RoutingRule) == 4
    out = ok(config, "apply", "--prune", str(path))
    assert out.splitlines() == ["- delete routing_rule: zone example.test rule hooks",
                                "1 change: 0 create, 0 update, 1 delete"]
    async with db.session() as s:
        names = set((await s.execute(select(RoutingRule.name))).scalars())
    assert names == {"", "ops", "noreply"}
    assert (await audit_rows(db))[-1].action == "delete"


async def test_export_then_apply_is_a_no_op(db, config, tmp_path):
    ok(config, "apply", str(write(tmp_path, ROUTING)))
    # Rules the API can make but names cannot identify: unnamed, and two of one name.
    async with db.session() as s:
        zone = (await s.execute(select(Zone))).scalar_one()
        for name, to in (("", "a@example.test"), ("dup", "b@example.test"),
                         ("dup", "c@example.test")):
            s.add(RoutingRule(zone_id=zone.id, name=name, priority=50, enabled=True,
                              matchers=[{"type": "literal", "field": "to", "value": to}],
                              actions=[{"type": "drop"}, {"type": "worker", "value": ["w"]}]))
    exported = ok(config, "export", "--account", "acme")
    doc = yaml.safe_load(exported)
    rules = doc["accounts"][0]["zones"][0]["rules"]
    assert sorted(r["name"] for r in rules) == ["", "dup", "dup", "hooks", "noreply", "ops"]
    assert all(("id" in r) == (r["name"] in ("", "dup")) for r in rules)
    assert [r["priority"] for r in rules] == sorted(r["priority"] for r in rules)
    path = write(tmp_path, exported, "exported.yaml")
    assert ok(config, "apply", str(path)).strip() == "no changes"
    assert ok(config, "apply", "--prune", str(path)).strip() == "no changes"
    assert ok(config, "export") == exported  # one account: the same document


PATTERNS = ROUTING.replace("""          - name: hooks
""", """          - name: sales
            wildcard: Sales-*@Example.test
            forward: [ops@dest.test]
            priority: 5
          - name: tickets
            regex: 'ticket-[0-9]{1,8}@(lists\\.)?example\\.test'
            worker: [tickets]
            priority: 7
          - name: hooks
""")


async def test_pattern_rules_apply_and_export_round_trip(db, config, tmp_path):
    out = ok(config, "apply", str(write(tmp_path, PATTERNS)))
    assert "create routing_rule: zone example.test rule sales" in out, out
    async with db.session() as s:
        rows = {r.name: r for r in (await s.execute(select(RoutingRule))).scalars()}
    assert (rows["sales"].pattern_type, rows["sales"].pattern, rows["sales"].matchers) == (
        "wildcard", "sales-*@example.test", [])
    assert rows["tickets"].pattern == r"ticket-[0-9]{1,8}@(lists\.)?example\.test"
    exported = ok(config, "export", "--account", "acme")
    rules = {r["name"]: r for r in yaml.safe_load(exported)["accounts"][0]["zones"][0]["rules"]}
    assert rules["sales"] == {"name": "sales", "wildcard": "sales-*@example.test",
                              "forward": ["ops@dest.test"], "priority": 5, "enabled": True}
    assert rules["tickets"]["regex"] == r"ticket-[0-9]{1,8}@(lists\.)?example\.test"
    assert "to" not in rules["tickets"] and "matchers" not in rules["tickets"]
    path = write(tmp_path, exported, "exported.yaml")
    assert ok(config, "apply", str(path)).strip() == "no changes"
    assert ok(config, "apply", str(write(tmp_path, PATTERNS))).strip() == "no changes"
    assert ok(config, "export") == exported
    # A changed pattern is an update of the same rule, shown in the diff.
    changed = PATTERNS.replace("Sales-*@", "sales-?-*@")
    out = ok(config, "apply", str(write(tmp_path, changed, "changed.yaml")))
    assert "update routing_rule: zone example.test rule sales" in out
    assert "sales-?-*@example.test" in out, out


def line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


@pytest.mark.parametrize("old, new, key, words, nth", [
    ("rules:", "rulez:", "accounts[0].zones[0].rulez", "unknown key", 1),
    ("to: noreply@lists.example.test", "to: noreply@elsewhere.test",
     "accounts[0].zones[0].rules[1].to", "not an address of zone example.test", 1),
    ("forward: [ops@dest.test, boss@dest.test]", "forward: [ops@dest.test, nobody@dest.test]",
     "accounts[0].zones[0].rules[0].forward", "nobody@dest.test is not a destination address",
     1),
    ("priority: 10", "priority: high", "accounts[0].zones[0].rules[0].priority",
     "expected an integer", 1),
    ("account: acme", "account: nobody", "accounts[0].account", "no single account", 1),
    ("- name: noreply", "- name: noreply\n            worker: [w]",
     "accounts[0].zones[0].rules[1]", "exactly one of forward, worker, drop or actions", 1),
    ("- name: example.test", "- name: example.test\n      - name: example.test",
     "accounts[0].zones[1].name", "zone example.test is declared twice", 2),
    # pattern rules (issue 14): refused with the API's reasons, at the key and line
    ("to: noreply@lists.example.test", "regex: '(a+)\\1@example\\.test'",
     "accounts[0].zones[0].rules[1].regex", "not a supported regular expression", 1),
    ("to: noreply@lists.example.test", f"regex: '{'x' * 300}'",
     "accounts[0].zones[0].rules[1].regex", "the limit is 256", 1),
    ("to: noreply@lists.example.test", "wildcard: 'no-*@elsewhere.test'",
     "accounts[0].zones[0].rules[1].wildcard", "not a domain of zone example.test", 1),
    ("- name: noreply", "- name: noreply\n            wildcard: 'b-*@example.test'",
     "accounts[0].zones[0].rules[1]", "exactly one of to, matchers, wildcard or regex", 1),
])
async def test_validation_errors_name_the_key_and_line(db, config, tmp_path, old, new, key,
                                                       words, nth):
    assert old in ROUTING
    text = ROUTING.replace(old, new, 1)
    line = line_of(text, new.split("\n")[0], nth)
    path = write(tmp_path, text)
    done = mta(config, "apply", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr, done.stderr
    assert f"{path}:{line}: {key}: " in done.stderr, done.stderr
    assert await count(db, Zone) == 0 and await audit_rows(db) == []


async def test_limits_of_the_api_apply_to_yaml(db, config, tmp_path):
    config.write_text(config.read_text() + "limits: {rules_per_zone: 2}\n")
    done = mta(config, "apply", str(write(tmp_path, ROUTING)))
    assert done.returncode == 2
    where = f":{line_of(ROUTING, 'rules:')}: accounts[0].zones[0].rules: "
    assert "rules_per_zone" in done.stderr and where in done.stderr, done.stderr


def test_the_example_file_is_valid():
    from mta.declarative import load_document

    example = Path(__file__).resolve().parents[1] / "config" / "routing.example.yaml"
    loaded = load_document(example)
    assert loaded.doc.accounts and loaded.doc.accounts[0].zones[0].rules


def test_prune_refuses_rules_forwarding_to_addresses_it_would_delete(config, tmp_path):
    ok(config, "apply", str(write(tmp_path, ROUTING)))
    text = ROUTING.replace("      - Boss@Dest.test\n", "")
    done = mta(config, "apply", "--prune", str(write(tmp_path, text, "pruned.yaml")))
    assert done.returncode == 2
    assert "rules[0].forward: boss@dest.test is not in destination_addresses" in done.stderr
    # without the rule that needs it, the address goes (and is audited)
    text = text.replace("forward: [ops@dest.test, boss@dest.test]", "forward: [ops@dest.test]")
    out = ok(config, "apply", "--prune", str(write(tmp_path, text, "pruned.yaml")))
    assert "- delete destination_address: acme address boss@dest.test" in out
