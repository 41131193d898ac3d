"""pyspf as an independent oracle for our SPF evaluator (mta/checks/spf.py).

At run time our own evaluator is used (async, on the node's resolver, with DnsTempError
as temperror); pyspf, the reference Python implementation, is kept here to judge it:
for each case both evaluate the same records, served by the same loopback DNS server,
and must agree. Known differences are listed in KNOWN_DIFFERENCES with their RFC reason
and asserted as such (so a change on either side is noticed).
"""

from __future__ import annotations

import asyncio

import dns.resolver
import pytest
import spf

from mta.checks.spf import check_spf
from mta.dnscache import DnsResolver
from tests.harness import dns_server as harness_dns

# (name, records {name: [TXT...]} plus A/MX entries, client ip, MAIL FROM)
CASES = [
    ("ip4 pass", {"a.test": ["v=spf1 ip4:192.0.2.0/24 -all"]}, "192.0.2.7", "x@a.test"),
    ("fail", {"a.test": ["v=spf1 ip4:192.0.2.0/24 -all"]}, "198.51.100.1", "x@a.test"),
    ("softfail", {"a.test": ["v=spf1 ~all"]}, "198.51.100.1", "x@a.test"),
    ("neutral", {"a.test": ["v=spf1 ?all"]}, "198.51.100.1", "x@a.test"),
    ("none", {}, "198.51.100.1", "x@a.test"),
    ("no all: neutral", {"a.test": ["v=spf1 ip4:192.0.2.1"]}, "198.51.100.1", "x@a.test"),
    ("include pass", {"a.test": ["v=spf1 include:b.test -all"],
                      "b.test": ["v=spf1 ip4:198.51.100.0/24 -all"]}, "198.51.100.9",
     "x@a.test"),
    ("include fail is no match", {"a.test": ["v=spf1 include:b.test ~all"],
                                  "b.test": ["v=spf1 -all"]}, "198.51.100.9", "x@a.test"),
    ("redirect", {"a.test": ["v=spf1 redirect=b.test"], "b.test": ["v=spf1 -all"]},
     "198.51.100.9", "x@a.test"),
    ("a mechanism", {"a.test": ["v=spf1 a -all"], "A:a.test": ["198.51.100.3"]},
     "198.51.100.3", "x@a.test"),
    ("mx mechanism", {"a.test": ["v=spf1 mx -all"], "MX:a.test": ["10 mx.a.test."],
                      "A:mx.a.test": ["198.51.100.4"]}, "198.51.100.4", "x@a.test"),
    ("two records: permerror", {"a.test": ["v=spf1 -all", "v=spf1 +all"]}, "192.0.2.1",
     "x@a.test"),
    ("unknown mechanism: permerror", {"a.test": ["v=spf1 frob -all"]}, "192.0.2.1",
     "x@a.test"),
    ("include without record: permerror", {"a.test": ["v=spf1 include:nothing.test -all"]},
     "192.0.2.1", "x@a.test"),
    ("too many lookups: permerror",
     {"a.test": ["v=spf1 " + " ".join(f"include:i{n}.test" for n in range(11)) + " -all"],
      **{f"i{n}.test": ["v=spf1 ?all"] for n in range(11)}}, "192.0.2.1", "x@a.test"),
    ("macro %{d}", {"a.test": ["v=spf1 include:%{d}.spf.test -all"],
                    "a.test.spf.test": ["v=spf1 ip4:192.0.2.5 -all"]}, "192.0.2.5",
     "x@a.test"),
    ("ip6", {"a.test": ["v=spf1 ip6:2001:db8::/32 -all"]}, "2001:db8::5", "x@a.test"),
    ("void lookups over 2: permerror",
     {"a.test": ["v=spf1 a:v1.test a:v2.test a:v3.test -all"]}, "192.0.2.1", "x@a.test"),
    ("exists", {"a.test": ["v=spf1 exists:%{i}.ok.test -all"], "A:192.0.2.8.ok.test":
                ["127.0.0.2"]}, "192.0.2.8", "x@a.test"),
    ("null sender uses HELO", {"client.test": ["v=spf1 ip4:192.0.2.9 -all"]}, "192.0.2.9",
     ""),
]

# case name -> (ours, pyspf's, why they differ). None on these cases today; the one
# difference by design is outside them: a DNS timeout or SERVFAIL is temperror for us
# in every position (RFC 7208 §4.4, §5), which the MX turns into 451, never "no record".
KNOWN_DIFFERENCES: dict[str, tuple[str, str, str]] = {}


@pytest.fixture(scope="module")
def server():
    s = harness_dns.TestDnsServer().start()
    yield s
    s.stop()


def _publish(server, records: dict) -> None:
    server.clear()
    for key, values in records.items():
        rtype, _, name = key.rpartition(":") if ":" in key else ("TXT", "", key)
        for value in values:
            if rtype == "TXT":
                server.add_txt(name, value)
            else:
                server.add(name, rtype, value)


def _pyspf(server, ip: str, sender: str) -> str:
    """pyspf's verdict, its resolver pointed at the same DNS server (configuration of
    the library's own dnspython resolver, nothing replaced)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.nameserver["address"]]
    resolver.port = server.nameserver["port"]
    saved, dns.resolver.default_resolver = dns.resolver.default_resolver, resolver
    try:
        result, _explanation = spf.check2(i=ip, s=sender, h="client.test", querytime=5)
    finally:
        dns.resolver.default_resolver = saved
    return result


@pytest.mark.filterwarnings("ignore:please use dns.resolver.resolve:DeprecationWarning")
@pytest.mark.parametrize("name, records, ip, sender", CASES, ids=[c[0] for c in CASES])
def test_our_spf_agrees_with_pyspf(server, name, records, ip, sender):
    _publish(server, records)
    ours = asyncio.run(check_spf(DnsResolver([server.nameserver], timeout=3, cache_size=0),
                                 ip, sender, "client.test")).result
    theirs = _pyspf(server, ip, sender)
    if name in KNOWN_DIFFERENCES:
        expected_ours, expected_theirs, _why = KNOWN_DIFFERENCES[name]
        assert (ours, theirs) == (expected_ours, expected_theirs)
    else:
        assert ours == theirs, f"{name}: ours {ours}, pyspf {theirs}"
