"""dns.min_ttl and dns.max_ttl bound how long the resolver keeps an answer."""

from __future__ import annotations

import asyncio

from mta.config_load import settings_from_text
from mta.dnscache import DnsResolver


def resolver(dns_server, min_ttl: str, max_ttl: str) -> DnsResolver:
    ns = dns_server.nameserver
    settings = settings_from_text(
        f"dns:\n  nameservers: [{{address: {ns['address']}, port: {ns['port']}}}]\n"
        f"  min_ttl: {min_ttl}\n  max_ttl: {max_ttl}\n")
    return DnsResolver.from_settings(settings.dns)


async def test_min_ttl_keeps_a_zero_ttl_answer(dns_server):
    dns_server.add("host.ttl.test", "A", "192.0.2.1", ttl=0)
    kept, fresh = resolver(dns_server, "1h", "1d"), resolver(dns_server, "0s", "1d")
    assert await kept.addresses("host.ttl.test") == ["192.0.2.1"]
    assert await fresh.addresses("host.ttl.test") == ["192.0.2.1"]
    dns_server.remove("host.ttl.test", "A")
    dns_server.add("host.ttl.test", "A", "192.0.2.2", ttl=0)
    assert await kept.addresses("host.ttl.test") == ["192.0.2.1"]  # cached for min_ttl
    assert await fresh.addresses("host.ttl.test") == ["192.0.2.2"]


async def test_max_ttl_caps_a_long_ttl(dns_server):
    dns_server.add("host.ttl.test", "A", "192.0.2.1", ttl=86400)
    capped = resolver(dns_server, "0s", "1s")
    assert await capped.addresses("host.ttl.test") == ["192.0.2.1"]
    dns_server.remove("host.ttl.test", "A")
    dns_server.add("host.ttl.test", "A", "192.0.2.2", ttl=86400)
    assert await capped.addresses("host.ttl.test") == ["192.0.2.1"]
    await asyncio.sleep(1.2)
    assert await capped.addresses("host.ttl.test") == ["192.0.2.2"]


async def test_a_cached_answer_is_not_asked_again_and_the_cache_stays_bounded(dns_server):
    for i in range(3):
        dns_server.add(f"h{i}.ttl.test", "A", f"192.0.2.{i + 1}", ttl=3600)
    ns = dns_server.nameserver
    small = DnsResolver([ns], cache_size=2)
    for _ in range(3):
        assert await small.addresses("h0.ttl.test") == ["192.0.2.1"]
    asked = len(dns_server.queries)
    assert await small.addresses("h0.ttl.test") == ["192.0.2.1"]
    assert len(dns_server.queries) == asked  # served from the cache
    for i in range(3):
        assert await small.addresses(f"h{i}.ttl.test") == [f"192.0.2.{i + 1}"]
    assert len(small._front) <= 2
