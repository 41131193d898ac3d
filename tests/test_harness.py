"""The real peers every other test relies on do what they claim."""

import smtplib

import pytest
from sqlalchemy import select

from mta.dnscache import DnsResolver, DnsTempError
from mta.store.models import Account


async def test_dns_server_answers_records_servfail_and_silence(dns_server):
    dns_server.add_zone("""
        example.test.     300 IN MX 10 mx.example.test.
        mx.example.test.  300 IN A 127.0.0.2
        mx.example.test.  300 IN AAAA ::1
        alias.example.test. 300 IN CNAME mx.example.test.
        2.0.0.127.in-addr.arpa. 300 IN PTR mx.example.test.
    """)
    dns_server.add_txt("example.test", "v=spf1 ip4:127.0.0.0/8 " + "x" * 300 + " -all")
    dns_server.servfail("_dmarc.example.test")
    dns_server.silence("slow.example.test")
    r = DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)

    assert await r.mx("example.test") == [(10, "mx.example.test")]
    assert await r.addresses("mx.example.test") == ["127.0.0.2"]
    assert await r.addresses("mx.example.test", "AAAA") == ["::1"]
    assert await r.addresses("alias.example.test") == ["127.0.0.2"]
    assert await r.ptr("127.0.0.2") == ["mx.example.test"]
    [spf] = await r.txt("example.test")  # longer than 255 bytes: split and rejoined
    assert spf.startswith("v=spf1 ip4:127.0.0.0/8 xxx") and spf.endswith(" -all")
    assert await r.txt("nothing.example.test") == []
    with pytest.raises(DnsTempError):
        await r.txt("_dmarc.example.test")
    with pytest.raises(DnsTempError):
        await r.txt("slow.example.test")


def test_smtp_sink_records_and_scripts_replies(make_sink, tls):
    sink = make_sink("127.0.0.3", tls_context=tls.server_context("sink.test"))
    sink.rcpt_replies["bad@dest.test"] = "550 5.1.1 no such user"
    with smtplib.SMTP(sink.address, sink.port) as c:
        c.ehlo("client.test")
        c.starttls(context=_ctx(tls))
        c.ehlo("client.test")
        refused = c.sendmail("a@src.test", ["ok@dest.test", "bad@dest.test"],
                             b"Subject: hi\r\n\r\nbody\r\n")
    assert refused == {"bad@dest.test": (550, b"5.1.1 no such user")}
    [msg] = sink.wait_for(1)
    assert msg.rcpt_tos == ["ok@dest.test"] and msg.tls and b"body" in msg.data


def _ctx(tls):
    ctx = tls.client_context()
    ctx.check_hostname = False
    return ctx


async def test_postgres_row_round_trip(db):
    async with db.session() as s:
        s.add(Account(id="a" * 32, name="Example"))
    async with db.session() as s:
        names = (await s.scalars(select(Account.name))).all()
    assert names == ["Example"]


async def test_validating_resolver_sets_ad_only_for_signed_zones(dns_server,
                                                                validating_resolver):
    import dns.flags
    import dns.rcode

    from tests.harness.dnssec import SignedZone

    signed = SignedZone("signed.test", """
        signed.test.              300 IN MX 10 mx.signed.test.
        mx.signed.test.           300 IN A 127.0.0.2
        _25._tcp.mx.signed.test.  300 IN TLSA 3 1 1 """ + "ab" * 32)
    forged = SignedZone("forged.test", "mx.forged.test. 300 IN A 127.0.0.3", bogus=True)
    dns_server.add_zone("mx.plain.test. 300 IN A 127.0.0.4")
    resolver = validating_resolver(signed=[signed, forged], insecure=["plain.test"])

    def ask(name, rdtype):
        m = resolver.query(name, rdtype)
        return dns.rcode.to_text(m.rcode()), bool(m.flags & dns.flags.AD), len(m.answer)

    assert ask("_25._tcp.mx.signed.test", "TLSA") == ("NOERROR", True, 1)
    assert ask("mx.signed.test", "AAAA") == ("NOERROR", True, 0)  # NSEC-proved NODATA
    assert ask("nothing.signed.test", "A") == ("NXDOMAIN", True, 0)  # NSEC-proved
    assert ask("_tcp.mx.signed.test", "A") == ("NOERROR", True, 0)  # empty non-terminal
    assert ask("mx.plain.test", "A") == ("NOERROR", False, 1)  # insecure: no AD
    assert ask("mx.forged.test", "A") == ("SERVFAIL", False, 0)  # bogus: refused
