"""TLS reporting counters (RFC 8460): real SMTP sinks with and without STARTTLS, a real
MTA-STS policy over HTTPS, DANE against a locally signed zone, and the counts written to
a real PostgreSQL by the node's recorder."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from mta.config import Settings
from mta.observe import metrics
from mta.queue.dane import tlsa_for_certificate
from mta.queue.tlsrpt import SessionCounts, TlsSessionRecorder
from mta.store.tlsrpt import sessions_for_day
from tests.queue.test_dane_delivery import engine as dane_engine
from tests.queue.test_dane_delivery import server_cert, signed
from tests.queue.test_remote import engine, mtasts, policy_server, publish_policy

__all__ = ["policy_server"]  # the fixture, imported so that pytest finds it here

MSG = b"From: a@src.test\r\nTo: ok@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"
ENFORCE = ("version: STSv1", "mode: enforce", "mx: mx.dest.test", "max_age: 86400")


def rows(counts: SessionCounts) -> dict[tuple, int]:
    return {(k.domain, k.policy_type, k.result, k.receiving_mx): n
            for k, n in counts._counts.items()}


async def test_sts_sessions_counted_by_result_and_written_as_increments(
        dns_server, make_sink, tls, policy_server, db):
    good = make_sink("127.0.0.2", tls_context=tls.server_context("mx.dest.test"))
    plain = make_sink("127.0.0.3", port=good.port)  # offers no STARTTLS
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    publish_policy(dns_server, policy_server, "enforce")
    counts = SessionCounts()
    e = engine(dns_server, good.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server), tls_counts=counts)

    [ok] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert ok.result == "delivered"
    [key] = counts._counts
    assert (key.domain, key.policy_type, key.policy_strings, key.result) == (
        "dest.test", "sts", ENFORCE, "success")
    assert (key.sending_ip, key.receiving_mx, key.receiving_ip) == (
        "127.0.0.1", "mx.dest.test", "127.0.0.2")

    # The MX moves to a host without STARTTLS: the enforce policy refuses it.
    dns_server.remove("mx.dest.test", "A")
    dns_server.add("mx.dest.test", "A", "127.0.0.3")
    e.pool.close()
    [deferred] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert deferred.result == "deferred" and plain.messages == []
    assert rows(counts)[("dest.test", "sts", "starttls-not-supported", "mx.dest.test")] == 1

    recorder = TlsSessionRecorder(SimpleNamespace(settings=Settings(), db=db), counts)
    assert await recorder.flush() == 2 and len(counts) == 0
    # A second session of the same kind adds to the same row.
    await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert await recorder.flush() == 1
    stored = {r.result: (r.count, r.policy_strings, r.policy_type)
              for r in await sessions_for_day(db, datetime.now(UTC).date(), "dest.test")}
    assert stored == {"success": (1, list(ENFORCE), "sts"),
                      "starttls-not-supported": (2, list(ENFORCE), "sts")}


async def test_certificate_failures_are_typed(dns_server, make_sink, tls, policy_server):
    sink = make_sink("127.0.0.2", tls_context=tls.server_context("other.test"))
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    publish_policy(dns_server, policy_server, "testing")
    counts = SessionCounts()
    e = engine(dns_server, sink.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server), tls_counts=counts)
    [out] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    # Testing mode: delivered over unverified TLS, reported as the failure it was.
    assert out.result == "delivered"
    assert rows(counts) == {
        ("dest.test", "sts", "certificate-host-mismatch", "mx.dest.test"): 1}


async def test_no_policy_sessions_with_and_without_tls(dns_server, make_sink, tls):
    sink = make_sink("127.0.0.2", tls_context=tls.server_context("sink.test"))
    make_sink("127.0.0.3", port=sink.port)  # plain
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2\n"
                        "other.test. 300 IN MX 10 mx.other.test.\n"
                        "mx.other.test. 300 IN A 127.0.0.3")
    counts = SessionCounts()
    e = engine(dns_server, sink.port, tls_counts=counts)
    plain = metrics.TLS_REPORT_SESSIONS.labels("no-policy-found", "starttls-not-supported")
    before = plain._value.get()
    for domain in ("dest.test", "other.test"):
        [out] = await e.deliver(domain, "a@src.test", [f"ok@{domain}"], MSG)
        assert out.result == "delivered"
    assert rows(counts) == {
        ("dest.test", "no-policy-found", "success", "mx.dest.test"): 1,
        ("other.test", "no-policy-found", "starttls-not-supported", "mx.other.test"): 1}
    assert plain._value.get() == before + 1


async def test_dane_mismatch_and_required_without_records(validating_resolver, make_sink, tls):
    ctx, _ = server_cert(tls.ca, "mx.dane.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    _, other = server_cert(tls.ca, "mx.dane.test")
    record = tlsa_for_certificate(other)
    resolver = validating_resolver(signed=[
        signed(sink.port, record),
        signed(sink.port, origin="bare.test")])
    counts = SessionCounts()
    e = dane_engine(resolver, sink.port,
                    "delivery:\n  dane:\n    destinations: [{domain: bare.test}]\n",
                    tls_counts=counts)
    [out] = await e.deliver("dane.test", "a@src.test", ["ok@dane.test"], MSG)
    assert out.result == "deferred"
    [out] = await e.deliver("bare.test", "a@src.test", ["ok@bare.test"], MSG)
    assert out.result == "deferred"
    assert rows(counts) == {("dane.test", "tlsa", "tlsa-invalid", "mx.dane.test"): 1,
                            ("bare.test", "tlsa", "dane-required", ""): 1}
    [key] = [k for k in counts._counts if k.domain == "dane.test"]
    assert key.policy_strings == (str(record),)
    assert sink.messages == []


async def test_sts_policy_fetch_failures_are_typed(dns_server, make_sink, tls, policy_server):
    from mta.queue.mtasts import MtaSts

    sink = make_sink("127.0.0.2", tls_context=tls.server_context("mx.dest.test"))
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    dns_server.add_txt("_mta-sts.dest.test", "v=STSv1; id=20240101;")
    dns_server.add("mta-sts.dest.test", "A", "127.0.0.11")
    counts = SessionCounts()

    async def deliver(sts: MtaSts) -> None:
        e = engine(dns_server, sink.port, verify_context=tls.client_context(),
                   mtasts=sts, tls_counts=counts)
        [out] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
        assert out.result == "delivered"  # no policy fetched: delivered as without one

    policy_server.serve("mta-sts.dest.test", "version: STSv1\r\nmode: sometimes\r\n")
    await deliver(mtasts(dns_server, tls, policy_server))
    # A policy host whose certificate we cannot verify.
    import ssl

    await deliver(MtaSts(e_resolver(dns_server), https_port=policy_server.port,
                         ssl_context=ssl.create_default_context(), fetch_timeout=5.0))
    failures = {k.result for k in counts._counts if k.receiving_mx == ""}
    assert failures == {"sts-policy-invalid", "sts-webpki-invalid"}
    assert all(k.policy_type == "sts" for k in counts._counts if k.receiving_mx == "")


def e_resolver(dns_server):
    from tests.queue.test_remote import resolver

    return resolver(dns_server)
