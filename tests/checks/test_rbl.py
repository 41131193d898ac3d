"""RBL/DNSBL check against block-list zones served by the real loopback DNS server."""

from __future__ import annotations

import logging
import time

import pytest

from mta.checks.rbl import RblChecker, rbl_query_name
from mta.dnscache import DnsResolver


def resolver_for(dns_server, timeout: float = 1.0, cache_size: int = 0) -> DnsResolver:
    return DnsResolver([dns_server.nameserver], timeout=timeout, cache_size=cache_size)


async def test_ipv4_listed_reports_zone_code_and_reason(dns_server):
    dns_server.add("1.2.0.192.bl.test", "A", "127.0.0.2")
    dns_server.add_txt("1.2.0.192.bl.test", "Listed: see https://bl.test/192.0.2.1")
    checker = RblChecker(resolver_for(dns_server), ["bl.test"], [])

    result = await checker.check("192.0.2.1")

    assert result.listed
    assert result.zone == "bl.test"
    assert result.answer == "127.0.0.2"
    assert result.reason == "Listed: see https://bl.test/192.0.2.1"
    assert result.errors == [] and not result.skipped_by_allowlist


async def test_ipv6_listed_under_its_nibble_name(dns_server):
    # RFC 5782 §2.4: 32 nibbles, least significant first.
    name = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl6.test"
    dns_server.add(name, "A", "127.0.0.3")
    checker = RblChecker(resolver_for(dns_server), ["bl6.test"], [])

    result = await checker.check("2001:db8::1")

    assert result.listed and result.zone == "bl6.test" and result.answer == "127.0.0.3"
    assert result.reason is None  # no TXT published: still listed
    assert (name + ".", "A") in dns_server.queries
    assert rbl_query_name("2001:db8::1", "bl6.test") == name


async def test_ipv4_mapped_client_is_looked_up_as_ipv4(dns_server):
    dns_server.add("1.2.0.192.bl.test", "A", "127.0.0.2")
    checker = RblChecker(resolver_for(dns_server), ["bl.test"], [])

    assert (await checker.check("::ffff:192.0.2.1")).listed


async def test_not_listed(dns_server):
    dns_server.add("9.2.0.192.bl.test", "A", "127.0.0.2")  # the zone exists, our IP is not in it
    checker = RblChecker(resolver_for(dns_server), ["bl.test", "other.test"], [])

    result = await checker.check("192.0.2.1")

    assert not result.listed and result.zone is None and result.errors == []
    assert {q for q in dns_server.queries} == {("1.2.0.192.bl.test.", "A"),
                                               ("1.2.0.192.other.test.", "A")}


async def test_allowlisted_network_is_not_queried(dns_server):
    dns_server.add("3.2.1.10.bl.test", "A", "127.0.0.2")
    checker = RblChecker(resolver_for(dns_server), ["bl.test"], ["10.0.0.0/8", "2001:db8::/32"])

    assert (await checker.check("10.1.2.3")).skipped_by_allowlist
    result = await checker.check("2001:db8::5")

    assert result.skipped_by_allowlist and not result.listed
    assert dns_server.queries == []


async def test_servfail_zone_fails_open_while_another_lists(dns_server, caplog):
    dns_server.servfail("1.2.0.192.broken.test")
    dns_server.add("1.2.0.192.bl.test", "A", "127.0.0.4")
    checker = RblChecker(resolver_for(dns_server), ["broken.test", "bl.test"], [])

    with caplog.at_level(logging.WARNING, logger="mta.checks.rbl"):
        result = await checker.check("192.0.2.1")

    assert result.listed and result.zone == "bl.test" and result.answer == "127.0.0.4"
    assert result.errors == ["broken.test"]
    assert any("broken.test" in r.getMessage() for r in caplog.records)


async def test_only_failing_zones_mean_not_listed(dns_server):
    dns_server.servfail("1.2.0.192.broken.test")
    checker = RblChecker(resolver_for(dns_server), ["broken.test"], [])

    result = await checker.check("192.0.2.1")

    assert not result.listed and result.errors == ["broken.test"]


async def test_first_configured_zone_is_reported(dns_server):
    dns_server.add("1.2.0.192.a.test", "A", "127.0.0.2")
    dns_server.add("1.2.0.192.b.test", "A", "127.0.0.10")
    checker = RblChecker(resolver_for(dns_server), ["b.test", "a.test"], [])

    result = await checker.check("192.0.2.1")

    assert result.zone == "b.test" and result.answer == "127.0.0.10"
    assert result.listed_zones == ["b.test", "a.test"]


async def test_answers_outside_loopback_are_ignored_and_logged(dns_server, caplog):
    dns_server.add("1.2.0.192.wild.test", "A", "198.51.100.7")  # a wildcard/parked zone
    dns_server.add("1.2.0.192.refused.test", "A", "127.255.255.254")  # "public resolver"
    checker = RblChecker(resolver_for(dns_server), ["wild.test", "refused.test"], [])

    with caplog.at_level(logging.WARNING, logger="mta.checks.rbl"):
        result = await checker.check("192.0.2.1")

    assert not result.listed
    assert result.errors == ["refused.test"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "198.51.100.7" in messages and "127.255.255.254" in messages


async def test_zones_are_queried_in_parallel(dns_server):
    zones = ["slow1.test", "slow2.test", "slow3.test"]
    for zone in zones:
        dns_server.silence(f"1.2.0.192.{zone}")
    checker = RblChecker(resolver_for(dns_server, timeout=0.4), zones, [])

    started = time.monotonic()
    result = await checker.check("192.0.2.1")
    elapsed = time.monotonic() - started

    assert not result.listed and result.errors == zones  # timeouts fail open too
    assert elapsed < 1.0, f"three 0.4 s timeouts took {elapsed:.2f} s: not in parallel"


async def test_answers_are_cached(dns_server):
    dns_server.add("1.2.0.192.bl.test", "A", "127.0.0.2")
    checker = RblChecker(resolver_for(dns_server, cache_size=100), ["bl.test"], [])

    first = await checker.check("192.0.2.1")
    asked = len(dns_server.queries)
    second = await checker.check("192.0.2.1")
    assert (await checker.check("192.0.2.9")).listed is False
    await checker.check("192.0.2.9")

    assert first == second and first.listed
    assert len(dns_server.queries) == asked + 1  # only 192.0.2.9, once


async def test_malformed_address_is_an_error():
    # Never queried: the address is refused before any lookup.
    checker = RblChecker(DnsResolver([{"address": "127.0.0.1", "port": 9}]), ["bl.test."], [])
    assert checker.zones == ["bl.test"]
    with pytest.raises(ValueError):
        await checker.check("not-an-ip")
