"""Outbound connections kept and reused per next hop, with PIPELINING, against the real
sink (aiosmtpd on loopback) and a real DNS server: one connection carries several
messages; a connection the peer closed while idle is replaced without losing or
misdirecting a message; a failed connection is never reused; idle connections close
after a bounded time; the pool is bounded per next hop. A byte-counting TCP relay
between the client and the sink shows what travels in one write."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from mta.queue.pool import ConnectionPool
from tests.queue.test_remote import MSG, engine


def mx_zone(dns_server, ip: str = "127.0.0.2") -> None:
    dns_server.add_zone(f"dest.test. 300 IN MX 10 mx.dest.test.\nmx.dest.test. 300 IN A {ip}")


class _Counts(dict):
    def __sub__(self, other: dict) -> dict:
        return {k: self[k] - other.get(k, 0) for k in self}


def reuse_counted() -> _Counts:
    """mta_outbound_connections_total by origin, as the metrics listener would show it."""
    return _Counts({origin: REGISTRY.get_sample_value(
        "mta_outbound_connections_total", {"origin": origin}) or 0.0
        for origin in ("new", "reused")})


def message(i: int) -> bytes:
    return MSG.replace(b"hello", b"message %d" % i)


async def test_one_connection_carries_messages_of_separate_deliveries(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    mx_zone(dns_server)
    e = engine(dns_server, sink.port)
    before = reuse_counted()
    for i in range(5):  # five separate deliveries, as five in-session forwards make them
        [out] = await e.deliver("dest.test", "a@src.test", [f"u{i}@dest.test"], message(i))
        assert out.result == "delivered", out
    assert e.connections_opened == 1 and e.pool.reused == 4
    assert reuse_counted() - before == {"new": 1, "reused": 4}
    msgs = await asyncio.to_thread(sink.wait_for, 5)
    assert len({m.peer for m in msgs}) == 1  # the same client port: one TCP connection
    assert [m.rcpt_tos for m in msgs] == [[f"u{i}@dest.test"] for i in range(5)]
    assert [b"message %d" % i in m.data for i, m in enumerate(msgs)] == [True] * 5
    e.close()
    assert len(e.pool) == 0


async def test_peer_closing_an_idle_connection_costs_nothing(dns_server, make_sink):
    sink = make_sink("127.0.0.2", idle_timeout=0.3)  # says 421 and closes after 0.3 s
    mx_zone(dns_server)
    e = engine(dns_server, sink.port, pool=ConnectionPool(idle_timeout=30))
    [out] = await e.deliver("dest.test", "a@src.test", ["u0@dest.test"], message(0))
    assert out.result == "delivered"
    await asyncio.sleep(1.0)  # the sink has hung up on our pooled connection
    [out] = await e.deliver("dest.test", "a@src.test", ["u1@dest.test"], message(1))
    assert out.result == "delivered", out
    assert out.reply.code == 250 and out.detail is None
    assert e.connections_opened == 2
    msgs = await asyncio.to_thread(sink.wait_for, 2)
    assert [m.rcpt_tos for m in msgs] == [["u0@dest.test"], ["u1@dest.test"]]
    assert msgs[0].peer != msgs[1].peer


async def test_a_connection_that_failed_is_not_reused(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    mx_zone(dns_server)
    e = engine(dns_server, sink.port)
    sink.data_replies.append("421 4.3.2 closing this one")
    [out] = await e.deliver("dest.test", "a@src.test", ["u0@dest.test"], message(0))
    assert out.result == "deferred" and out.reply.code == 421
    assert len(e.pool) == 0
    [out] = await e.deliver("dest.test", "a@src.test", ["u1@dest.test"], message(1))
    assert out.result == "delivered"
    assert e.connections_opened == 2


async def test_a_refused_transaction_leaves_a_clean_connection(dns_server, make_sink):
    """MAIL refused, or every RCPT refused: the next message on the same connection
    starts with RSET (pipelined) and is delivered to the right recipient only."""
    sink = make_sink("127.0.0.2")
    sink.rcpt_replies["gone@dest.test"] = "550 5.1.1 no such user"
    mx_zone(dns_server)
    e = engine(dns_server, sink.port)
    [out] = await e.deliver("dest.test", "a@src.test", ["gone@dest.test"], message(0))
    assert (out.result, out.reply.enhanced) == ("failed", "5.1.1")
    gone, ok = await e.deliver("dest.test", "b@src.test", ["gone@dest.test", "ok@dest.test"],
                               message(1))
    assert (gone.result, ok.result) == ("failed", "delivered")
    assert e.connections_opened == 1
    [msg] = await asyncio.to_thread(sink.wait_for, 1)
    assert (msg.mail_from, msg.rcpt_tos) == ("b@src.test", ["ok@dest.test"])
    assert b"message 1" in msg.data


async def test_idle_connections_close_after_a_bounded_time(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    mx_zone(dns_server)
    e = engine(dns_server, sink.port, pool=ConnectionPool(idle_timeout=0.3))
    await e.deliver("dest.test", "a@src.test", ["u0@dest.test"], message(0))
    assert len(e.pool) == 1
    await asyncio.sleep(0.6)
    assert len(e.pool) == 0
    await e.deliver("dest.test", "a@src.test", ["u1@dest.test"], message(1))
    assert e.connections_opened == 2


async def test_the_pool_is_bounded_per_next_hop(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    mx_zone(dns_server)
    e = engine(dns_server, sink.port, pool=ConnectionPool(max_idle_per_key=2))
    outs = await asyncio.gather(*(
        e.deliver("dest.test", "a@src.test", [f"u{i}@dest.test"], message(i))
        for i in range(5)))
    assert [o.result for [o] in outs] == ["delivered"] * 5
    assert e.connections_opened == 5  # concurrent deliveries each needed one
    assert len(e.pool) == 2
    e.close()


# -- what travels in one write --------------------------------------------------------


class Relay:
    """A TCP relay on loopback recording each chunk the client sends."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.chunks: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.7") -> int:
        self.server = await asyncio.start_server(self._handle, host, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)

        async def pump(src, dst, record: bool) -> None:
            while data := await src.read(65536):
                if record:
                    self.chunks.append(data)
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False),
                             return_exceptions=True)

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_mail_rcpt_and_data_travel_in_one_write(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    relay = Relay(("127.0.0.2", sink.port))
    port = await relay.start()
    mx_zone(dns_server, "127.0.0.7")
    e = engine(dns_server, port)
    try:
        out = await e.deliver("dest.test", "a@src.test", ["x@dest.test", "y@dest.test"],
                              MSG)
        assert [o.result for o in out] == ["delivered", "delivered"]
        group = [c for c in relay.chunks if c.startswith(b"MAIL FROM:")]
        assert group == [b"MAIL FROM:<a@src.test> SIZE=%d\r\nRCPT TO:<x@dest.test>\r\n"
                         b"RCPT TO:<y@dest.test>\r\nDATA\r\n" % len(MSG)]
        # Without PIPELINING on offer, one command per write.
        plain = make_sink("127.0.0.3", pipelining=False)
        relay2 = Relay(("127.0.0.3", plain.port))
        dns_server.add_zone("plain.test. 300 IN MX 10 mx.plain.test.\n"
                            "mx.plain.test. 300 IN A 127.0.0.8")
        port2 = await relay2.start("127.0.0.8")
        e2 = engine(dns_server, port2)
        out = await e2.deliver("plain.test", "a@src.test", ["x@plain.test"], MSG)
        assert out[0].result == "delivered"
        assert b"MAIL FROM:<a@src.test> SIZE=%d\r\n" % len(MSG) in relay2.chunks
        assert b"RCPT TO:<x@plain.test>\r\n" in relay2.chunks
        e2.close()
        relay2.close()
    finally:
        e.close()
        relay.close()
        await asyncio.sleep(0.2)  # let the relay see both connections end
