"""The received TLS reports in the admin API: per day, reporter and policy; per report;
one report — an account sees only reports about its own domains, and of those only its
own policies."""

from __future__ import annotations

from datetime import UTC, datetime

from mta.store.models import TlsReportReceived

READ = "analytics:read"
BEGIN = datetime(2026, 12, 6, tzinfo=UTC)


def _policy(domain: str, ok: int, failed: dict[str, int]) -> dict:
    return {"policy_type": "sts", "policy_domain": domain, "mx_host": ["mx." + domain],
            "successful": ok, "failed": sum(failed.values()), "failures": failed}


def _report(policies: list[dict], rid: str, status: str = "ok") -> TlsReportReceived:
    return TlsReportReceived(
        filename=f"{rid}.json.gz", status=status, org_name="Company-X" if policies else None,
        report_id=rid if policies else None, period_begin=BEGIN if policies else None,
        period_end=BEGIN if policies else None, policies=policies,
        successful=sum(p["successful"] for p in policies),
        failed=sum(p["failed"] for p in policies),
        error=None if status == "ok" else "not JSON")


def test_days_list_and_one_report_scoped_to_the_account(admin):
    zone = admin.zone_name

    async def seed(s):
        rows = [_report([_policy(zone, 90, {"certificate-expired": 7}),
                         _policy("someone-else.test", 1000, {"tlsa-invalid": 1})], "a-1"),
                _report([_policy("someone-else.test", 5, {})], "b-1"),
                _report([], "", status="invalid")]
        s.add_all(rows)
        await s.flush()
        return [r.id for r in rows]

    ours, theirs, _ = admin.db_run(seed)
    c = admin.http(READ)
    base = f"/accounts/{admin.account_id}/email/reports/tls"
    r = c.get(f"{base}/days")
    assert r.status_code == 200, r.text
    [day] = r.json()["result"]
    assert (day["day"], day["org_name"], day["policy_domain"], day["policy_type"]) == (
        "2026-12-06", "Company-X", zone, "sts")
    assert (day["successful"], day["failed"], day["failures"]) == (
        90, 7, {"certificate-expired": 7})
    listed = c.get(f"{base}/received", params={"days": 30}).json()["result"]
    assert [x["id"] for x in listed] == [ours]
    assert c.get(f"{base}/received", params={"domain": "someone-else.test"}).json()[
        "result"] == []
    one = c.get(f"{base}/received/{ours}").json()["result"]
    assert one["report_id"] == "a-1"
    assert [p["policy_domain"] for p in one["policies"]] == [zone]  # not the other's
    assert c.get(f"{base}/received/{theirs}").status_code == 404  # another's domain
    assert c.get(f"{base}/received/nope").status_code == 404
    assert c.get(f"{base}/days", params={"days": 0}).status_code == 400
    assert admin.http("email_routing:read").get(f"{base}/days").status_code == 403
