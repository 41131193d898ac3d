"""The activity log API and `mta events`: events recorded by the product's own functions
(mta.observe.events) in a real PostgreSQL, read over real HTTP; and end to end, one
forwarded and one rejected message over real SMTP, then the API shows both."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mta.observe.events import event_rows, record_events_now
from mta.store.db import Database
from mta.store.models import Zone
from tests.routing.world import world_fixture  # noqa: F401 - the `world` fixture
from tests.smtp.conftest import dkim_sign, make_message, smtp_send

READ = "analytics:read"
NOW = datetime.now(UTC).replace(microsecond=0)


def _run(coro):
    return asyncio.run(coro)


async def _record(db_url: str, rows_at: list[tuple[datetime, list]]) -> None:
    db = Database(db_url, pool_size=2)
    try:
        for ts, rows in rows_at:
            for row in rows:
                row["ts"] = ts
            assert await record_events_now(db, rows)
    finally:
        await db.close()


async def _other_zone(db_url: str, account_id: str) -> str:
    db = Database(db_url, pool_size=2)
    try:
        async with db.session() as s:
            zone = Zone(account_id=account_id, name="elsewhere.test")
            s.add(zone)
            await s.flush()
            return zone.id
    finally:
        await db.close()


@pytest.fixture
def seeded(admin, make_admin, db_url):
    """Events of the admin's account (example.test) at known times, plus noise."""
    acct, zone = admin.account_id, admin.zone_id
    other = admin.cli("accounts", "create", "globex").strip()
    other_zone = _run(_other_zone(db_url, other))
    rule = uuid.uuid4().hex
    auth_pass = {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none"}
    mine = {"account_id": acct, "zone_id": zone}
    _run(_record(db_url, [
        (NOW - timedelta(minutes=65), event_rows(
            direction="inbound", status="Forwarded", recipients=["user@example.test"],
            mail_from="alice@sender.test", subject="hello", auth=auth_pass,
            per_recipient={"user@example.test": {**mine, "rule_id": rule,
                                                 "action": "forward"}},
            details={"destination": "dest@inbox.test", "session_id": "s1"})),
        # An SMTP-time rejection: no account yet, only the recipient's domain.
        (NOW - timedelta(minutes=125), event_rows(
            direction="inbound", status="Rejected", recipients=["bob@example.test"],
            mail_from="mallory@bad.test", auth={"spf": "fail", "dkim": "none",
                                               "dmarc": "fail"},
            details={"reason": "spf_dkim_fail", "reply": "550 5.7.1 rejected"})),
        (NOW - timedelta(minutes=30), event_rows(
            direction="outbound", status="Sent", recipients=["x@gmail.test", "y@gmail.test"],
            mail_from="news@example.test", subject="news",
            per_recipient={r: mine for r in ("x@gmail.test", "y@gmail.test")},
            details={"source": "api", "message_id": "<abc@example.test>"})),
        (NOW - timedelta(minutes=10), event_rows(
            direction="outbound", status="Delivery failed", recipients=["y@gmail.test"],
            mail_from="news@example.test", per_recipient={"y@gmail.test": mine},
            details={"error_code": "hard_bounce", "reply": "550 5.1.1 no such user"})),
        (NOW - timedelta(days=3), event_rows(
            direction="inbound", status="Dropped", recipients=["old@example.test"],
            mail_from="a@b.test", per_recipient={"old@example.test": mine})),
        (NOW - timedelta(minutes=5), event_rows(
            direction="inbound", status="Forwarded", recipients=["z@elsewhere.test"],
            mail_from="alice@sender.test",
            per_recipient={"z@elsewhere.test": {"account_id": other,
                                                "zone_id": other_zone}})),
        (NOW - timedelta(minutes=6), event_rows(
            direction="inbound", status="Rejected", recipients=["q@elsewhere.test"],
            mail_from="mallory@bad.test")),
    ]))
    return admin, rule


def _get(client: httpx.Client, path: str, **params) -> dict:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["errors"] == []
    return body


def test_events_are_listed_newest_first_and_filtered(seeded):
    admin, rule = seeded
    c = admin.http(READ)
    base = f"/accounts/{admin.account_id}/email/activity"
    body = _get(c, base)
    rows = body["result"]
    # The last 24 hours of this account: not the 3-day-old event, not the other account's.
    assert [(r["status"], r["to"]) for r in rows] == [
        ("Delivery failed", "y@gmail.test"), ("Sent", "y@gmail.test"),
        ("Sent", "x@gmail.test"), ("Forwarded", "user@example.test"),
        ("Rejected", "bob@example.test")]
    assert body["result_info"]["total_count"] == 5
    fwd = next(r for r in rows if r["status"] == "Forwarded")
    assert (fwd["spf"], fwd["dkim"], fwd["dmarc"], fwd["arc"]) == ("pass", "pass", "pass",
                                                                   "none")
    assert fwd["ruleMatched"] == rule and fwd["action"] == "forward"
    assert fwd["eventType"] == "incoming" and fwd["sessionId"] == "s1"
    assert fwd["from"] == "alice@sender.test" and fwd["subject"] == "hello"
    rej = next(r for r in rows if r["status"] == "Rejected")
    assert rej["spf"] == "fail" and rej["errorCause"] == "spf_dkim_fail"
    assert rej["errorDetail"] == "550 5.7.1 rejected"
    failed = rows[0]
    assert failed["eventType"] == "newEmail" and failed["sendingDomain"] == "example.test"
    assert failed["errorCause"] == "hard_bounce"

    def statuses(**params) -> list[str]:
        return sorted(r["status"] for r in _get(c, base, **params)["result"])

    assert statuses(status="deliveryFailed") == ["Delivery failed"]
    assert statuses(status="delivery_failed") == ["Delivery failed"]
    assert statuses(status="rejected") == ["Rejected"]
    assert statuses(direction="inbound") == ["Forwarded", "Rejected"]
    assert statuses(direction="outbound") == ["Delivery failed", "Sent", "Sent"]
    assert statuses(**{"from": "ALICE@sender.test"}) == ["Forwarded"]
    assert statuses(to="y@gmail.test") == ["Delivery failed", "Sent"]
    assert statuses(domain="gmail.test") == ["Delivery failed", "Sent", "Sent"]
    assert statuses(sending_domain="example.test") == ["Delivery failed", "Sent", "Sent"]
    assert statuses(message_id="abc@example.test") == ["Sent", "Sent"]
    assert statuses(message_id="<abc@example.test>") == ["Sent", "Sent"]
    assert statuses(spf="fail") == ["Rejected"]
    assert statuses(rule_id=rule) == ["Forwarded"]
    assert statuses(event_type="newEmail") == ["Delivery failed", "Sent", "Sent"]
    # Time range: since/until bound it; the old event is there when asked for.
    assert statuses(since=(NOW - timedelta(minutes=40)).isoformat()) == [
        "Delivery failed", "Sent", "Sent"]
    assert statuses(since=(NOW - timedelta(days=4)).isoformat(),
                    until=(NOW - timedelta(days=2)).isoformat()) == ["Dropped"]
    assert statuses(since=(NOW - timedelta(days=4)).date().isoformat()) == [
        "Delivery failed", "Dropped", "Forwarded", "Rejected", "Sent", "Sent"]


def test_events_pagination_and_order(seeded):
    admin, _ = seeded
    c = admin.http(READ)
    base = f"/accounts/{admin.account_id}/email/activity"
    first = _get(c, base, per_page=2)
    second = _get(c, base, per_page=2, page=2)
    third = _get(c, base, per_page=2, page=3)
    past = _get(c, base, per_page=2, page=4)
    assert second["result_info"] == {**second["result_info"], "page": 2, "per_page": 2,
                                     "count": 2, "total_count": 5, "total_pages": 3}
    ids = [r["id"] for p in (first, second, third) for r in p["result"]]
    assert len(ids) == len(set(ids)) == 5 and past["result"] == []
    oldest = _get(c, base, order="asc")["result"]
    assert [r["id"] for r in oldest] == list(reversed(ids))


def test_groups_by_the_reference_dimensions(seeded):
    admin, rule = seeded
    c = admin.http(READ)
    base = f"/accounts/{admin.account_id}/email/activity/groups"

    def groups(**params) -> dict:
        out = _get(c, base, **params)
        return {tuple(g["dimensions"].values()): g["count"] for g in out["result"]}

    assert groups(dimensions="status") == {("Sent",): 2, ("Delivery failed",): 1,
                                           ("Forwarded",): 1, ("Rejected",): 1}
    assert groups(dimensions="eventType") == {("newEmail",): 3, ("incoming",): 2}
    assert groups(dimensions="spf,dmarc", direction="inbound") == {
        ("pass", "pass"): 1, ("fail", "fail"): 1}
    assert groups(dimensions="ruleMatched,action", status="Forwarded") == {
        (rule, "forward"): 1}
    assert groups(dimensions="sendingDomain", direction="outbound") == {("example.test",): 3}
    by_date = groups(dimensions="date", since=(NOW - timedelta(days=4)).isoformat())
    assert sum(by_date.values()) == 6
    assert all(len(k[0]) == 10 for k in by_date)  # YYYY-MM-DD
    for dim, minutes in (("datetimeHour", 60), ("datetimeFifteenMinutes", 15),
                         ("datetimeFiveMinutes", 5), ("datetimeMinute", 1)):
        buckets = groups(dimensions=dim)
        assert sum(buckets.values()) == 5, dim
        for (value,) in buckets:
            ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
            assert ts.second == 0 and (ts.minute * 60) % (minutes * 60) == 0, (dim, value)
    # Aliases name the same dimensions; time buckets come first, ascending.
    rows = _get(c, base, dimensions="hour,status")["result"]
    times = [r["dimensions"]["datetimeHour"] for r in rows]
    assert times == sorted(times)
    info = _get(c, base, dimensions="15m")["result_info"]
    assert info["dimensions"] == ["datetimeFifteenMinutes"] and info["total_events"] == 5
    r = c.get(base, params={"dimensions": "colour"})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == 10001


def test_activity_needs_analytics_read_on_the_account(seeded, make_admin):
    admin, _ = seeded
    base = f"/accounts/{admin.account_id}/email/activity"
    assert admin.http("email_routing:edit").get(base).status_code == 403
    assert admin.http().get(base).status_code == 401
    other = admin.cli("accounts", "create", "initech").strip()
    foreign = admin.http(READ).get(f"/accounts/{other}/email/activity/groups")
    assert foreign.status_code == 403
    for params in ({"since": "yesterday"}, {"per_page": "0"}, {"direction": "sideways"},
                   {"since": NOW.isoformat(), "until": (NOW - timedelta(hours=1)).isoformat()}):
        r = admin.http(READ).get(base, params=params)
        assert r.status_code == 400, params
        assert r.json()["success"] is False


def test_events_cli(seeded):
    admin, _ = seeded
    out = admin.cli("events", "list", "--account", "acme", "--status", "deliveryFailed")
    assert "Delivery failed" in out and "y@gmail.test" in out and "Sent" not in out
    listed = json.loads(admin.cli("events", "list", "--json", "--direction", "inbound"))
    # The operator sees every account, the other one's events included.
    assert listed["total"] == 4
    # Pages: --limit a page, --page N, the oldest first on request, the way to the next.
    first = admin.cli("events", "list", "--direction", "inbound", "--limit", "3")
    assert first.rstrip().endswith("3 of 4; more: --page 2"), first
    last = json.loads(admin.cli("events", "list", "--json", "--direction", "inbound",
                                "--limit", "3", "--page", "2"))["events"]
    oldest = json.loads(admin.cli("events", "list", "--json", "--direction", "inbound",
                                  "--limit", "1", "--oldest-first"))["events"]
    assert last == oldest and len(last) == 1
    stats = json.loads(admin.cli("events", "stats", "--by", "status", "--account", "acme",
                                 "--json"))
    assert {g["dimensions"]["status"]: g["count"] for g in stats["groups"]} == {
        "Sent": 2, "Delivery failed": 1, "Forwarded": 1, "Rejected": 1}
    table = admin.cli("events", "stats", "--by", "date,status", "--since", "7d")
    assert "DATE" in table and "STATUS" in table and "Dropped" in table


async def test_forwarded_and_rejected_over_smtp_show_in_the_activity_api(world, admin):
    """Issue 8 acceptance: after an end-to-end forward and a rejected message, the
    activity API returns both with the right statuses and auth results, and the
    aggregate by status counts them."""
    w = world
    w.dns.add_zone("""
        bad.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc.bad.test. 300 IN TXT "v=DMARC1; p=reject"
    """)
    signed = dkim_sign(make_message("alice@sender.test", to="user@ours.test"), "sender.test",
                       "sel", w.sender_key)
    code, text = await smtp_send(w.a, signed, "alice@sender.test")
    assert code == 250, text
    assert w.inbox.wait_for(1)[0].rcpt_tos == ["dest@inbox.test"]
    forged = make_message("mallory@bad.test", to="user@ours.test", subject="forged")
    code, text = await smtp_send(w.a, forged, "mallory@bad.test")
    assert code == 550, text

    token = await asyncio.to_thread(admin.token, READ, account=w.account_id)
    async with httpx.AsyncClient(base_url=admin.api_url, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        r = await c.get(f"/accounts/{w.account_id}/email/activity", params={"per_page": 50})
        assert r.status_code == 200, r.text
        rows = r.json()["result"]
        fwd = [e for e in rows if e["status"] == "Forwarded"]
        rej = [e for e in rows if e["status"] == "Rejected"]
        assert len(fwd) == 1 and len(rej) == 1, [(e["status"], e["to"]) for e in rows]
        f, j = fwd[0], rej[0]
        assert f["to"] == "user@ours.test" and f["from"] == "alice@sender.test"
        assert (f["spf"], f["dkim"], f["dmarc"]) == ("pass", "pass", "pass")
        assert f["action"] == "forward" and f["ruleMatched"]
        assert f["details"]["destination"] == "dest@inbox.test"
        assert f["queueId"] and f["sessionId"]
        assert j["to"] == "user@ours.test" and j["from"] == "mallory@bad.test"
        assert (j["spf"], j["dmarc"]) == ("fail", "fail") and j["dkim"] != "pass"
        assert j["subject"] is None or j["subject"] == "forged"
        # The queue id from the 250 reply finds the forwarded message's events.
        by_queue = await c.get(f"/accounts/{w.account_id}/email/activity",
                               params={"message_id": f["queueId"]})
        assert "Forwarded" in {e["status"] for e in by_queue.json()["result"]}
        g = await c.get(f"/accounts/{w.account_id}/email/activity/groups",
                        params={"dimensions": "status"})
        counts = {x["dimensions"]["status"]: x["count"] for x in g.json()["result"]}
        assert counts["Forwarded"] == 1 and counts["Rejected"] == 1
        auth = await c.get(f"/accounts/{w.account_id}/email/activity/groups",
                           params={"dimensions": "status,spf,dkim,dmarc",
                                   "status": "Rejected"})
        assert auth.json()["result"] == [{"count": 1, "dimensions": {
            "status": "Rejected", "spf": "fail", "dkim": j["dkim"], "dmarc": "fail"}}]
