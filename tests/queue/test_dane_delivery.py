"""DANE (RFC 7672) end to end: a zone signed here, unbound validating it on loopback (the
resolver the operator trusts), SMTP sinks with trustme certificates, and RemoteDelivery
configured the way the node configures it (`dns.dnssec: trust_ad`)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mta.config_load import settings_from_text
from mta.dnscache import DnsResolver
from mta.observe import metrics
from mta.queue.dane import Tlsa, tlsa_for_certificate
from mta.queue.mtasts import MtaSts
from mta.queue.remote import RemoteDelivery, dane_policy_from_settings
from tests.harness.dnssec import SignedZone
from tests.queue.https_policy_server import PolicyServer

MSG = b"From: a@src.test\r\nTo: ok@dane.test\r\nSubject: hi\r\n\r\nhello\r\n"
POLICY_IP = "127.0.0.11"


def server_cert(ca: trustme.CA, *names: str) -> tuple[ssl.SSLContext, bytes]:
    """A server context for `names` and its certificate (DER)."""
    leaf = ca.issue_cert(*names)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    return ctx, x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        Encoding.DER)


def engine(resolver, port: int, config: str = "", **kw) -> RemoteDelivery:
    """The transport as `remote_delivery_from_settings` builds it from `config`."""
    settings = settings_from_text(
        f"dns:\n  dnssec: trust_ad\n  nameservers: [{{address: 127.0.0.1, "
        f"port: {resolver.port}}}]\n{config}")
    dns = DnsResolver.from_settings(settings.dns)
    return RemoteDelivery(dns, "mta.src.test", port=port, connect_timeout=3.0,
                          command_timeout=5.0, data_timeout=5.0,
                          dane=dane_policy_from_settings(settings), **kw)


def signed(port: int, *tlsa: Tlsa, extra: str = "", origin: str = "dane.test",
           address: str = "127.0.0.2") -> SignedZone:
    records = "\n".join(f"_{port}._tcp.mx.{origin}. 300 IN TLSA {t}" for t in tlsa)
    return SignedZone(origin, f"""
        {origin}.     300 IN MX 10 mx.{origin}.
        mx.{origin}.  300 IN A {address}
        {records}
        {extra}
    """)


def count(metric, label: str) -> float:
    return metric.labels(label)._value.get()


async def test_matching_tlsa_delivers_over_tls(validating_resolver, make_sink, tls):
    # The name is wrong and the CA unknown: only the TLSA record vouches for the server.
    ctx, cert = server_cert(tls.ca, "not-the-mx.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    resolver = validating_resolver(signed=[signed(sink.port, tlsa_for_certificate(cert))])
    before = count(metrics.DANE_OUTCOMES, "verified")

    [out] = await engine(resolver, sink.port).deliver("dane.test", "a@src.test",
                                                      ["ok@dane.test"], MSG)

    assert out.result == "delivered", out.detail
    assert out.tls_version in ("TLSv1.2", "TLSv1.3")
    assert "DANE: TLSA 3 1 1" in out.detail and "(DANE-EE) matched" in out.detail
    assert sink.wait_for(1)[0].tls
    assert count(metrics.DANE_OUTCOMES, "verified") == before + 1


async def test_dane_ta_record_of_the_issuer_delivers(validating_resolver, make_sink):
    intermediate = trustme.CA().create_child_ca()
    ctx, _ = server_cert(intermediate, "mx.dane.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    issuer = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes()).public_bytes(
        Encoding.DER)
    record = tlsa_for_certificate(issuer, usage=2, selector=1, mtype=2)
    resolver = validating_resolver(signed=[signed(sink.port, record)])

    [out] = await engine(resolver, sink.port).deliver("dane.test", "a@src.test",
                                                      ["ok@dane.test"], MSG)

    assert out.result == "delivered", out.detail
    assert "(DANE-TA) matched the issuer at depth 1" in out.detail


async def test_mismatch_defers_with_the_reason_and_sends_nothing(
        validating_resolver, make_sink, tls):
    ctx, _ = server_cert(tls.ca, "mx.dane.test")  # valid name, trusted CA: not enough
    sink = make_sink("127.0.0.2", tls_context=ctx)
    _, other = server_cert(tls.ca, "mx.dane.test")
    resolver = validating_resolver(signed=[signed(sink.port, tlsa_for_certificate(other))])
    before = count(metrics.DANE_OUTCOMES, "mismatch")

    [out] = await engine(resolver, sink.port).deliver("dane.test", "a@src.test",
                                                      ["ok@dane.test"], MSG)

    assert out.result == "deferred" and out.reply is None
    assert (f"DANE: the certificate of mx.dane.test does not match the TLSA records at "
            f"_{sink.port}._tcp.mx.dane.test: no TLSA record matched") in out.detail
    assert sink.messages == []
    assert count(metrics.DANE_OUTCOMES, "mismatch") == before + 1


async def test_mismatch_on_first_mx_moves_on_to_the_next(validating_resolver, make_sink, tls):
    ctx1, _ = server_cert(tls.ca, "mx.dane.test")
    first = make_sink("127.0.0.2", tls_context=ctx1)
    ctx2, cert2 = server_cert(tls.ca, "mx2.dane.test")
    second = make_sink("127.0.0.3", port=first.port, tls_context=ctx2)
    _, other = server_cert(tls.ca, "mx.dane.test")
    resolver = validating_resolver(signed=[signed(
        first.port, tlsa_for_certificate(other), extra=f"""
        dane.test.     300 IN MX 20 mx2.dane.test.
        mx2.dane.test. 300 IN A 127.0.0.3
        _{first.port}._tcp.mx2.dane.test. 300 IN TLSA {tlsa_for_certificate(cert2)}""")])

    [out] = await engine(resolver, first.port).deliver("dane.test", "a@src.test",
                                                       ["ok@dane.test"], MSG)

    assert out.result == "delivered" and out.mx_host == "mx2.dane.test", out.detail
    assert first.messages == [] and second.wait_for(1)[0].tls


async def test_no_starttls_at_a_dane_host_defers(validating_resolver, make_sink, tls):
    sink = make_sink("127.0.0.2")  # no certificate: no STARTTLS offered
    _, cert = server_cert(tls.ca, "mx.dane.test")
    resolver = validating_resolver(signed=[signed(sink.port, tlsa_for_certificate(cert))])

    [out] = await engine(resolver, sink.port).deliver("dane.test", "a@src.test",
                                                      ["ok@dane.test"], MSG)

    assert out.result == "deferred"
    assert (f"mx.dane.test does not offer STARTTLS, which DANE (TLSA records at "
            f"_{sink.port}._tcp.mx.dane.test) requires") in out.detail
    assert sink.messages == []


async def test_mx_host_alias_uses_the_tlsa_records_of_its_target(
        validating_resolver, make_sink, tls):
    """mx.dane.test is a CNAME for smtp.dane.test: the TLSA records are looked for at the
    target first (RFC 7672 §2.2.2), and a DANE-TA chain may name either host."""
    intermediate = trustme.CA().create_child_ca()
    ctx, _ = server_cert(intermediate, "smtp.dane.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    issuer = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes()).public_bytes(
        Encoding.DER)
    record = tlsa_for_certificate(issuer, usage=2, selector=0, mtype=1)
    resolver = validating_resolver(signed=[SignedZone("dane.test", f"""
        dane.test.       300 IN MX 10 mx.dane.test.
        mx.dane.test.    300 IN CNAME smtp.dane.test.
        smtp.dane.test.  300 IN A 127.0.0.2
        _{sink.port}._tcp.smtp.dane.test. 300 IN TLSA {record}
    """)])

    [out] = await engine(resolver, sink.port).deliver("dane.test", "a@src.test",
                                                      ["ok@dane.test"], MSG)

    assert out.result == "delivered", out.detail
    assert "(DANE-TA) matched the issuer at depth 1 of mx.dane.test" in out.detail


def issuer_record(intermediate: trustme.CA) -> Tlsa:
    return tlsa_for_certificate(x509.load_pem_x509_certificate(
        intermediate.cert_pem.bytes()).public_bytes(Encoding.DER), usage=2, selector=0,
        mtype=1)


async def test_dane_ta_certificate_may_name_the_domain_of_authenticated_mx(
        validating_resolver, make_sink):
    intermediate = trustme.CA().create_child_ca()
    ctx, _ = server_cert(intermediate, "dane.test")  # the domain, not the MX host
    sink = make_sink("127.0.0.2", tls_context=ctx)
    resolver = validating_resolver(signed=[signed(sink.port, issuer_record(intermediate))])

    [out] = await engine(resolver, sink.port).deliver("dane.test", "a@src.test",
                                                      ["ok@dane.test"], MSG)

    assert out.result == "delivered" and "(DANE-TA) matched" in out.detail, out.detail


async def test_unsigned_mx_still_uses_the_hosts_tlsa_but_not_the_domain_name(
        dns_server, validating_resolver, make_sink):
    """plain.test (unsigned) names mx.dane.test (signed, with TLSA records): the host's
    records apply (RFC 7672 §2.2.1), but a forged MX record must not make plain.test a
    name the certificate may carry."""
    intermediate = trustme.CA().create_child_ca()
    ctx, _ = server_cert(intermediate, "plain.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    dns_server.add_zone("plain.test. 300 IN MX 10 mx.dane.test.")
    resolver = validating_resolver(signed=[signed(sink.port, issuer_record(intermediate))],
                                   insecure=["plain.test"])

    [out] = await engine(resolver, sink.port).deliver("plain.test", "a@src.test",
                                                      ["ok@plain.test"], MSG)

    assert out.result == "deferred", out.detail
    assert "the certificate does not name mx.dane.test" in out.detail
    assert sink.messages == []


async def test_only_unusable_records_still_make_tls_mandatory(
        validating_resolver, make_sink, tls):
    """PKIX-EE (usage 1) is not for SMTP (RFC 7672 §3.1.3), but the host did publish
    authenticated TLSA records: TLS is required, without authentication."""
    _, cert = server_cert(tls.ca, "mx.dane.test")
    pkix = Tlsa(1, 1, 1, tlsa_for_certificate(cert).data)
    plain = make_sink("127.0.0.2")  # no STARTTLS
    resolver = validating_resolver(signed=[signed(plain.port, pkix)])

    [out] = await engine(resolver, plain.port).deliver("dane.test", "a@src.test",
                                                       ["ok@dane.test"], MSG)
    assert out.result == "deferred" and "does not offer STARTTLS, which DANE" in out.detail
    assert plain.messages == []

    ctx, _ = server_cert(trustme.CA(), "elsewhere.test")  # any certificate will do
    secure = make_sink("127.0.0.3", tls_context=ctx)
    resolver = validating_resolver(signed=[signed(secure.port, pkix, origin="dane2.test",
                                                  address="127.0.0.3")])
    [out] = await engine(resolver, secure.port).deliver("dane2.test", "a@src.test",
                                                        ["ok@dane2.test"], MSG)
    assert out.result == "delivered" and out.tls_version is not None, out.detail
    assert "no usable TLSA record" in out.detail and "without authentication" in out.detail


async def test_unsigned_zone_takes_the_opportunistic_path(
        dns_server, validating_resolver, make_sink, tls):
    """TLSA records in a zone nobody signed prove nothing: ignored, plain STARTTLS."""
    ctx, _ = server_cert(tls.ca, "mx.plain.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    _, other = server_cert(tls.ca, "mx.plain.test")
    dns_server.add_zone(f"""
        plain.test.     300 IN MX 10 mx.plain.test.
        mx.plain.test.  300 IN A 127.0.0.2
        _{sink.port}._tcp.mx.plain.test. 300 IN TLSA {tlsa_for_certificate(other)}
    """)
    resolver = validating_resolver(insecure=["plain.test"])
    before = count(metrics.DANE_TLSA_LOOKUPS, "insecure")

    [out] = await engine(resolver, sink.port).deliver("plain.test", "a@src.test",
                                                      ["ok@plain.test"], MSG)

    assert out.result == "delivered" and out.tls_version is not None, out.detail
    assert out.detail is None  # no DANE note: DANE did not apply
    assert count(metrics.DANE_TLSA_LOOKUPS, "insecure") == before + 1


@pytest.fixture
def policy_server(tls) -> Iterator[PolicyServer]:
    server = PolicyServer(POLICY_IP, tls.server_context("mta-sts.dane.test",
                                                        "mta-sts.plain.test")).start()
    yield server
    server.stop()


def sts_records(domain: str) -> str:
    return (f'_mta-sts.{domain}. 300 IN TXT "v=STSv1; id=1;"\n'
            f"mta-sts.{domain}. 300 IN A {POLICY_IP}")


async def test_dane_takes_precedence_over_mta_sts(
        validating_resolver, make_sink, tls, policy_server):
    """An MTA-STS enforce policy that names another MX (and a certificate no CA we trust
    signed) would refuse this host; RFC 8461 §2 says DANE decides."""
    ctx, cert = server_cert(trustme.CA(), "mx.dane.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    policy_server.serve("mta-sts.dane.test",
                        "version: STSv1\nmode: enforce\nmx: other.dane.test\nmax_age: 86400\n")
    zone = signed(sink.port, tlsa_for_certificate(cert), extra=sts_records("dane.test"))
    resolver = validating_resolver(signed=[zone])
    e = engine(resolver, sink.port, verify_context=tls.client_context())
    e.mtasts = MtaSts(e._resolver, https_port=policy_server.port,
                      ssl_context=tls.client_context(), fetch_timeout=5.0)

    [out] = await e.deliver("dane.test", "a@src.test", ["ok@dane.test"], MSG)

    assert out.result == "delivered" and "DANE-EE" in out.detail, out.detail
    assert policy_server.requests == []  # the policy was not even fetched


def dane_and_sts_zone(port: int, cert: bytes) -> SignedZone:
    """mx.dane.test (TLSA, at an address nobody listens on: an attacker blocks it) and
    mx2.dane.test (no TLSA, 127.0.0.3), both named by an MTA-STS enforce policy."""
    return signed(port, tlsa_for_certificate(cert), address="127.0.0.4", extra=f"""
        dane.test.     300 IN MX 20 mx2.dane.test.
        mx2.dane.test. 300 IN A 127.0.0.3
        {sts_records("dane.test")}""")


async def test_mta_sts_enforce_still_guards_the_hosts_without_tlsa(
        validating_resolver, make_sink, tls, policy_server):
    """DANE takes precedence per host: the DANE host being unreachable must not let the
    other MX receive the mail in clear when MTA-STS says enforce."""
    _, cert = server_cert(tls.ca, "mx.dane.test")
    plain = make_sink("127.0.0.3")  # offers no STARTTLS
    policy_server.serve("mta-sts.dane.test",
                        "version: STSv1\nmode: enforce\nmx: *.dane.test\nmax_age: 86400\n")
    resolver = validating_resolver(signed=[dane_and_sts_zone(plain.port, cert)])
    e = engine(resolver, plain.port, verify_context=tls.client_context())
    e.mtasts = MtaSts(e._resolver, https_port=policy_server.port,
                      ssl_context=tls.client_context(), fetch_timeout=5.0)

    [out] = await e.deliver("dane.test", "a@src.test", ["ok@dane.test"], MSG)

    assert out.result == "deferred", out.detail
    assert "mx2.dane.test does not offer STARTTLS, which MTA-STS enforce requires" in (
        out.detail), out.detail
    assert plain.messages == []


async def test_host_without_tlsa_gets_verified_tls_under_mta_sts(
        validating_resolver, make_sink, tls, policy_server):
    _, cert = server_cert(tls.ca, "mx.dane.test")
    good = make_sink("127.0.0.3", tls_context=tls.server_context("mx2.dane.test"))
    policy_server.serve("mta-sts.dane.test",
                        "version: STSv1\nmode: enforce\nmx: *.dane.test\nmax_age: 86400\n")
    resolver = validating_resolver(signed=[dane_and_sts_zone(good.port, cert)])
    e = engine(resolver, good.port, verify_context=tls.client_context())
    e.mtasts = MtaSts(e._resolver, https_port=policy_server.port,
                      ssl_context=tls.client_context(), fetch_timeout=5.0)

    [out] = await e.deliver("dane.test", "a@src.test", ["ok@dane.test"], MSG)

    assert out.result == "delivered" and out.mx_host == "mx2.dane.test", out.detail
    assert good.wait_for(1)[0].tls


async def test_unsigned_zone_keeps_mta_sts_enforce(
        dns_server, validating_resolver, make_sink, tls, policy_server):
    ctx, cert = server_cert(trustme.CA(), "mx.plain.test")  # a CA nobody trusts
    sink = make_sink("127.0.0.2", tls_context=ctx)
    policy_server.serve("mta-sts.plain.test",
                        "version: STSv1\nmode: enforce\nmx: mx.plain.test\nmax_age: 86400\n")
    dns_server.add_zone(f"""
        plain.test.     300 IN MX 10 mx.plain.test.
        mx.plain.test.  300 IN A 127.0.0.2
        _{sink.port}._tcp.mx.plain.test. 300 IN TLSA {tlsa_for_certificate(cert)}
        {sts_records("plain.test")}
    """)
    resolver = validating_resolver(insecure=["plain.test"])
    e = engine(resolver, sink.port, verify_context=tls.client_context())
    e.mtasts = MtaSts(e._resolver, https_port=policy_server.port,
                      ssl_context=tls.client_context(), fetch_timeout=5.0)

    [out] = await e.deliver("plain.test", "a@src.test", ["ok@plain.test"], MSG)

    assert out.result == "deferred" and "certificate verify failed" in out.detail, out.detail
    assert sink.messages == []


async def test_required_destination_without_tlsa_defers(validating_resolver, make_sink, tls):
    ctx, _ = server_cert(tls.ca, "mx.dane.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    resolver = validating_resolver(signed=[signed(sink.port)])  # signed, no TLSA
    config = ("delivery:\n  dane:\n    destinations:\n"
              "      - {domain: dane.test, mode: required}\n")
    before = count(metrics.DANE_OUTCOMES, "required_unmet")

    [out] = await engine(resolver, sink.port, config).deliver(
        "dane.test", "a@src.test", ["ok@dane.test"], MSG)

    assert out.result == "deferred" and out.reply is None
    assert ("DANE required for dane.test, but no MX host has usable DNSSEC-authenticated "
            f"TLSA records (mx.dane.test: no TLSA record at _{sink.port}._tcp.mx.dane.test)"
            ) in out.detail
    assert sink.messages == []
    assert count(metrics.DANE_OUTCOMES, "required_unmet") == before + 1
    # The same zone without `required` is delivered (opportunistic TLS).
    [out] = await engine(resolver, sink.port).deliver(
        "dane.test", "a@src.test", ["ok@dane.test"], MSG)
    assert out.result == "delivered" and out.tls_version is not None


async def test_failed_tlsa_lookup_skips_that_host(
        dns_server, validating_resolver, make_sink, tls):
    """SERVFAIL for the TLSA records of an authenticated host may be an attacker hiding
    them: that host is not used (RFC 7672 §2.2.2); the next one is."""
    ctx, _ = server_cert(tls.ca, "mx.dane.test")
    first = make_sink("127.0.0.2", tls_context=ctx)
    second = make_sink("127.0.0.3", port=first.port)
    _, cert = server_cert(tls.ca, "mx.dane.test")
    resolver = validating_resolver(signed=[signed(
        first.port, tlsa_for_certificate(cert), extra="""
        dane.test.     300 IN MX 20 mx2.dane.test.
        mx2.dane.test. 300 IN A 127.0.0.3""")])
    dns_server.servfail(f"_{first.port}._tcp.mx.dane.test")

    [out] = await engine(resolver, first.port).deliver("dane.test", "a@src.test",
                                                       ["ok@dane.test"], MSG)

    assert out.result == "delivered" and out.mx_host == "mx2.dane.test", out.detail
    assert f"DANE: skipped mx.dane.test (TLSA look-up for _{first.port}._tcp" in out.detail
    assert first.messages == [] and len(second.wait_for(1)) == 1


def test_config_requires_a_trusted_local_resolver():
    from mta.config import ConfigError

    with pytest.raises(ConfigError, match="DANE needs DNSSEC-authenticated answers"):
        settings_from_text("delivery:\n  dane:\n    mode: opportunistic\n")
    with pytest.raises(ConfigError, match="loopback"):
        settings_from_text("dns:\n  dnssec: trust_ad\n  nameservers: [{address: 192.0.2.1}]\n")
    s = settings_from_text("dns:\n  dnssec: trust_ad\n  nameservers: [{address: 127.0.0.1}]\n")
    assert dane_policy_from_settings(s).mode_for("any.test") == "opportunistic"
    assert dane_policy_from_settings(settings_from_text("")) is None  # off by default
    with pytest.raises(ConfigError, match="smart_host"):
        settings_from_text("dns:\n  dnssec: trust_ad\n  nameservers: [{address: \"::1\"}]\n"
                           "delivery:\n  smart_host: {host: relay.test}\n  dane:\n"
                           "    destinations: [{domain: bank.test, mode: required}]\n")
    s = settings_from_text("dns:\n  dnssec: trust_ad\n  nameservers: [{address: 127.0.0.1}]\n"
                           "delivery:\n  dane:\n    mode: off\n    destinations:\n"
                           "      - {domain: Bank.Test, mode: required}\n"
                           "      - {domain: broken.test, mode: off}\n")
    policy = dane_policy_from_settings(s)
    assert (policy.mode_for("bank.test"), policy.mode_for("broken.test"),
            policy.mode_for("other.test")) == ("required", "off", "off")


async def test_ad_bit_believed_only_with_trust_ad(validating_resolver):
    resolver = validating_resolver(signed=[signed(25)])
    ns = [resolver.nameserver]
    trusting = DnsResolver(ns, trust_ad=True, cache_size=0)
    answer, secure = await trusting.authenticated("mx.dane.test", "A")
    assert answer is not None and secure
    answer, secure = await DnsResolver(ns, cache_size=0).authenticated("mx.dane.test", "A")
    assert answer is not None and not secure


def test_node_defers_a_mismatch_and_says_why_in_the_attempt_line(
        make_node, make_sink, validating_resolver, db_url, tmp_path, tls):
    """The whole path: an MX session forwards to a DANE destination whose certificate
    does not match; `mta queue show` gives the reason."""
    import re
    import smtplib

    from tests.queue.test_queue_tools import MESSAGE, ROUTING, mta, out

    ctx, _ = server_cert(tls.ca, "mx.inbox.test")
    sink = make_sink("127.0.0.2", tls_context=ctx)
    _, other = server_cert(tls.ca, "mx.inbox.test")
    resolver = validating_resolver(
        signed=[signed(sink.port, tlsa_for_certificate(other), origin="inbox.test")],
        insecure=["test"])  # the sender's and our own names: unsigned
    node = make_node({
        "database": {"url": db_url},
        "dns": {"nameservers": [resolver.nameserver], "dnssec": "trust_ad"},
        "inbound": {"policy": {"monitor_only": True}},
        "delivery": {"poll_interval": "0.2s", "port": sink.port},
    })
    cfg = node.config_path
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    mta(cfg, "accounts", "create", "acme")
    mta(cfg, "apply", str(routing))
    mta(cfg, "addresses", "verify", "--email", "you@inbox.test")

    with smtplib.SMTP("127.0.0.1", node.port("mx"), timeout=30) as client:
        client.ehlo("client.sender.test")
        assert client.mail("alice@sender.test")[0] == 250
        assert client.rcpt("hello@example.test")[0] == 250
        code, answer = client.data(MESSAGE)
    assert code == 250, answer
    queue_id = re.search(rb"queued as ([0-9a-f]{32})", answer).group(1).decode()

    shown = out(cfg, "queue", "show", queue_id)
    attempt = next(x for x in shown.splitlines() if "deferred" in x)
    assert (f"DANE: the certificate of mx.inbox.test does not match the TLSA records at "
            f"_{sink.port}._tcp.mx.inbox.test: no TLSA record matched") in attempt, shown
    assert sink.messages == []
