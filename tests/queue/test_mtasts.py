"""MTA-STS discovery against a real DNS server and a real HTTPS policy host on loopback."""

from __future__ import annotations

import ssl

import pytest
import trustme

from mta.dnscache import DnsResolver
from mta.queue.mtasts import MtaSts, PolicyError, mx_matches, parse_policy, parse_txt
from tests.queue.https_policy_server import PolicyServer

POLICY_HOST_IP = "127.0.0.10"
ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx.dest.test\r\nmx: *.backup.test\r\nmax_age: 86400\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def policy_server(tls):
    server = PolicyServer(POLICY_HOST_IP, tls.server_context(
        "mta-sts.dest.test", "mta-sts.other.test")).start()
    yield server
    server.stop()


def make(dns_server, tls, policy_server, clock=None) -> MtaSts:
    resolver = DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)
    return MtaSts(resolver, https_port=policy_server.port, ssl_context=tls.client_context(),
                  fetch_timeout=5.0, **({"clock": clock} if clock else {}))


def publish(dns_server, domain: str, policy_id: str) -> None:
    dns_server.remove(f"_mta-sts.{domain}", "TXT")
    dns_server.add_txt(f"_mta-sts.{domain}", f"v=STSv1; id={policy_id};")
    dns_server.remove(f"mta-sts.{domain}", "A")
    dns_server.add(f"mta-sts.{domain}", "A", POLICY_HOST_IP)


def test_mx_pattern_matching():
    assert mx_matches("mx.dest.test", "MX.dest.test.")
    assert mx_matches("*.dest.test", "mx1.dest.test")
    assert not mx_matches("*.dest.test", "a.mx1.dest.test")  # one label only (§4.1)
    assert not mx_matches("*.dest.test", "dest.test")
    assert not mx_matches("mx.dest.test", "mx.dest.test.evil")


def test_policy_parsing_is_strict():
    p = parse_policy(ENFORCE, "abc")
    assert (p.mode, p.mx, p.max_age) == ("enforce", ("mx.dest.test", "*.backup.test"), 86400)
    assert p.matches("b1.backup.test") and not p.matches("other.test")
    # LF line ends and unknown keys are fine; max_age is capped at one year.
    p = parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 99999999\nx: y\n", "i")
    assert p.mode == "testing" and p.max_age == 31557600
    for bad in ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
                "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n",
                "version: STSv1\nmode: enforce\nmx: a.test\n",
                "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
                "<html>not a policy</html>"):
        with pytest.raises(PolicyError):
            parse_policy(bad, "i")
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 1\n", "i").mode == "none"


def test_txt_record_parsing():
    assert parse_txt(["v=STSv1; id=20240101T000000;"]) == "20240101T000000"
    assert parse_txt(["v=spf1 -all", "v=STSv1;id=abc"]) == "abc"
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # two records: none (§3.1)
    assert parse_txt(["v=STSv1; id=has-dash"]) is None
    assert parse_txt(["v=STSv1"]) is None


async def test_fetches_over_verified_https_and_caches_by_id(dns_server, tls, policy_server):
    publish(dns_server, "dest.test", "one")
    policy_server.serve("mta-sts.dest.test", ENFORCE)
    clock = Clock()
    sts = make(dns_server, tls, policy_server, clock)

    p = await sts.policy("dest.test")
    assert p is not None and p.mode == "enforce" and p.id == "one"
    assert policy_server.requests == [("mta-sts.dest.test", "/.well-known/mta-sts.txt")]

    assert await sts.policy("dest.test") == p  # same id: served from the cache
    assert len(policy_server.requests) == 1

    publish(dns_server, "dest.test", "two")  # new id: fetched again
    policy_server.serve("mta-sts.dest.test", ENFORCE.replace("enforce", "testing"))
    p2 = await sts.policy("dest.test")
    assert p2 is not None and (p2.id, p2.mode) == ("two", "testing")
    assert len(policy_server.requests) == 2


async def test_cached_policy_survives_dns_and_fetch_failures_until_max_age(
        dns_server, tls, policy_server):
    publish(dns_server, "dest.test", "one")
    policy_server.serve("mta-sts.dest.test", ENFORCE)
    clock = Clock()
    sts = make(dns_server, tls, policy_server, clock)
    assert (await sts.policy("dest.test")).mode == "enforce"

    dns_server.servfail("_mta-sts.dest.test")  # an attacker blocking DNS changes nothing
    assert (await sts.policy("dest.test")).mode == "enforce"
    dns_server.servfail("_mta-sts.dest.test", on=False)

    publish(dns_server, "dest.test", "two")
    policy_server.serve("mta-sts.dest.test", "garbage", status=500)
    assert (await sts.policy("dest.test")).id == "one"  # fetch failed: keep the cached one

    dns_server.remove("_mta-sts.dest.test", "TXT")  # record removed: cached still applies
    assert (await sts.policy("dest.test")).id == "one"

    clock.now += 86401  # past max_age, and nothing live: no policy
    assert await sts.policy("dest.test") is None


async def test_no_policy_without_record_or_with_untrusted_certificate(dns_server, tls):
    other_ca = trustme.CA()  # the policy host's certificate is not from a CA we trust
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other_ca.issue_cert("mta-sts.other.test").configure_cert(ctx)
    server = PolicyServer(POLICY_HOST_IP, ctx).start()
    try:
        server.serve("mta-sts.other.test", ENFORCE)
        sts = make(dns_server, tls, server)
        assert await sts.policy("nothing.test") is None
        publish(dns_server, "other.test", "one")
        assert await sts.policy("other.test") is None
        assert server.requests == []  # the handshake failed before any request
    finally:
        server.stop()


async def test_policy_host_name_must_match_certificate(dns_server, tls, policy_server):
    # The certificate covers mta-sts.dest.test and mta-sts.other.test, not this name.
    publish(dns_server, "third.test", "one")
    policy_server.serve("mta-sts.third.test", ENFORCE)
    sts = make(dns_server, tls, policy_server)
    assert await sts.policy("third.test") is None
    assert policy_server.requests == []
