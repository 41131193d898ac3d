"""Daily TLS reports (RFC 8460) end to end: real deliveries (one over TLS under an
MTA-STS enforce policy, one refused because the MX offers no STARTTLS) counted into a
real PostgreSQL, the report built and validated against the RFC 8460 schema, mailed
through our own queue and delivery workers to the reporting domain's MX (a loopback
sink) and POSTed to a loopback HTTP receiver."""

from __future__ import annotations

import asyncio
import email
import gzip
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from mta.queue.tlsrpt import SessionCounts, TlsSessionRecorder
from mta.reports.tlsrpt_job import send_day
from mta.reports.tlsrpt_policy import parse_tlsrpt
from tests.queue.test_delivery import settings_for_tests, workers
from tests.queue.test_queue import Clock
from tests.queue.test_remote import engine, mtasts, policy_server, publish_policy

__all__ = ["policy_server"]

SCHEMA = json.loads((Path(__file__).parent.parent / "data" /
                     "tlsrpt-rfc8460.schema.json").read_text())
MSG = b"From: a@src.test\r\nTo: ok@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"


def validate(report: dict) -> None:
    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(report)
    for key in ("start-datetime", "end-datetime"):  # date-time, whatever checkers exist
        datetime.fromisoformat(report["date-range"][key].replace("Z", "+00:00"))


class Receiver:
    """An HTTP server on loopback that keeps what is POSTed to it."""

    def __init__(self, host: str = "127.0.0.12") -> None:
        posts = self.posts = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                posts.append((self.path, self.headers["Content-Type"], body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_port}/tlsrpt"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def test_rua_parsing():
    assert parse_tlsrpt(["v=TLSRPTv1; rua=mailto:a@x.test,https://r.test/p"]) == [
        "mailto:a@x.test", "https://r.test/p"]
    assert parse_tlsrpt(["v=TLSRPTv1;rua=mailto:a@x.test", "v=TLSRPTv1;rua=mailto:b@x.test"]
                        ) == []  # two records: none
    assert parse_tlsrpt(["v=spf1 -all"]) == []
    assert parse_tlsrpt(["v=TLSRPTv1; rua=ftp://x.test/,mailto:nobody"]) == []


async def test_daily_report_mailed_and_posted_and_valid(
        db, dns_server, make_sink, tls, policy_server, receiver):
    good = make_sink("127.0.0.2", tls_context=tls.server_context("mx.dest.test"))
    plain = make_sink("127.0.0.3", port=good.port)  # no STARTTLS
    reports_mx = make_sink("127.0.0.4", port=good.port)
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2\n"
                        "reports.test. 300 IN MX 10 mx.reports.test.\n"
                        "mx.reports.test. 300 IN A 127.0.0.4")
    dns_server.add_txt("_smtp._tls.dest.test",
                       f"v=TLSRPTv1; rua=mailto:tls@reports.test,{receiver.url}")
    publish_policy(dns_server, policy_server, "enforce")
    counts = SessionCounts()
    e = engine(dns_server, good.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server), tls_counts=counts)
    [ok] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    dns_server.remove("mx.dest.test", "A")
    dns_server.add("mx.dest.test", "A", "127.0.0.3")
    e.pool.close()
    [refused] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert (ok.result, refused.result) == ("delivered", "deferred") and not plain.messages
    settings = settings_for_tests()
    settings.tls_reports.organization = "Src Test Mail"
    settings.tls_reports.allow_private_targets = True  # the receiver is on loopback
    await TlsSessionRecorder(SimpleNamespace(settings=settings, db=db), counts).flush()

    day = datetime.now(UTC).date()
    sent = await send_day(db, settings, e._resolver, day, owner="node-a")
    assert sorted((s.destination, s.status) for s in sent) == [
        (receiver.url, "posted"), ("mailto:tls@reports.test", "queued")]
    # The day is sent once: another taker (another node, the CLI) finds it done.
    assert await send_day(db, settings, e._resolver, day, owner="node-b") is None

    [(path, ctype, body)] = receiver.posts
    assert (path, ctype) == ("/tlsrpt", "application/tlsrpt+gzip")
    report = json.loads(gzip.decompress(body))
    validate(report)
    assert report["organization-name"] == "Src Test Mail"
    assert report["date-range"]["start-datetime"] == f"{day}T00:00:00Z"
    [policy] = report["policies"]
    assert policy["policy"] == {
        "policy-type": "sts", "policy-domain": "dest.test", "mx-host": ["mx.dest.test"],
        "policy-string": ["version: STSv1", "mode: enforce", "mx: mx.dest.test",
                          "max_age: 86400"]}
    assert policy["summary"] == {"total-successful-session-count": 1,
                                 "total-failure-session-count": 1}
    assert policy["failure-details"] == [{
        "result-type": "starttls-not-supported", "failed-session-count": 1,
        "sending-mta-ip": "127.0.0.1", "receiving-mx-hostname": "mx.dest.test",
        "receiving-ip": "127.0.0.3"}]

    # The mail goes out through the queue like any other.
    assert await workers(db, dns_server, good.port, Clock(), settings).run_once() == 1
    [mail] = reports_mx.wait_for(1)
    assert mail.rcpt_tos == ["tls@reports.test"]
    msg = email.message_from_bytes(mail.data)
    assert msg["TLS-Report-Domain"] == "dest.test"
    assert msg["TLS-Report-Submitter"] == "mta.src.test"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    [part] = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    start = int(datetime.fromisoformat(f"{day}T00:00:00+00:00").timestamp())
    assert part.get_filename() == f"mta.src.test!dest.test!{start}!{start + 86400}.json.gz"
    assert json.loads(gzip.decompress(part.get_payload(decode=True))) == report


async def test_http_off_loopback_is_refused_and_dry_run_sends_nothing(
        db, dns_server, receiver):
    from mta.store.tlsrpt import add_session_counts

    counts = SessionCounts()
    counts.add("far.test", "no-policy-found", (), "success", receiving_mx="mx.far.test")
    await add_session_counts(db, counts.take().items())
    dns_server.add_txt("_smtp._tls.far.test",
                       f"v=TLSRPTv1; rua=http://192.0.2.1/r,{receiver.url}")
    from mta.dnscache import DnsResolver

    resolver = DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)
    settings = settings_for_tests()
    settings.tls_reports.allow_private_targets = True
    day = datetime.now(UTC).date()
    dry = await send_day(db, settings, resolver, day, dry_run=True)
    assert [s.status for s in dry] == ["dry-run", "dry-run"] and receiver.posts == []
    sent = await send_day(db, settings, resolver, day, owner="node-a")
    assert [(s.status, "plain http" in s.detail) for s in sent] == [
        ("failed", True), ("posted", False)]
    report = json.loads(gzip.decompress(receiver.posts[0][2]))
    validate(report)
    assert report["policies"][0]["summary"]["total-successful-session-count"] == 1


class Listener:
    """A TCP listener that counts the connections it gets (and answers none)."""

    def __init__(self) -> None:
        self.connections = 0
        self.servers: list = []

    async def start(self, host: str) -> int:
        def count(reader, writer) -> None:
            self.connections += 1
            writer.close()
        server = await asyncio.start_server(count, host, 0)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    def close(self) -> None:
        for s in self.servers:
            s.close()


async def test_a_rua_naming_our_own_network_is_refused_without_a_connection(
        db, dns_server, receiver):
    """Any domain we deliver to picks its rua: it must not make the node POST to its
    loopback services or internal hosts, unless the operator allows private targets."""
    from mta.dnscache import DnsResolver
    from mta.store.tlsrpt import add_session_counts

    counts = SessionCounts()
    counts.add("far.test", "no-policy-found", (), "success", receiving_mx="mx.far.test")
    await add_session_counts(db, counts.take().items())
    listener = Listener()
    v4 = await listener.start("127.0.0.1")
    v6 = await listener.start("::1")
    dns_server.add("inside.far.test", "A", "127.0.0.1")
    resolver = DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)
    settings = settings_for_tests()
    day = datetime.now(UTC).date()
    try:
        # A record holds at most 5 destinations: two days' worth of them.
        for ruas in ([f"https://127.0.0.1:{v4}/r", "https://10.0.0.1/r",
                      f"https://[::1]:{v6}/r", f"https://inside.far.test:{v4}/r",
                      f"http://127.0.0.1:{v4}/r"],
                     [f"https://[::ffff:127.0.0.1]:{v4}/r", receiver.url]):
            dns_server.remove("_smtp._tls.far.test", "TXT")
            dns_server.add_txt("_smtp._tls.far.test", "v=TLSRPTv1; rua=" + ",".join(ruas))
            sent = await _again(db, settings, resolver, day)
            assert [s.status for s in sent] == ["failed"] * len(ruas)
            assert all("not a public address" in s.detail or "non-public" in s.detail
                       or "plain http" in s.detail for s in sent), [s.detail for s in sent]
        assert listener.connections == 0 and receiver.posts == []

        # Allowed, the same day (another day's run) reaches the loopback receiver, by
        # name too, and the TLS attempts do connect.
        dns_server.add("rcv.far.test", "A", receiver.url.split("/")[2].split(":")[0])
        port = receiver.url.split("/")[2].split(":")[1]
        dns_server.remove("_smtp._tls.far.test", "TXT")
        dns_server.add_txt("_smtp._tls.far.test", f"v=TLSRPTv1; rua=https://127.0.0.1:{v4}/r,"
                           f"http://rcv.far.test:{port}/tlsrpt")
        settings.tls_reports.allow_private_targets = True
        sent = await _again(db, settings, resolver, day)
        assert [s.status for s in sent] == ["failed", "posted"]
        assert listener.connections == 1 and len(receiver.posts) == 1
    finally:
        listener.close()


async def _again(db, settings, resolver, day):
    """The day was done: forget that, so it can be sent again."""
    from sqlalchemy import text

    async with db.session() as s:
        await s.execute(text("DELETE FROM tls_report_runs"))
    return await send_day(db, settings, resolver, day, owner="node-a")
