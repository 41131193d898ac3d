"""The received DMARC reports in the admin API: per day and domain, per report, one
report; an account sees only reports about its own domains."""

from __future__ import annotations

from datetime import UTC, datetime

from mta.store.models import DmarcReportReceived

READ = "analytics:read"
BEGIN = datetime(2026, 12, 6, tzinfo=UTC)


def _report(domain: str | None, rid: str, status: str = "ok") -> DmarcReportReceived:
    records = [] if status != "ok" else [
        {"source_ip": "192.0.2.1", "count": 10, "disposition": "none", "dkim": "pass",
         "spf": "fail", "header_from": domain, "envelope_from": "", "auth_dkim": [],
         "auth_spf": []},
        {"source_ip": "192.0.2.9", "count": 3, "disposition": "none", "dkim": "fail",
         "spf": "fail", "header_from": domain, "envelope_from": "", "auth_dkim": [],
         "auth_spf": []}]
    return DmarcReportReceived(
        filename=f"{rid}.xml.gz", status=status, org_name="google.com" if domain else None,
        report_id=rid if domain else None, policy_domain=domain,
        period_begin=BEGIN if domain else None, period_end=BEGIN if domain else None,
        messages=sum(r["count"] for r in records), records=records,
        error=None if status == "ok" else "not well-formed XML")


def test_days_list_and_one_report_scoped_to_the_account(admin):
    async def seed(s):
        rows = [_report(admin.zone_name, "a-1"), _report("someone-else.test", "b-1"),
                _report(None, "", status="invalid")]
        s.add_all(rows)
        await s.flush()
        return [r.id for r in rows]

    ours, theirs, _ = admin.db_run(seed)
    c = admin.http(READ)
    base = f"/accounts/{admin.account_id}/email/reports/dmarc"
    r = c.get(f"{base}/days")
    assert r.status_code == 200, r.text
    [day] = r.json()["result"]
    assert day["day"] == "2026-12-06" and day["policy_domain"] == admin.zone_name
    assert (day["messages"], day["sources"], day["dmarc_pass"]) == (13, 2, 10)
    assert (day["spf_pass"], day["spf_fail"], day["dkim_pass"], day["dkim_fail"]) == (
        0, 13, 10, 3)
    listed = c.get(f"{base}/received", params={"days": 30}).json()["result"]
    assert [x["id"] for x in listed] == [ours]
    one = c.get(f"{base}/received/{ours}").json()["result"]
    assert one["report_id"] == "a-1" and len(one["records"]) == 2
    assert c.get(f"{base}/received/{theirs}").status_code == 404  # another's domain
    assert c.get(f"{base}/received/nope").status_code == 404
    assert c.get(f"{base}/days", params={"days": 0}).status_code == 400
    assert admin.http("email_routing:read").get(f"{base}/days").status_code == 403
