"""Aggregate reports other domains send about ours: mailed to the MX's report mailbox
(`dmarc_reports.intake_addresses`), parsed (gzip, zip, plain XML), stored and listed by
`mta reports dmarc list|show`; a malformed or oversized (zip bomb) report is recorded as
invalid, the mail is kept, and other mail is untouched."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import sys
import zipfile
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib
import pytest
import yaml
from sqlalchemy import select

from mta.store.models import DmarcReportReceived
from tests.smtp.conftest import make_message, smtp_send

REPORT = b"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>google.com</org_name>
    <email>noreply-dmarc-support@google.com</email>
    <report_id>%(id)s</report_id>
    <date_range><begin>1796515200</begin><end>1796601599</end></date_range>
  </report_metadata>
  <policy_published>
    <domain>ours.test</domain><adkim>r</adkim><aspf>r</aspf><p>none</p><sp>none</sp>
    <pct>100</pct>
  </policy_published>
  <record>
    <row>
      <source_ip>192.0.2.10</source_ip><count>40</count>
      <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>
      </policy_evaluated>
    </row>
    <identifiers><header_from>ours.test</header_from></identifiers>
    <auth_results>
      <dkim><domain>ours.test</domain><result>pass</result><selector>s1</selector></dkim>
      <spf><domain>bounces.ours.test</domain><result>pass</result></spf>
    </auth_results>
  </record>
  <record>
    <row>
      <source_ip>198.51.100.7</source_ip><count>2</count>
      <policy_evaluated><disposition>none</disposition><dkim>fail</dkim><spf>fail</spf>
      </policy_evaluated>
    </row>
    <identifiers><header_from>ours.test</header_from></identifiers>
    <auth_results><spf><domain>spoof.example</domain><result>fail</result></spf>
    </auth_results>
  </record>
</feedback>
"""


def report_mail(filename: str, data: bytes, ctype: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "noreply-dmarc@good.test"
    msg["To"] = "dmarc@ours.test"
    msg["Subject"] = "Report domain: ours.test Submitter: google.com"
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain="good.test")
    msg.set_content("A DMARC aggregate report.\n")
    maintype, subtype = ctype.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


def tweak(s) -> None:
    s.dmarc_reports.intake_addresses = ["DMARC@ours.test"]


async def stored(mx) -> list[DmarcReportReceived]:
    async with mx.db.session() as s:
        return list((await s.execute(select(DmarcReportReceived).order_by(
            DmarcReportReceived.id))).scalars())


async def test_reports_mailed_to_the_mailbox_are_parsed_stored_and_listed(make_mx,
                                                                         tmp_path) -> None:
    mx = await make_mx(tweak)
    sender = "noreply-dmarc@good.test"  # SPF passes from 127.0.0.1, aligned: DMARC pass
    mails = [
        report_mail("google.com!ours.test!1796515200!1796601599.xml.gz",
                    gzip.compress(REPORT % {b"id": b"g-1"}), "application/gzip"),
        report_mail("report.zip", zipped("r.xml", REPORT % {b"id": b"z-1"}),
                    "application/zip"),
        report_mail("report.xml", REPORT % {b"id": b"x-1"}, "text/xml"),
        # google.com sends g-1 again: stored, but counted once by the list
        report_mail("again.xml", REPORT % {b"id": b"g-1"}, "text/xml"),
    ]
    for raw in mails:
        code, _ = await smtp_send(mx, raw, sender, rcpts=("dmarc@ours.test",))
        assert code == 250
    rows = await stored(mx)
    assert [(r.status, r.report_id, r.messages) for r in rows] == [
        ("ok", "g-1", 42), ("ok", "z-1", 42), ("ok", "x-1", 42), ("ok", "g-1", 42)]
    assert rows[0].org_name == "google.com" and rows[0].policy_domain == "ours.test"
    assert rows[0].records[1]["source_ip"] == "198.51.100.7"
    msgs = [m for m in await mx.messages() if m.status == "report"]
    assert len(msgs) == 4  # the mails themselves are kept

    config = tmp_path / "mta.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": mx.settings.database.url},
                                      "state_dir": str(tmp_path / "state")}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mta", "reports", "dmarc", *args,
                               "--config", str(config)], capture_output=True, text=True,
                              timeout=120)

    listed = await asyncio.to_thread(cli, "list", "--days", "30", "--json")
    assert listed.returncode == 0, listed.stderr
    [day] = json.loads(listed.stdout)
    assert day["day"] == "2026-12-06" and day["policy_domain"] == "ours.test"
    assert (day["reports"], day["messages"], day["sources"]) == (3, 126, 2)
    assert (day["dmarc_pass"], day["spf_pass"], day["spf_fail"]) == (120, 120, 6)
    assert (day["dkim_pass"], day["dkim_fail"]) == (120, 6)
    assert day["reporters"] == ["google.com"]
    table = await asyncio.to_thread(cli, "list", "--days", "30")
    assert "ours.test" in table.stdout and "120/6" in table.stdout
    shown = await asyncio.to_thread(cli, "show", str(rows[1].id), "--json")
    assert json.loads(shown.stdout)["records"][0]["count"] == 40
    missing = await asyncio.to_thread(cli, "show", "999999")
    assert missing.returncode == 1 and "no received DMARC report" in missing.stderr


async def test_bombs_and_garbage_are_recorded_invalid_and_other_mail_flows(make_mx) -> None:
    mx = await make_mx(tweak)
    sender = "noreply-dmarc@good.test"
    bomb = zipped("r.xml", b"<feedback>" + b" " * (40 << 20))  # 40 MiB inside ~40 KiB
    gzbomb = gzip.compress(b"\0" * (40 << 20))
    assert len(bomb) < 60_000 and len(gzbomb) < 60_000
    cases = [
        report_mail("r.zip", bomb, "application/zip"),
        report_mail("r.xml.gz", gzbomb, "application/gzip"),
        report_mail("r.xml", b"<feedback><report_metadata>", "text/xml"),
        report_mail("r.xml", b'<!DOCTYPE x [<!ENTITY a "aaaa">]><feedback>&a;</feedback>',
                    "text/xml"),
        report_mail("r.gz", b"not gzip at all", "application/gzip"),
    ]
    for raw in cases:
        assert (await smtp_send(mx, raw, sender, rcpts=("dmarc@ours.test",)))[0] == 250
    plain = make_message(sender, to="dmarc@ours.test", subject="no attachment")
    assert (await smtp_send(mx, plain, sender, rcpts=("dmarc@ours.test",)))[0] == 250
    rows = await stored(mx)
    assert [r.status for r in rows] == ["invalid"] * 6
    errors = [r.error for r in rows]
    assert "decompresses to more than" in errors[0] and "decompresses to more than" in errors[1]
    assert "not well-formed" in errors[2] and "DOCTYPE" in errors[3]
    assert "not gzip" in errors[4] and "no gzip, zip or XML report" in errors[5]
    # A report mailbox takes its mail alone: another recipient in the same transaction
    # is told to come back separately, and ordinary mail is routed as before.
    mixed = await smtp_send(mx, make_message(sender), sender,
                            rcpts=("dmarc@ours.test", "user@ours.test"))
    assert mixed[0] == 250  # aiosmtplib sent to the accepted one; the other got 452
    assert (await smtp_send(mx, make_message(sender), sender))[0] == 250
    statuses = [m.status for m in await mx.messages()]
    assert statuses.count("report") == 7 and len(statuses) == 8
    user = [m for m in await mx.messages() if m.status != "report"]
    assert user[0].rcpt_to == ["user@ours.test"]


async def test_mixed_recipients_get_452_for_the_report_mailbox(make_mx) -> None:
    mx = await make_mx(tweak)
    client = aiosmtplib.SMTP(hostname=mx.host, port=mx.port, start_tls=False, timeout=10,
                             local_hostname="client.test")
    await client.connect()
    try:
        await client.ehlo()
        await client.mail("a@good.test")
        assert (await client.rcpt("user@ours.test"))[0] == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as exc:
            await client.rcpt("dmarc@ours.test")
        assert exc.value.code == 452
    finally:
        await client.quit()
