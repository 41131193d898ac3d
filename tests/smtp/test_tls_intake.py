"""TLS reports (RFC 8460) other domains send about ours: mailed to the MX's report
mailbox (`tls_reports.intake_addresses`), parsed (gzip or plain JSON), stored and listed
by `mta reports tls list|show`; a malformed or oversized (gzip bomb) report is recorded
as invalid, the mail is kept, and other mail is untouched."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys

import aiosmtplib
import pytest
import yaml
from sqlalchemy import select

from mta.store.models import TlsReportReceived
from tests.smtp.conftest import make_message, smtp_send
from tests.smtp.test_dmarc_intake import report_mail


def report(report_id: str, org: str = "Company-X") -> bytes:
    """An RFC 8460 §4.8-style report about ours.test: one STS policy with failures, one
    DANE policy without."""
    return json.dumps({
        "organization-name": org,
        "date-range": {"start-datetime": "2026-12-06T00:00:00Z",
                       "end-datetime": "2026-12-06T23:59:59Z"},
        "contact-info": "sts-reporting@company-x.example",
        "report-id": report_id,
        "policies": [
            {"policy": {"policy-type": "sts", "policy-domain": "ours.test",
                        "policy-string": ["version: STSv1", "mode: testing",
                                          "mx: *.mail.ours.test", "max_age: 86400"],
                        "mx-host": ["*.mail.ours.test"]},
             "summary": {"total-successful-session-count": 5326,
                         "total-failure-session-count": 303},
             "failure-details": [
                 {"result-type": "certificate-expired", "sending-mta-ip": "2001:db8:abcd:0012::1",
                  "receiving-mx-hostname": "mx1.mail.ours.test",
                  "failed-session-count": 100},
                 {"result-type": "starttls-not-supported", "sending-mta-ip": "2001:db8:abcd:0013::1",
                  "receiving-mx-hostname": "mx2.mail.ours.test",
                  "receiving-ip": "203.0.113.56", "failed-session-count": 200,
                  "additional-information": "https://reports.company-x.example/x"},
                 {"result-type": "certificate-expired", "sending-mta-ip": "198.51.100.62",
                  "receiving-ip": "192.0.2.201", "receiving-mx-hostname": "mx.ours.test",
                  "failed-session-count": 3}]},
            {"policy": {"policy-type": "tlsa", "policy-domain": "other.ours.test",
                        "policy-string": ["3 1 1 aabbcc"]},
             "summary": {"total-successful-session-count": 10,
                         "total-failure-session-count": 0}},
        ]}).encode()


def tweak(s) -> None:
    s.tls_reports.intake_addresses = ["TLSRPT@ours.test"]
    s.dmarc_reports.intake_addresses = ["dmarc@ours.test"]


async def stored(mx) -> list[TlsReportReceived]:
    async with mx.db.session() as s:
        return list((await s.execute(select(TlsReportReceived).order_by(
            TlsReportReceived.id))).scalars())


async def test_reports_mailed_to_the_mailbox_are_parsed_stored_and_listed(make_mx,
                                                                         tmp_path) -> None:
    mx = await make_mx(tweak)
    sender = "noreply-tlsrpt@good.test"
    mails = [
        report_mail("company-x!ours.test!1796515200!1796601599.json.gz",
                    gzip.compress(report("r-gz")), "application/tlsrpt+gzip"),
        report_mail("report.json", report("r-json", org="Company-Y"),
                    "application/tlsrpt+json"),
        # Company-X sends r-gz again: stored, but counted once below
        report_mail("again.json", report("r-gz"), "application/tlsrpt+json"),
    ]
    for raw in mails:
        code, _ = await smtp_send(mx, raw, sender, rcpts=("tlsrpt@ours.test",))
        assert code == 250
    rows = await stored(mx)
    assert [(r.status, r.report_id, r.successful, r.failed) for r in rows] == [
        ("ok", "r-gz", 5336, 303), ("ok", "r-json", 5336, 303), ("ok", "r-gz", 5336, 303)]
    assert rows[0].org_name == "Company-X"
    assert rows[0].policies[0]["failures"] == {"certificate-expired": 103,
                                               "starttls-not-supported": 200}
    assert [m.status for m in await mx.messages()] == ["report"] * 3

    config = tmp_path / "mta.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": mx.settings.database.url},
                                      "state_dir": str(tmp_path / "state")}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mta", "reports", "tls", *args,
                               "--config", str(config)], capture_output=True, text=True,
                              timeout=120)

    listed = await asyncio.to_thread(cli, "list", "--days", "30", "--json")
    assert listed.returncode == 0, listed.stderr
    days = json.loads(listed.stdout)
    assert [(d["day"], d["org_name"], d["policy_domain"], d["policy_type"], d["successful"],
             d["failed"]) for d in days] == [
        ("2026-12-06", "Company-X", "other.ours.test", "tlsa", 10, 0),
        ("2026-12-06", "Company-Y", "other.ours.test", "tlsa", 10, 0),
        ("2026-12-06", "Company-X", "ours.test", "sts", 5326, 303),
        ("2026-12-06", "Company-Y", "ours.test", "sts", 5326, 303)]
    assert days[2]["failures"] == {"certificate-expired": 103, "starttls-not-supported": 200}
    assert [d["reports"] for d in days] == [1, 1, 1, 1]
    only = json.loads((await asyncio.to_thread(
        cli, "list", "--days", "30", "--domain", "other.ours.test", "--json")).stdout)
    assert {d["policy_domain"] for d in only} == {"other.ours.test"}
    table = await asyncio.to_thread(cli, "list", "--days", "30")
    assert "certificate-expired 103, starttls-not-supported 200" in table.stdout
    shown = await asyncio.to_thread(cli, "show", str(rows[1].id), "--json")
    detail = json.loads(shown.stdout)
    assert detail["org_name"] == "Company-Y" and detail["policies"][1]["policy_type"] == "tlsa"
    missing = await asyncio.to_thread(cli, "show", "999999")
    assert missing.returncode == 1 and "no received TLS report" in missing.stderr


async def test_bombs_and_garbage_are_recorded_invalid_and_other_mail_flows(make_mx,
                                                                         tmp_path) -> None:
    mx = await make_mx(tweak)
    sender = "noreply-tlsrpt@good.test"
    gzbomb = gzip.compress(b" " * (40 << 20))  # 40 MiB of JSON whitespace inside ~40 KiB
    assert len(gzbomb) < 60_000
    no_policies = json.loads(report("x"))
    no_policies["policies"] = []
    bad_count = json.loads(report("y"))
    bad_count["policies"][0]["summary"]["total-failure-session-count"] = "many"
    cases = [
        report_mail("r.json.gz", gzbomb, "application/tlsrpt+gzip"),
        report_mail("r.json", b'{"organization-name": ', "application/tlsrpt+json"),
        report_mail("r.gz", b"not gzip at all", "application/tlsrpt+gzip"),
        report_mail("r.json", json.dumps(no_policies).encode(), "application/tlsrpt+json"),
        report_mail("r.json", json.dumps(bad_count).encode(), "application/tlsrpt+json"),
    ]
    for raw in cases:
        assert (await smtp_send(mx, raw, sender, rcpts=("tlsrpt@ours.test",)))[0] == 250
    plain = make_message(sender, to="tlsrpt@ours.test", subject="no attachment")
    assert (await smtp_send(mx, plain, sender, rcpts=("tlsrpt@ours.test",)))[0] == 250
    rows = await stored(mx)
    assert [r.status for r in rows] == ["invalid"] * 6
    errors = [r.error for r in rows]
    assert "decompresses to more than" in errors[0] and "not JSON" in errors[1]
    assert "not gzip" in errors[2] and "policies is missing or empty" in errors[3]
    assert "not a count" in errors[4] and "no TLS report" in errors[5]
    # Ordinary mail is routed as before; a TLS report mailbox takes its mail alone.
    assert (await smtp_send(mx, make_message(sender), sender))[0] == 250
    statuses = [m.status for m in await mx.messages()]
    assert statuses.count("report") == 6 and len(statuses) == 7
    [user] = [m for m in await mx.messages() if m.status != "report"]
    assert user.rcpt_to == ["user@ours.test"]

    config = tmp_path / "mta.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": mx.settings.database.url},
                                      "state_dir": str(tmp_path / "state")}))
    listed = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "mta", "reports", "tls", "list", "--reports", "--json",
        "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert [r["status"] for r in json.loads(listed.stdout)] == ["invalid"] * 6


async def test_a_tls_and_a_dmarc_mailbox_do_not_share_a_transaction(make_mx) -> None:
    mx = await make_mx(tweak)
    client = aiosmtplib.SMTP(hostname=mx.host, port=mx.port, start_tls=False, timeout=10,
                             local_hostname="client.test")
    await client.connect()
    try:
        await client.ehlo()
        await client.mail("a@good.test")
        assert (await client.rcpt("tlsrpt@ours.test"))[0] == 250
        for other in ("dmarc@ours.test", "user@ours.test"):
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as exc:
                await client.rcpt(other)
            assert exc.value.code == 452
    finally:
        await client.quit()
