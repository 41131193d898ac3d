"""The audit log API (GET /accounts/{id}/audit_logs) and `mta audit list`: changes made
through the real API and CLI, read back with their actor, resource and before/after."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

READ = "analytics:read"
EDIT = ("email_routing:read", "email_routing:edit")


@pytest.fixture
def changed(admin):
    """A destination address, a rule created then edited, all through the API."""
    c = admin.http(*EDIT)
    zone = f"/zones/{admin.zone_id}/email/routing"
    r = c.post(f"/accounts/{admin.account_id}/email/routing/addresses",
               json={"email": "ops@dest.test"})
    assert r.status_code == 200, r.text
    address_id = r.json()["result"]["id"]
    rule = {"name": "ops", "matchers": [{"type": "literal", "field": "to",
                                         "value": "ops@example.test"}],
            "actions": [{"type": "forward", "value": ["ops@dest.test"]}]}
    r = c.post(f"{zone}/rules", json=rule)
    assert r.status_code == 200, r.text
    rule_id = r.json()["result"]["id"]
    r = c.put(f"{zone}/rules/{rule_id}", json={**rule, "name": "operations"})
    assert r.status_code == 200, r.text
    return admin, rule_id, address_id


def _entries(admin, **params) -> dict:
    r = admin.http(READ).get(f"/accounts/{admin.account_id}/audit_logs", params=params)
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True
    return r.json()


def test_audit_log_lists_changes_with_actor_and_before_after(changed):
    admin, rule_id, address_id = changed
    body = _entries(admin)
    rows = body["result"]
    mine = [e for e in rows if e["resource"]["type"] in ("routing_rule", "destination_address")]
    # Newest first: the rule update, the rule create, the address create.
    assert [(e["action"]["type"], e["resource"]["type"]) for e in mine] == [
        ("update", "routing_rule"), ("create", "routing_rule"),
        ("create", "destination_address")]
    update = mine[0]
    assert update["resource"]["id"] == rule_id
    assert update["oldValueJson"]["name"] == "ops"
    assert update["newValueJson"]["name"] == "operations"
    assert update["actor"]["type"] == "token" and update["interface"] == "API"
    assert update["owner"]["id"] == admin.account_id
    token_id = update["actor"]["id"]
    assert mine[2]["oldValueJson"] is None
    assert mine[2]["newValueJson"]["email"] == "ops@dest.test"
    when = datetime.fromisoformat(update["when"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)
    # The tokens the fixture made through the CLI are there too, by a cli: actor.
    cli = [e for e in rows if e["resource"]["type"] == "api_token"]
    assert cli and all(e["actor"]["type"] == "cli" and e["interface"] == "CLI" for e in cli)

    def kinds(**params) -> list[tuple[str, str]]:
        return [(e["action"]["type"], e["resource"]["type"])
                for e in _entries(admin, **params)["result"]]

    assert kinds(resource_type="routing_rule") == [("update", "routing_rule"),
                                                   ("create", "routing_rule")]
    assert kinds(resource_id=address_id) == [("create", "destination_address")]
    assert kinds(**{"action.type": "update"}) == [("update", "routing_rule")]
    assert len(kinds(actor=token_id)) == 3
    assert kinds(actor=f"token:{token_id}") == kinds(actor=token_id)
    by_cli = _entries(admin, actor=cli[0]["actor"]["id"])["result"]
    assert by_cli and all(e["actor"]["type"] == "cli" for e in by_cli)
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert kinds(since=later) == []
    assert kinds(before=(datetime.now(UTC) - timedelta(days=1)).isoformat()) == []
    assert len(kinds(direction="asc")) == body["result_info"]["total_count"]
    assert kinds(direction="asc")[0] == kinds()[-1]


def test_audit_log_pagination_and_permissions(changed):
    admin, _, _ = changed
    total = _entries(admin)["result_info"]["total_count"]
    assert total >= 4
    pages = [_entries(admin, per_page=2, page=p) for p in (1, 2, 3)]
    assert pages[0]["result_info"] == {**pages[0]["result_info"], "page": 1, "per_page": 2,
                                       "count": 2, "total_count": total}
    ids = [e["id"] for p in pages for e in p["result"]]
    assert len(set(ids)) == len(ids) == min(total, 6)
    base = f"/accounts/{admin.account_id}/audit_logs"
    assert admin.http(*EDIT).get(base).status_code == 403
    assert admin.http().get(base).status_code == 401
    r = admin.http(READ).get(base, params={"per_page": 5000})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == 10001
    # Another account's log is not readable with this account's token, and its changes
    # do not show in this one.
    other = admin.cli("accounts", "create", "globex").strip()
    admin.cli("zones", "create", "--account", other, "globex.test")
    r = admin.http(READ).get(f"/accounts/{other}/audit_logs")
    assert r.status_code == 403
    token = admin.token(READ, account=other)
    theirs = httpx.get(f"{admin.api_url}/accounts/{other}/audit_logs", timeout=10,
                       headers={"Authorization": f"Bearer {token}"}).json()
    assert theirs["result"] and all(e["owner"]["id"] == other for e in theirs["result"])
    assert not {e["id"] for e in theirs["result"]} & set(ids)


def test_audit_cli(changed):
    admin, rule_id, _ = changed
    out = admin.cli("audit", "list", "--account", "acme", "--resource-type", "routing_rule")
    assert "update" in out and rule_id in out and "'ops' -> 'operations'" in out
    data = json.loads(admin.cli("audit", "list", "--json", "--since", "1h"))
    assert data["total"] >= 4
    assert {e["resource"]["type"] for e in data["entries"]} >= {
        "routing_rule", "destination_address", "api_token"}
    assert "no audit entries" in admin.cli("audit", "list", "--until", "2000-01-01")
    out, err = admin.cli_streams("audit", "list", "--account", "nobody", expect=1)
    assert out == "" and "no single account" in err
