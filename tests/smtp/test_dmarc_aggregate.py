"""DMARC aggregate reports (RFC 7489 §7.2) end to end: real messages through the MX
(loopback DNS publishing DMARC with rua=, real PostgreSQL), the day's report built from
what the MX recorded, validated against the RFC 7489 Appendix C schema, composed and
DKIM-signed by the sending pipeline and received at a loopback sink as a gzip
attachment; a rua on another domain without its authorising record gets nothing."""

from __future__ import annotations

import asyncio
import email
import gzip
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import dkim
import pytest
import xmlschema
import yaml
from sqlalchemy import select

from mta.node import NodeContext
from mta.queue.remote import RemoteDelivery
from mta.reports.dmarc_aggregate import NAMESPACE
from mta.reports.dmarc_rua import parse_rua
from mta.reports.dmarc_send import day_period, send_reports
from mta.sending.domains import onboard_sending_domain
from mta.sending.service import SendingService
from mta.store.models import DmarcReportSent
from tests.harness.smtp_sink import _free_port
from tests.sending.test_service import publish
from tests.signing.test_dkim_sign import dns_txt_func
from tests.smtp.conftest import dkim_sign, make_message, smtp_send

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent.parent / "data" / "dmarc-rfc7489.xsd"))
NS = {"d": NAMESPACE}

RUA = ("mailto:dmarc@rep.test, mailto:agg@collector.test!50k, "
       "mailto:spy@thirdparty.test, mailto:tiny@rep.test!100")


def tweak(s) -> None:
    s.secret_key = "test-secret-key"
    s.dmarc_reports.sender = "dmarc-reports@ours.test"
    s.dmarc_reports.account = "test"
    s.dmarc_reports.org_name = "mx.ours.test"


@pytest.fixture
async def world(make_mx, make_sink, keys):
    mx = await make_mx(tweak)
    dns = mx.dns
    dns.add_zone(f"""
        rep.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc.rep.test. 300 IN TXT "v=DMARC1; p=reject; adkim=s; rua={RUA}"
        rep.test. 300 IN MX 10 mx.rcpt.test.
        collector.test. 300 IN MX 10 mx.rcpt.test.
        thirdparty.test. 300 IN MX 10 mx.rcpt.test.
        rep.test._report._dmarc.collector.test. 300 IN TXT "v=DMARC1"
        mx.rcpt.test. 300 IN A 127.0.0.2
        nodmarc.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
    """)
    dns.add_txt("sel._domainkey.rep.test", keys["good"].dns)
    async with mx.db.session() as s:
        await onboard_sending_domain(s, mx.settings, "ours.test")
    await publish(mx.db, mx.settings, dns, "ours.test")
    port = _free_port("127.0.0.2")
    sink = make_sink("127.0.0.2", port=port)
    return mx, sink, port


async def test_a_day_of_inbound_mail_becomes_a_valid_report_at_the_rua(world, keys) -> None:
    mx, sink, port = world
    # Two aligned passes (DKIM d=rep.test, SPF for 127.0.0.1), one DMARC failure that
    # p=reject turns away (From rep.test, unsigned, MAIL FROM a domain 127.0.0.1 may not
    # use), and mail from a domain without DMARC, which no report mentions.
    for n in range(2):
        raw = dkim_sign(make_message("news@rep.test", subject=f"n{n}"), "rep.test", "sel",
                        keys["good"])
        assert (await smtp_send(mx, raw, "bounce@rep.test"))[0] == 250
    code, _ = await smtp_send(mx, make_message("ceo@rep.test"), "x@strict.test")
    assert code == 550
    assert (await smtp_send(mx, make_message("a@nodmarc.test"), "a@nodmarc.test"))[0] == 250

    ctx = NodeContext(settings=mx.settings, db=mx.db, resolver=mx.server.ctx.resolver,
                      node_id="node-a")
    transport = RemoteDelivery(ctx.resolver, "mx.ours.test", port=port, connect_timeout=3,
                               command_timeout=5, data_timeout=5)
    service = SendingService(ctx, transport=transport, sync_timeout=5)
    begin, end = day_period(datetime.now(UTC).date())
    try:
        outcomes = await send_reports(ctx, service, begin, end)
        # A second run (another node, or the job's next pass) sends nothing again.
        again = await send_reports(ctx, service, begin, end)
    finally:
        await service.close()

    assert [o.policy_domain for o in outcomes] == ["rep.test"]
    report = outcomes[0]
    assert report.status == "sent" and report.messages == 3
    by_address = {d["address"]: d for d in report.destinations}
    assert by_address["dmarc@rep.test"]["outcome"] == "queued"
    assert by_address["agg@collector.test"]["outcome"] == "queued"  # authorised
    assert by_address["spy@thirdparty.test"]["outcome"] == "refused"
    assert "rep.test._report._dmarc.thirdparty.test" in by_address["spy@thirdparty.test"]["why"]
    assert by_address["tiny@rep.test"]["outcome"] == "too_large"  # !100: 100 bytes
    assert [o.status for o in again] == ["already_sent"]
    async with mx.db.session() as s:
        sent = (await s.execute(select(DmarcReportSent))).scalars().all()
    assert [(r.policy_domain, r.messages) for r in sent] == [("rep.test", 3)]

    received = sink.wait_for(2, timeout=15)
    assert sorted(r.rcpt_tos[0] for r in received) == ["agg@collector.test", "dmarc@rep.test"]
    assert all("spy@thirdparty.test" not in r.rcpt_tos for r in received)
    for got in received:
        # Signed by our sending path with the reporting domain's key.
        assert dkim.verify(got.data, dnsfunc=dns_txt_func(mx.dns))
        msg = email.message_from_bytes(got.data, policy=policy.default)
        assert msg["From"].addresses[0].addr_spec == "dmarc-reports@ours.test"
        assert msg["Subject"].startswith("Report Domain: rep.test Submitter: mx.ours.test "
                                         "Report-ID: <")
        parts = [p for p in msg.iter_attachments()]
        assert len(parts) == 1 and parts[0].get_content_type() == "application/gzip"
        start, stop = int(begin.timestamp()), int(end.timestamp()) - 1
        assert parts[0].get_filename() == f"mx.ours.test!rep.test!{start}!{stop}.xml.gz"
        xml = gzip.decompress(parts[0].get_content())
        SCHEMA.validate(xml)  # raises on any deviation from RFC 7489 Appendix C
        doc = ET.fromstring(xml)
        assert doc.findtext("d:policy_published/d:p", namespaces=NS) == "reject"
        assert doc.findtext("d:policy_published/d:adkim", namespaces=NS) == "s"
        rows = {}
        for rec in doc.findall("d:record", NS):
            rows[rec.findtext("d:row/d:policy_evaluated/d:disposition", namespaces=NS)] = rec
        passed, rejected = rows["none"], rows["reject"]
        assert passed.findtext("d:row/d:source_ip", namespaces=NS) == "127.0.0.1"
        assert passed.findtext("d:row/d:count", namespaces=NS) == "2"
        assert passed.findtext("d:row/d:policy_evaluated/d:dkim", namespaces=NS) == "pass"
        assert passed.findtext("d:auth_results/d:dkim/d:domain", namespaces=NS) == "rep.test"
        assert passed.findtext("d:auth_results/d:dkim/d:selector", namespaces=NS) == "sel"
        assert passed.findtext("d:identifiers/d:header_from", namespaces=NS) == "rep.test"
        assert rejected.findtext("d:row/d:count", namespaces=NS) == "1"
        assert rejected.findtext("d:row/d:policy_evaluated/d:spf", namespaces=NS) == "fail"
        assert rejected.findtext("d:identifiers/d:envelope_from",
                                 namespaces=NS) == "strict.test"
        assert rejected.findtext("d:auth_results/d:spf/d:result", namespaces=NS) == "fail"
        assert rejected.find("d:auth_results/d:dkim", NS) is None


async def test_dry_run_builds_and_checks_but_sends_and_claims_nothing(world, keys) -> None:
    mx, sink, _ = world
    raw = dkim_sign(make_message("news@rep.test"), "rep.test", "sel", keys["good"])
    assert (await smtp_send(mx, raw, "bounce@rep.test"))[0] == 250
    ctx = NodeContext(settings=mx.settings, db=mx.db, resolver=mx.server.ctx.resolver,
                      node_id="node-a")
    begin, end = day_period(datetime.now(UTC).date())
    outcomes = await send_reports(ctx, None, begin, end, dry_run=True)
    assert [(o.status, o.messages) for o in outcomes] == [("dry_run", 1)]
    SCHEMA.validate(outcomes[0].xml)
    assert {d["address"]: d["outcome"] for d in outcomes[0].destinations} == {
        "dmarc@rep.test": "would_send", "agg@collector.test": "would_send",
        "spy@thirdparty.test": "refused", "tiny@rep.test": "too_large"}
    async with mx.db.session() as s:
        assert (await s.execute(select(DmarcReportSent))).first() is None
    assert sink.messages == []


def test_rua_parsing_keeps_mailto_with_size_limits() -> None:
    dests = parse_rua("mailto:a@x.test!10m, https://x.test/r, mailto:b@y.test!2k,"
                      "mailto:bad!1x, mailto:A@x.test, mailto:c@z.test")
    assert [(d.address, d.max_size) for d in dests] == [
        ("a@x.test", 10 << 20), ("b@y.test", 2048), ("c@z.test", None)]


async def test_two_nodes_at_once_send_each_report_once(world, keys) -> None:
    mx, sink, port = world
    raw = dkim_sign(make_message("news@rep.test"), "rep.test", "sel", keys["good"])
    assert (await smtp_send(mx, raw, "bounce@rep.test"))[0] == 250
    begin, end = day_period(datetime.now(UTC).date())
    services, runs = [], []
    for node in ("node-a", "node-b"):
        ctx = NodeContext(settings=mx.settings, db=mx.db, resolver=mx.server.ctx.resolver,
                          node_id=node)
        transport = RemoteDelivery(ctx.resolver, "mx.ours.test", port=port,
                                   connect_timeout=3, command_timeout=5, data_timeout=5)
        service = SendingService(ctx, transport=transport, sync_timeout=5)
        services.append(service)
        runs.append(send_reports(ctx, service, begin, end))
    try:
        results = await asyncio.gather(*runs)
    finally:
        for service in services:
            await service.close()
    statuses = sorted(o.status for outcomes in results for o in outcomes)
    assert statuses == ["already_sent", "sent"]
    sink.wait_for(2, timeout=15)
    await asyncio.sleep(1.0)  # a duplicate would arrive within this
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["agg@collector.test",
                                                            "dmarc@rep.test"]


async def test_cli_dry_run_lists_the_destinations_and_writes_the_report(world, keys,
                                                                         tmp_path) -> None:
    mx, sink, _ = world
    raw = dkim_sign(make_message("news@rep.test"), "rep.test", "sel", keys["good"])
    assert (await smtp_send(mx, raw, "bounce@rep.test"))[0] == 250
    config = tmp_path / "mta.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": mx.settings.database.url}, "state_dir": str(tmp_path / "state"),
        "node": {"hostname": "mx.ours.test"},
        "dns": {"nameservers": [dict(mx.dns.nameserver)], "timeout": 2}}))
    today = datetime.now(UTC).date().isoformat()
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mta", "reports", "dmarc", "send", "--date",
                         today, "--dry-run", "--json", "--output", str(tmp_path / "out"),
                         "--config", str(config)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [report] = json.loads(result.stdout)
    assert report["status"] == "dry_run" and report["messages"] == 1
    assert {d["address"]: d["outcome"] for d in report["destinations"]}[
        "spy@thirdparty.test"] == "refused"
    [written] = list((tmp_path / "out").iterdir())
    SCHEMA.validate(gzip.decompress(written.read_bytes()))
    assert sink.messages == []
