"""The webhooks admin API: the envelope and error rules of every admin resource, the
secret shown once, tokens and accounts kept apart, and `test` against a real receiver."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from mta.webhooks.signature import verify
from tests.harness.http_receiver import WebhookReceiver
from tests.harness.node import free_port

ADMIN = "account:admin"


@pytest.fixture
def receiver():
    r = WebhookReceiver().start()
    yield r
    r.stop()


def test_create_list_get_delete_and_the_secret_shown_once(admin, receiver):
    c = admin.http(ADMIN)
    path = f"/accounts/{admin.account_id}/email/webhooks"
    r = c.post(path, json={"url": receiver.url, "event_types": ["bounced", "sent"],
                           "description": "crm"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["errors"] == []
    made = body["result"]
    assert made["secret"].startswith("whsec_") and len(made["secret"]) > 40
    assert made["event_types"] == ["sent", "bounced"] and made["enabled"] is True

    listed = c.get(path).json()
    assert [w["id"] for w in listed["result"]] == [made["id"]]
    assert listed["result_info"]["total_count"] == 1
    one = c.get(f"{path}/{made['id']}").json()["result"]
    assert "secret" not in one and "secret" not in listed["result"][0]
    assert one["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0,
                                 "last_attempt_at": None, "last_status_code": None,
                                 "last_error": None}

    tested = c.post(f"{path}/{made['id']}/test").json()["result"]
    assert tested["ok"] is True and tested["status_code"] == 200
    [got] = receiver.received
    assert got.event["type"] == "test" and got.event["account_id"] == admin.account_id
    assert verify(made["secret"], got.headers, got.body)

    assert c.get(f"{path}/{made['id']}/deliveries").json()["result"] == []
    assert c.delete(f"{path}/{made['id']}").json()["result"] == {"id": made["id"]}
    assert c.get(f"{path}/{made['id']}").status_code == 404
    audit = admin.cli("audit", "list", "--json")
    assert audit.count('"webhook"') >= 2


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/x",      # clear text off the host
    "http://10.0.0.1/x",
    "ftp://127.0.0.1/x",
    "https://user:pw@hooks.example.com/x",
    "https:///nohost",
    "not a url",
])
def test_unsafe_or_invalid_urls_are_refused(admin, url):
    c = admin.http(ADMIN)
    r = c.post(f"/accounts/{admin.account_id}/email/webhooks", json={"url": url})
    assert r.status_code == 400, r.text
    err = r.json()["errors"][0]
    assert err["code"] == 10001 and err["source"] == {"pointer": "/url"}


def test_unknown_event_types_are_refused(admin):
    r = admin.http(ADMIN).post(f"/accounts/{admin.account_id}/email/webhooks",
                               json={"url": "https://hooks.example.com/x",
                                     "event_types": ["delivered", "opened"]})
    assert r.status_code == 400 and "opened" in r.json()["errors"][0]["detail"]


def test_tokens_need_account_admin_and_their_own_account(admin, receiver):
    path = f"/accounts/{admin.account_id}/email/webhooks"
    assert admin.http("email_sending:edit", "analytics:read").get(path).status_code == 403
    made = admin.http(ADMIN).post(path, json={"url": receiver.url}).json()["result"]
    other = admin.cli("accounts", "create", "other").strip()
    theirs = admin.http(ADMIN)  # a token of acme on other's path
    assert theirs.get(f"/accounts/{other}/email/webhooks").status_code == 403
    other_token = admin.token(ADMIN, account=other)
    c = httpx.Client(base_url=admin.api_url, timeout=10,
                     headers={"Authorization": f"Bearer {other_token}"})
    # other's token does not see acme's endpoint through its own path either.
    assert c.get(f"/accounts/{other}/email/webhooks/{made['id']}").status_code == 404
    assert c.get(f"/accounts/{other}/email/webhooks").json()["result"] == []


def test_test_reports_a_dead_endpoint(admin):
    c = admin.http(ADMIN)
    path = f"/accounts/{admin.account_id}/email/webhooks"
    made = c.post(path, json={"url": f"http://127.0.0.1:{free_port()}/x"}).json()["result"]
    r = c.post(f"{path}/{made['id']}/test").json()["result"]
    assert r["ok"] is False and r["status_code"] is None and "Connect" in r["error"]
    out = admin.cli("webhooks", "test", made["id"], expect=1)
    assert "failed" in out
    # The CLI sees the endpoint too, and deletes it.
    listed = json.loads(admin.cli("webhooks", "list", "--account", "acme", "--json"))
    assert [w["id"] for w in listed] == [made["id"]] and "secret" not in listed[0]
    assert "deleted webhook" in admin.cli("webhooks", "delete", made["id"])
    assert c.get(f"{path}/{made['id']}").status_code == 404
    admin.cli("webhooks", "delete", made["id"], expect=1)  # gone: says so, exit 1
    admin.cli("webhooks", "create", "http://hooks.example.com/x", "--account", "acme",
              expect=2)  # clear text off the host: a usage error


def test_a_tenant_cannot_point_the_node_at_its_own_network(make_admin, dns_server):
    """Without webhooks.allow_private_targets, an address literal of our own network is
    refused at creation, and a name resolving to one is refused at `test` (and at every
    POST) before any connection: an account:admin token cannot probe ports."""
    from tests.reports.test_tlsrpt_send import Listener

    admin = make_admin(webhooks={"allow_private_targets": False})
    c = admin.http(ADMIN)
    path = f"/accounts/{admin.account_id}/email/webhooks"
    listener = Listener()
    loop = asyncio.new_event_loop()
    try:
        port = loop.run_until_complete(listener.start("127.0.0.1"))
        for url in (f"http://127.0.0.1:{port}/x", f"https://127.0.0.1:{port}/x",
                    "https://10.0.0.1/x", f"https://[::1]:{port}/x",
                    f"https://[::ffff:127.0.0.1]:{port}/x"):
            r = c.post(path, json={"url": url})
            assert r.status_code == 400, (url, r.text)
            assert r.json()["errors"][0]["source"] == {"pointer": "/url"}
        dns_server.add("inside.test", "A", "127.0.0.1")
        made = c.post(path, json={"url": f"https://inside.test:{port}/x"}).json()["result"]
        r = c.post(f"{path}/{made['id']}/test").json()["result"]
        loop.run_until_complete(asyncio.sleep(0.2))  # a connection would be counted
        assert r["ok"] is False and r["status_code"] is None
        assert r["error"].startswith("refused:") and listener.connections == 0
    finally:
        listener.close()
        loop.close()


def test_endpoints_per_account_are_capped(make_admin):
    admin = make_admin(webhooks={"max_endpoints_per_account": 2})
    c = admin.http(ADMIN)
    path = f"/accounts/{admin.account_id}/email/webhooks"
    for i in range(2):
        assert c.post(path, json={"url": f"https://hooks{i}.example.com/x"}).status_code == 200
    r = c.post(path, json={"url": "https://hooks9.example.com/x"})
    assert r.status_code == 400
    err = r.json()["errors"][0]
    assert err["code"] == 10001 and "max_endpoints_per_account" in err["message"] + str(err)
    admin.cli("webhooks", "create", "https://hooks9.example.com/x",
              "--account", admin.account_id, expect=2)  # the CLI holds the cap too
    assert len(c.get(path).json()["result"]) == 2
