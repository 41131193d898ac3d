"""Remote delivery against real SMTP sinks, a real DNS server and real TLS on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from mta.dnscache import DnsResolver
from mta.queue.mtasts import MtaSts
from mta.queue.remote import RemoteDelivery, SmartHost, _order
from tests.harness.smtp_sink import _free_port
from tests.queue.https_policy_server import PolicyServer

MSG = b"From: a@src.test\r\nTo: ok@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"
POLICY_IP = "127.0.0.11"


def resolver(dns_server) -> DnsResolver:
    return DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)


def engine(dns_server, port: int, **kw) -> RemoteDelivery:
    return RemoteDelivery(resolver(dns_server), "mta.src.test", port=port,
                          connect_timeout=3.0, command_timeout=5.0, data_timeout=5.0, **kw)


@pytest.fixture
def policy_server(tls) -> Iterator[PolicyServer]:
    server = PolicyServer(POLICY_IP, tls.server_context("mta-sts.dest.test")).start()
    yield server
    server.stop()


def publish_policy(dns_server, server: PolicyServer, mode: str, mx: str = "mx.dest.test"):
    dns_server.add_txt("_mta-sts.dest.test", "v=STSv1; id=20240101;")
    dns_server.add("mta-sts.dest.test", "A", POLICY_IP)
    server.serve("mta-sts.dest.test",
                 f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")


def mtasts(dns_server, tls, server: PolicyServer) -> MtaSts:
    return MtaSts(resolver(dns_server), https_port=server.port,
                  ssl_context=tls.client_context(), fetch_timeout=5.0)


async def test_first_mx_down_delivers_to_second(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone("""
        dest.test.      300 IN MX 10 mx1.dest.test.
        dest.test.      300 IN MX 20 mx2.dest.test.
        mx1.dest.test.  300 IN A 127.0.0.3
        mx2.dest.test.  300 IN A 127.0.0.2
    """)  # nothing listens on 127.0.0.3 at the sink's port
    [out] = await engine(dns_server, sink.port).deliver("dest.test", "a@src.test",
                                                        ["ok@dest.test"], MSG)
    assert out.result == "delivered", out
    assert (out.mx_host, out.ip, out.reply.code) == ("mx2.dest.test", "127.0.0.2", 250)
    [msg] = sink.wait_for(1)
    assert msg.rcpt_tos == ["ok@dest.test"] and msg.mail_from == "a@src.test"
    assert msg.helo == "mta.src.test"


async def test_session_lost_before_data_moves_on_to_next_mx(dns_server, make_sink):
    first = make_sink("127.0.0.3")
    second = make_sink("127.0.0.2", port=first.port)
    first.rcpt_replies["ok@dest.test"] = "421 4.3.2 shutting down"
    first.rcpt_replies["gone@dest.test"] = "550 5.1.1 no such user"
    dns_server.add_zone("""
        dest.test.      300 IN MX 10 mx1.dest.test.
        dest.test.      300 IN MX 20 mx2.dest.test.
        mx1.dest.test.  300 IN A 127.0.0.3
        mx2.dest.test.  300 IN A 127.0.0.2
    """)
    gone, ok = await engine(dns_server, first.port).deliver(
        "dest.test", "a@src.test", ["gone@dest.test", "ok@dest.test"], MSG)
    assert (gone.result, gone.mx_host) == ("failed", "mx1.dest.test")  # settled by mx1
    assert (ok.result, ok.mx_host) == ("delivered", "mx2.dest.test")
    assert [m.rcpt_tos for m in second.wait_for(1)] == [["ok@dest.test"]]
    assert first.messages == []


async def test_all_mx_down_defers_with_detail(dns_server):
    port = _free_port("127.0.0.3")
    dns_server.add_zone("""
        dest.test.      300 IN MX 10 mx1.dest.test.
        dest.test.      300 IN MX 20 mx2.dest.test.
        mx1.dest.test.  300 IN A 127.0.0.3
        mx2.dest.test.  300 IN A 127.0.0.4
    """)
    outs = await engine(dns_server, port).deliver("dest.test", "a@src.test",
                                                  ["x@dest.test", "y@dest.test"], MSG)
    assert [o.result for o in outs] == ["deferred", "deferred"]
    assert "mx1.dest.test" in outs[0].detail and "mx2.dest.test" in outs[0].detail


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no ::1 on this host (`ip -6 addr show lo` "
                    "shows none), so an IPv6 sink cannot listen")
async def test_ipv6_address_tried_before_ipv4(dns_server, make_sink):
    sink6 = make_sink("::1")
    sink4 = make_sink("127.0.0.2", port=sink6.port)
    dns_server.add_zone("""
        dest.test.     300 IN MX 10 mx.dest.test.
        mx.dest.test.  300 IN A 127.0.0.2
        mx.dest.test.  300 IN AAAA ::1
    """)
    [out] = await engine(dns_server, sink6.port).deliver("dest.test", "a@src.test",
                                                         ["ok@dest.test"], MSG)
    assert (out.result, out.ip) == ("delivered", "::1")
    assert len(sink6.wait_for(1)) == 1 and sink4.messages == []


async def test_implicit_mx_from_address_records(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    dns_server.add("dest.test", "A", "127.0.0.2")
    [out] = await engine(dns_server, sink.port).deliver("dest.test", "a@src.test",
                                                        ["ok@dest.test"], MSG)
    assert (out.result, out.mx_host) == ("delivered", "dest.test")


async def test_domain_without_mx_or_address_fails(dns_server):
    dns_server.add("other.test", "A", "127.0.0.9")  # some data, but none for dest.test
    [out] = await engine(dns_server, 2525).deliver("dest.test", "a@src.test",
                                                   ["ok@dest.test"], MSG)
    assert (out.result, out.reply.enhanced) == ("failed", "5.1.2")


async def test_greeting_refusal_tries_next_mx_and_defers_without_a_reply(dns_server, make_sink):
    dns_server.add_zone("""
        dest.test.      300 IN MX 10 mx1.dest.test.
        mx1.dest.test.  300 IN A 127.0.0.3
    """)
    port = _free_port("127.0.0.3")
    listener = socket.socket()
    listener.bind(("127.0.0.3", port))
    listener.listen()
    accepted = []

    async def greet_and_refuse():
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        conn, _ = await loop.sock_accept(listener)
        accepted.append(conn)
        await loop.sock_sendall(conn, b"554 5.7.1 go away\r\n")

    task = asyncio.create_task(greet_and_refuse())
    try:
        [out] = await engine(dns_server, port).deliver("dest.test", "a@src.test",
                                                       ["ok@dest.test"], MSG)
    finally:
        await task
        for c in accepted:
            c.close()
        listener.close()
    assert out.result == "deferred" and out.reply is None
    assert "554" in out.detail and "go away" in out.detail


async def test_null_mx_fails_permanently_without_connecting(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone("""
        dest.test.  300 IN MX 0 .
        dest.test.  300 IN A 127.0.0.2
    """)
    [out] = await engine(dns_server, sink.port).deliver("dest.test", "a@src.test",
                                                        ["ok@dest.test"], MSG)
    assert out.result == "failed"
    assert (out.reply.code, out.reply.enhanced) == (556, "5.1.10")
    assert out.ip is None and sink.messages == []
    assert ("dest.test.", "A") not in dns_server.queries  # not even an address lookup


async def test_dns_failure_defers(dns_server):
    dns_server.servfail("dest.test")
    [out] = await engine(dns_server, 2525).deliver("dest.test", "a@src.test",
                                                   ["ok@dest.test"], MSG)
    assert out.result == "deferred" and "MX lookup failed" in out.detail


async def test_per_recipient_replies_are_honoured(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    sink.rcpt_replies["bad@dest.test"] = "550 5.1.1 no such user"
    sink.rcpt_replies["full@dest.test"] = "452 4.2.2 mailbox full"
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    outs = await engine(dns_server, sink.port).deliver(
        "dest.test", "a@src.test", ["bad@dest.test", "ok@dest.test", "full@dest.test"], MSG)
    by = {o.recipient: o for o in outs}
    assert [o.recipient for o in outs] == ["bad@dest.test", "ok@dest.test", "full@dest.test"]
    assert by["bad@dest.test"].result == "failed"
    assert (by["bad@dest.test"].reply.code, by["bad@dest.test"].reply.enhanced,
            by["bad@dest.test"].reply.text) == (550, "5.1.1", "no such user")
    assert by["ok@dest.test"].result == "delivered"
    assert by["full@dest.test"].result == "deferred"
    assert by["full@dest.test"].reply.enhanced == "4.2.2"
    [msg] = sink.wait_for(1)
    assert msg.rcpt_tos == ["ok@dest.test"]


@pytest.mark.parametrize(("reply", "result"), [("451 4.3.0 try later", "deferred"),
                                               ("554 5.6.0 content rejected", "failed")])
async def test_data_reply_settles_all_accepted_recipients(dns_server, make_sink, reply, result):
    sink = make_sink("127.0.0.2")
    sink.rcpt_replies["bad@dest.test"] = "550 5.1.1 no such user"
    sink.data_replies.append(reply)
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    outs = await engine(dns_server, sink.port).deliver(
        "dest.test", "a@src.test", ["a@dest.test", "b@dest.test", "bad@dest.test"], MSG)
    assert [o.result for o in outs] == [result, result, "failed"]
    assert str(outs[0].reply) == reply
    assert outs[2].reply.code == 550 and sink.messages == []


async def test_starttls_used_whenever_offered(dns_server, make_sink, tls):
    # The certificate names another host: without MTA-STS that must not stop TLS.
    sink = make_sink("127.0.0.2", tls_context=tls.server_context("sink.test"))
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    [out] = await engine(dns_server, sink.port).deliver("dest.test", "a@src.test",
                                                        ["ok@dest.test"], MSG)
    assert out.result == "delivered" and out.tls_version in ("TLSv1.2", "TLSv1.3")
    assert sink.wait_for(1)[0].tls


async def test_bare_line_ends_are_normalised(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    dns_server.add("dest.test", "A", "127.0.0.2")
    raw = b"Subject: x\nFrom: a@src.test\r\n\nline one\rline two\n.hidden\nend"
    [out] = await engine(dns_server, sink.port).deliver("dest.test", "a@src.test",
                                                        ["ok@dest.test"], raw)
    assert out.result == "delivered"
    data = sink.wait_for(1)[0].data
    assert data.replace(b"\r\n", b"").count(b"\n") == 0
    assert data.replace(b"\r\n", b"").count(b"\r") == 0
    assert b"line one\r\nline two\r\n.hidden\r\nend" in data


async def test_mta_sts_enforce_without_starttls_defers_and_sends_nothing(
        dns_server, make_sink, tls, policy_server):
    sink = make_sink("127.0.0.2")  # no STARTTLS offered
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    publish_policy(dns_server, policy_server, "enforce")
    e = engine(dns_server, sink.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server))
    [out] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert out.result == "deferred" and "STARTTLS" in out.detail
    assert sink.messages == []


async def test_mta_sts_enforce_with_wrong_certificate_name_defers(
        dns_server, make_sink, tls, policy_server):
    sink = make_sink("127.0.0.2", tls_context=tls.server_context("other.test"))
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    publish_policy(dns_server, policy_server, "enforce")
    e = engine(dns_server, sink.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server))
    [out] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert out.result == "deferred" and "TLS" in out.detail
    assert sink.messages == []


async def test_mta_sts_enforce_skips_mx_outside_policy(
        dns_server, make_sink, tls, policy_server):
    sink = make_sink("127.0.0.2", tls_context=tls.server_context("rogue.test"))
    dns_server.add_zone("dest.test. 300 IN MX 10 rogue.test.\n"
                        "rogue.test. 300 IN A 127.0.0.2")
    publish_policy(dns_server, policy_server, "enforce")
    e = engine(dns_server, sink.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server))
    [out] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert out.result == "deferred" and "matches the policy" in out.detail
    assert out.ip is None and sink.messages == []


async def test_mta_sts_enforce_with_valid_certificate_delivers_over_tls(
        dns_server, make_sink, tls, policy_server):
    sink = make_sink("127.0.0.2", tls_context=tls.server_context("mx.dest.test"))
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    publish_policy(dns_server, policy_server, "enforce", mx="*.dest.test")
    e = engine(dns_server, sink.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server))
    [out] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert out.result == "delivered", out
    assert out.tls_version in ("TLSv1.2", "TLSv1.3") and out.detail is None
    assert sink.wait_for(1)[0].tls


async def test_mta_sts_testing_without_tls_delivers_and_records(
        dns_server, make_sink, tls, policy_server):
    sink = make_sink("127.0.0.2")
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    publish_policy(dns_server, policy_server, "testing")
    e = engine(dns_server, sink.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server))
    [out] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert out.result == "delivered" and out.tls_version is None
    assert "MTA-STS testing" in out.detail and "STARTTLS" in out.detail
    assert not sink.wait_for(1)[0].tls


async def test_mta_sts_testing_with_bad_certificate_still_uses_tls(
        dns_server, make_sink, tls, policy_server):
    sink = make_sink("127.0.0.2", tls_context=tls.server_context("other.test"))
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    publish_policy(dns_server, policy_server, "testing")
    e = engine(dns_server, sink.port, verify_context=tls.client_context(),
               mtasts=mtasts(dns_server, tls, policy_server))
    [out] = await e.deliver("dest.test", "a@src.test", ["ok@dest.test"], MSG)
    assert out.result == "delivered" and out.tls_version is not None
    assert "verify" in out.detail
    assert sink.wait_for(1)[0].tls


async def test_one_session_carries_several_messages(dns_server, make_sink, tls):
    sink = make_sink("127.0.0.2", tls_context=tls.server_context("mx.dest.test"))
    sink.rcpt_replies["bad@dest.test"] = "550 5.1.1 no such user"
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    e = engine(dns_server, sink.port)
    async with e.open_session("dest.test") as session:
        results = []
        for i in range(3):
            raw = MSG.replace(b"hello", b"message %d" % i)
            rcpts = [f"u{i}@dest.test"] + (["bad@dest.test"] if i == 1 else [])
            results.append(await session.send("a@src.test", rcpts, raw))
    assert session.connections == 1
    assert [[o.result for o in r] for r in results] == [
        ["delivered"], ["delivered", "failed"], ["delivered"]]
    msgs = sink.wait_for(3)
    assert [m.rcpt_tos for m in msgs] == [["u0@dest.test"], ["u1@dest.test"], ["u2@dest.test"]]
    assert [b"message %d" % i in m.data for i, m in enumerate(msgs)] == [True] * 3
    assert len({m.peer for m in msgs}) == 1  # one TCP connection (same client port)


def test_equal_preferences_are_shuffled_and_order_kept():
    seen = Counter(tuple(_order([(10, "a"), (10, "b"), (20, "c"), (5, "z")]))
                   for _ in range(200))
    assert set(seen) == {("z", "a", "b", "c"), ("z", "b", "a", "c")}


# -- smart host: STARTTLS with a verified certificate, then AUTH ------------------------


class _RelayHandler:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bool]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                              session.ssl is not None and session.authenticated))
        return "250 2.0.0 relayed"


@pytest.fixture
def relay(tls) -> Iterator[tuple[_RelayHandler, int]]:
    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (auth_data.login, auth_data.password) == (b"user", b"pw")
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends 535

    handler = _RelayHandler()
    port = _free_port("127.0.0.4")
    controller = Controller(handler, hostname="127.0.0.4", port=port,
                            server_hostname="relay.test",
                            tls_context=tls.server_context("relay.test"),
                            authenticator=authenticator, auth_require_tls=True)
    controller.start()
    yield handler, port
    controller.stop()


async def test_smart_host_with_starttls_and_auth(dns_server, tls, relay):
    handler, port = relay
    dns_server.add("relay.test", "A", "127.0.0.4")  # destination domain has no DNS at all
    smart = SmartHost("relay.test", port, tls="starttls", username="user", password="pw")
    e = engine(dns_server, 25, verify_context=tls.client_context(), smart_host=smart)
    [out] = await e.deliver("far.test", "a@src.test", ["x@far.test"], MSG)
    assert (out.result, out.mx_host, out.ip) == ("delivered", "relay.test", "127.0.0.4")
    assert handler.received == [("a@src.test", ["x@far.test"], True)]
    assert "pw" not in repr(smart)

    bad = SmartHost("relay.test", port, username="user", password="wrong")
    e = engine(dns_server, 25, verify_context=tls.client_context(), smart_host=bad)
    [out] = await e.deliver("far.test", "a@src.test", ["x@far.test"], MSG)
    assert out.result == "deferred" and "AUTH" in out.detail and len(handler.received) == 1



async def test_configured_smart_host_takes_all_mail(dns_server, make_sink):
    """delivery.smart_host in the config: mail for a domain with no DNS at all goes to
    the relay, and the password may come from the environment."""
    from mta.config_load import settings_from_text
    from mta.dnscache import DnsResolver
    from mta.queue.remote import remote_delivery_from_settings

    sink = make_sink("127.0.0.6")
    settings = settings_from_text(
        f"node: {{hostname: out.test}}\n"
        f"delivery:\n  smart_host: {{host: 127.0.0.6, port: {sink.port}, tls: none}}\n",
        env={"MTA_SMART_HOST_PASSWORD": "from-env"})
    assert settings.delivery.smart_host.password == "from-env"
    resolver = DnsResolver([dns_server.nameserver], timeout=1)
    transport = remote_delivery_from_settings(settings, resolver)
    [out] = await transport.deliver("nowhere.test", "a@src.test", ["x@nowhere.test"], MSG)
    assert out.result == "delivered"
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ["x@nowhere.test"] and got.helo == "out.test"
