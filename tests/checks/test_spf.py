"""SPF behaviour the RFC 7208 suite does not pin down but the product relies on."""

from __future__ import annotations

import time

import pytest

from mta.checks.spf import check_spf
from mta.dnscache import DnsResolver
from tests.harness import dns_server as harness_dns


@pytest.fixture(scope="module")
def _server():
    # One server for the module: the function-scoped fixture costs ~1 s per teardown.
    server = harness_dns.TestDnsServer().start()
    yield server
    server.stop()


@pytest.fixture
def dns(_server):
    _server.clear()
    return _server


def resolver_for(server, timeout: float = 1.0) -> DnsResolver:
    return DnsResolver([server.nameserver], timeout=timeout, cache_size=0)


async def test_mail_from_identity(dns):
    dns.add_txt("example.test", "v=spf1 ip4:192.0.2.0/24 -all")

    result = await check_spf(resolver_for(dns), "192.0.2.7", "Alice@Example.test", "mx.other.test")

    assert result.result == "pass"
    assert (result.identity, result.domain, result.sender) == (
        "mailfrom", "example.test", "Alice@example.test")
    assert "ip4:192.0.2.0/24" in result.reason


async def test_null_sender_checks_postmaster_at_helo(dns):
    dns.add_txt("mx.sender.test", "v=spf1 -all exp=why.sender.test")
    dns.add_txt("why.sender.test", "%{l} at %{o} via %{h} from %{c}, seen by %{r}")

    result = await check_spf(resolver_for(dns), "192.0.2.7", "", "mx.sender.test",
                             receiver="mx.us.test")

    assert result.result == "fail"
    assert (result.identity, result.domain, result.sender) == (
        "helo", "mx.sender.test", "postmaster@mx.sender.test")
    assert result.explanation == ("postmaster at mx.sender.test via mx.sender.test "
                                  "from 192.0.2.7, seen by mx.us.test")


async def test_servfail_is_temperror_never_none(dns):
    dns.servfail("broken.test")
    result = await check_spf(resolver_for(dns), "192.0.2.7", "a@broken.test", "h.test")
    assert result.result == "temperror"


async def test_servfail_inside_include_is_temperror(dns):
    dns.add_txt("example.test", "v=spf1 include:_spf.broken.test -all")
    dns.servfail("_spf.broken.test")
    result = await check_spf(resolver_for(dns), "192.0.2.7", "a@example.test", "h.test")
    assert result.result == "temperror"


async def test_ptr_name_that_fails_is_skipped_not_temperror(dns):
    # RFC 7208 §5.5: the name whose A lookup fails is skipped and the next one tried.
    dns.add_txt("example.test", "v=spf1 ptr -all")
    dns.add("7.2.0.192.in-addr.arpa", "PTR", "bad.example.test.", "good.example.test.")
    dns.servfail("bad.example.test")
    dns.add("good.example.test", "A", "192.0.2.7")

    result = await check_spf(resolver_for(dns), "192.0.2.7", "a@example.test", "h.test")

    assert result.result == "pass"


async def test_ipv6_client_uses_aaaa(dns):
    dns.add_txt("example.test", "v=spf1 a:mail.example.test -all")
    dns.add("mail.example.test", "AAAA", "2001:db8::25")
    dns.add("mail.example.test", "A", "192.0.2.25")

    r = resolver_for(dns)
    assert (await check_spf(r, "2001:db8::25", "a@example.test", "h.test")).result == "pass"
    assert (await check_spf(r, "::ffff:192.0.2.25", "a@example.test", "h.test")).result == "pass"
    assert (await check_spf(r, "2001:db8::26", "a@example.test", "h.test")).result == "fail"


async def test_whole_check_is_bounded_in_time(dns):
    dns.add_txt("example.test", "v=spf1 include:slow.test -all")
    dns.silence("slow.test")

    started = time.monotonic()
    result = await check_spf(resolver_for(dns, timeout=5.0), "192.0.2.7", "a@example.test",
                             "h.test", timeout=0.3)

    assert result.result == "temperror"
    assert time.monotonic() - started < 2.0


async def test_malformed_client_address_is_permerror(dns):
    result = await check_spf(resolver_for(dns), "999.1.1.1", "a@example.test", "h.test")
    assert result.result == "permerror"
