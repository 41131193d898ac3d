"""PROXY protocol v1/v2 on the MX and submission listeners, over real loopback sockets.

Every connection is on loopback; the documentation addresses 192.0.2.1 / 2001:db8::1
appear only inside the PROXY header, named by a "load balancer" on 127.0.0.1 (trusted).
A peer on 127.0.0.2 plays the untrusted client. DNS comes from the test DNS server
(strict.test's SPF allows only 192.0.2.1, strict6.test's only 2001:db8::1, both with
DMARC p=reject, so a message judged as coming from 127.0.0.1 is refused).
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest

from mta.config import ProxyProtocolSettings
from mta.smtp.proxyproto import ProxyError, parse_v1, parse_v2
from tests.smtp.conftest import codes, make_message
from tests.smtp.test_submission import plain, world  # noqa: F401, F811 - the fixture

# The v2 signature as the specification writes it (section 2.2).
SIG = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
RBL_V6 = ".".join(reversed(ipaddress.ip_address("2001:db8::1").exploded.replace(":", "")))


def v2(src: str, sport: int = 40000, *, command: int = 1, tlv: bytes = b"") -> bytes:
    """What HAProxy's `send-proxy-v2` writes for a TCP client at src:sport."""
    addr = ipaddress.ip_address(src)
    if addr.version == 4:
        family, dst = 0x11, ipaddress.ip_address("127.0.0.1")
    else:
        family, dst = 0x21, ipaddress.ip_address("::1")
    body = addr.packed + dst.packed + struct.pack("!HH", sport, 25) + tlv
    return SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v1(src: str, sport: int = 40000) -> bytes:
    """What HAProxy's `send-proxy` writes."""
    if ":" in src:
        return f"PROXY TCP6 {src} ::1 {sport} 25\r\n".encode()
    return f"PROXY TCP4 {src} 127.0.0.1 {sport} 25\r\n".encode()


def trust_loopback_lb(required: bool = True, timeout: float = 2.0, **limits):
    def tweak(s):
        s.listeners.mx.proxy_protocol = ProxyProtocolSettings(
            trusted=["127.0.0.1/32"], required=required, timeout=timeout)
        for key, value in limits.items():
            setattr(s.limits, key, value)
    return tweak


def publish_v6_world(dns) -> None:
    dns.add_zone("""
        strict6.test. 300 IN TXT "v=spf1 ip6:2001:db8::1 -all"
        _dmarc.strict6.test. 300 IN TXT "v=DMARC1; p=reject"
    """)


async def session(mxw, header: bytes, smtp: bytes = b"", *, local: str = "127.0.0.1",
                  wait: float = 3.0) -> str:
    """Connect from `local`, write `header` at once (as a balancer does), then `smtp`
    once the greeting came (as a client does); everything the server said until it
    closed or went quiet for `wait` s."""
    reader, writer = await asyncio.open_connection(mxw.host, mxw.port,
                                                   local_addr=(local, 0))
    writer.write(header)
    await writer.drain()
    out = b""
    try:
        out = await asyncio.wait_for(reader.readline(), wait)
        if out.startswith(b"220 "):
            writer.write(smtp)
            await writer.drain()
        while out:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
            if not chunk:
                break
            out += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return out.decode("utf-8", "replace")


def transaction(mail_from: str) -> bytes:
    raw = make_message(mail_from)
    return (f"EHLO lb-client.test\r\nMAIL FROM:<{mail_from}>\r\nRCPT TO:<user@ours.test>\r\n"
            f"DATA\r\n").encode() + raw + b"\r\n.\r\nQUIT\r\n"


# --- over real sockets: the named address is the client --------------------------------


@pytest.mark.parametrize("header", [v2, v1], ids=["v2", "v1"])
async def test_named_ipv4_client_is_judged_by_spf(make_mx, header) -> None:
    mxw = await make_mx(trust_loopback_lb())
    # Control: straight from 127.0.0.1, strict.test's SPF fails and DMARC rejects.
    direct = await session(mxw, b"", transaction("alice@strict.test"), local="127.0.0.2")
    assert [c[:3] for c in codes(direct)][-2] == "550", direct
    out = await session(mxw, header("192.0.2.1"), transaction("alice@strict.test"))
    assert codes(out)[-2].startswith("250 2.0.0"), out
    [msg] = await mxw.messages()
    assert str(msg.client_ip) == "192.0.2.1"
    head = msg.raw.split(b"\r\n\r\n")[0].decode()
    assert "spf=pass" in head and "[192.0.2.1]" in head, head


@pytest.mark.parametrize("header", [v2, v1], ids=["v2", "v1"])
async def test_named_ipv6_client_is_judged_by_spf(make_mx, header) -> None:
    mxw = await make_mx(trust_loopback_lb())
    publish_v6_world(mxw.dns)
    out = await session(mxw, header("2001:db8::1"), transaction("bob@strict6.test"))
    assert codes(out)[-2].startswith("250 2.0.0"), out
    [msg] = await mxw.messages()
    assert str(msg.client_ip) == "2001:db8::1"
    head = msg.raw.split(b"\r\n\r\n")[0].decode()
    assert "spf=pass" in head and "2001:db8::1" in head, head


@pytest.mark.parametrize("header", [v2, v1], ids=["v2", "v1"])
@pytest.mark.parametrize("named, listed", [("192.0.2.1", "1.2.0.192"),
                                            ("2001:db8::1", RBL_V6)], ids=["ipv4", "ipv6"])
async def test_rbl_looks_up_the_named_address(make_mx, header, named, listed) -> None:
    def tweak(s):
        trust_loopback_lb()(s)
        s.inbound.rbl.zones = ["pbl.test"]
    mxw = await make_mx(tweak)
    mxw.dns.add(f"{listed}.pbl.test", "A", "127.0.0.2")
    out = await session(mxw, header(named), b"EHLO c.test\r\nMAIL FROM:<a@good.test>\r\n"
                        b"QUIT\r\n")
    assert codes(out)[2] == f"554 5.7.1 {named} found on one or more RBLs (pbl.test)", out
    events = await mxw.events()
    assert events[-1].details["reason"] == "rbl"
    assert events[-1].details["client_ip"] == named
    # 127.0.0.1 itself was never looked up: the balancer is not the client.
    assert not [q for q in mxw.dns.queries if q[0].startswith("1.0.0.127.pbl")]


async def test_session_limit_counts_named_addresses(make_mx) -> None:
    mxw = await make_mx(trust_loopback_lb(max_sessions_per_ip=1))
    held = []
    for src in ("192.0.2.1", "192.0.2.2"):  # one each: both allowed
        reader, writer = await asyncio.open_connection(mxw.host, mxw.port)
        writer.write(v2(src))
        greeting = await asyncio.wait_for(reader.readline(), 5)
        assert greeting.startswith(b"220 "), greeting
        held.append(writer)
    again = await session(mxw, v2("192.0.2.1", 40001), b"QUIT\r\n")
    assert again.startswith("421 4.7.0"), again
    for writer in held:
        writer.close()


async def test_local_command_keeps_the_real_address(make_mx) -> None:
    """HAProxy's health checks send LOCAL: the connection is the balancer's own."""
    mxw = await make_mx(trust_loopback_lb())
    out = await session(mxw, v2("192.0.2.1", command=0), transaction("alice@good.test"))
    assert codes(out)[-2].startswith("250 2.0.0"), out
    [msg] = await mxw.messages()
    assert str(msg.client_ip) == "127.0.0.1"


async def test_tlvs_after_the_addresses_are_skipped(make_mx) -> None:
    mxw = await make_mx(trust_loopback_lb())
    tlv = bytes([0x01, 0x00, 0x02]) + b"h2" + bytes([0x04, 0x00, 0x00])  # ALPN, NOOP
    out = await session(mxw, v2("192.0.2.1", tlv=tlv), transaction("alice@strict.test"))
    assert codes(out)[-2].startswith("250 2.0.0"), out


# --- refused: nothing processed ---------------------------------------------------------


@pytest.mark.parametrize("header", [v2, v1], ids=["v2", "v1"])
async def test_header_from_untrusted_peer_is_refused(make_mx, header) -> None:
    mxw = await make_mx(trust_loopback_lb())
    mxw.dns.queries.clear()
    out = await session(mxw, header("192.0.2.1") + transaction("alice@strict.test"),
                        local="127.0.0.2")
    assert out == "", out  # closed before the greeting
    assert await mxw.count() == 0
    assert await mxw.events() == []
    assert not [q for q in mxw.dns.queries if "strict.test" in q[0]]


async def test_missing_header_where_required_is_refused(make_mx) -> None:
    mxw = await make_mx(trust_loopback_lb(required=True, timeout=1.0))
    silent = await session(mxw, b"", wait=4)  # waits for a greeting that never comes
    assert silent == ""
    client = await session(mxw, transaction("alice@good.test"))  # SMTP, no header
    assert client == ""
    assert await mxw.count() == 0


@pytest.mark.parametrize("bad", [
    b"PROXY TCP4 192.0.2.300 127.0.0.1 40000 25\r\n",
    b"PROXY TCP4 2001:db8::1 127.0.0.1 40000 25\r\n",
    b"PROXY TCP4 192.0.2.1 127.0.0.1 040000 25\r\n",
    b"PROXY " + b"X" * 120 + b"\r\n",
    SIG + bytes([0x31, 0x11, 0x00, 0x0C]) + bytes(12),  # version 3
    SIG + bytes([0x21, 0x11, 0x00, 0x04]) + bytes(4),  # address block too short
    SIG + bytes([0x21, 0x11, 0xFF, 0xFF]),  # longer than we read
], ids=["v1-addr", "v1-family", "v1-port", "v1-long", "v2-version", "v2-short", "v2-long"])
async def test_malformed_header_is_refused(make_mx, bad) -> None:
    mxw = await make_mx(trust_loopback_lb())
    out = await session(mxw, bad + transaction("alice@good.test"))
    assert out == "", out
    assert await mxw.count() == 0


async def test_optional_header_from_trusted_and_direct_clients(make_mx) -> None:
    mxw = await make_mx(trust_loopback_lb(required=False))
    proxied = await session(mxw, v2("192.0.2.1"), transaction("alice@strict.test"))
    assert codes(proxied)[-2].startswith("250 2.0.0"), proxied
    # A client that waits for the greeting is served as itself, from the balancer's
    # network or not; one that talks first could be sending a header: refused.
    mxw.dns.add_txt("lo.test", "v=spf1 ip4:127.0.0.0/8 -all")
    for local in ("127.0.0.1", "127.0.0.2"):
        direct = await session(mxw, b"", transaction("alice@lo.test"), local=local)
        assert codes(direct)[-2].startswith("250 2.0.0"), direct
    early = await session(mxw, transaction("alice@good.test"))
    assert early == "", early
    assert sorted(str(m.client_ip) for m in await mxw.messages()) == [
        "127.0.0.1", "127.0.0.2", "192.0.2.1"]


# --- the parser on its own ---------------------------------------------------------------


def test_parse_v1_forms() -> None:
    h = parse_v1(b"PROXY TCP6 2001:db8::1 ::1 65535 25\r\n")
    assert h.source == ("2001:db8::1", 65535) and h.destination == ("::1", 25)
    assert parse_v1(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").source is None
    for bad in (b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n", b"PROXY TCP4 1.2.3.4\r\n",
                b"PROXY TCP4 192.0.2.1 127.0.0.1 65536 25\r\n"):
        with pytest.raises(ProxyError):
            parse_v1(bad)


def test_parse_v2_forms() -> None:
    whole = v2("2001:db8::1", 1234)
    h = parse_v2(whole[:16], whole[16:])
    assert h.source == ("2001:db8::1", 1234) and h.version == 2
    mapped = v2("::ffff:192.0.2.1")
    assert parse_v2(mapped[:16], mapped[16:]).source == ("192.0.2.1", 40000)
    unspec = SIG + bytes([0x21, 0x00, 0x00, 0x00])
    assert parse_v2(unspec, b"").source is None
    with pytest.raises(ProxyError):
        parse_v2(SIG + bytes([0x22, 0x11, 0x00, 0x0C]), bytes(12))  # command 2


# --- submission (implicit TLS: the header comes before the TLS handshake) ---------------


async def test_submission_implicit_tls_after_proxy_header(world) -> None:  # noqa: F811
    first = await world()  # the fixture's settings object, shared by the next listener
    first.settings.listeners.submission.proxy_protocol = ProxyProtocolSettings(
        trusted=["127.0.0.1/32"], timeout=2.0)
    first.settings.limits.max_sessions_per_ip = 1
    sub = await world()
    ctx = sub.client_ctx

    async def connect(src: str, port: int):
        reader, writer = await asyncio.open_connection("127.0.0.1", sub.port)
        writer.write(v2(src, port))
        await writer.drain()
        await writer.start_tls(ctx, server_hostname="localhost")
        return reader, writer

    reader, writer = await connect("192.0.2.1", 40000)
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220 ")
    writer.write(b"EHLO c.test\r\nAUTH PLAIN " + plain(sub.token).encode() + b"\r\n")
    await writer.drain()
    lines: list[bytes] = []
    while not lines or lines[-1][:4] not in (b"235 ", b"535 ", b"454 "):
        lines.append(await asyncio.wait_for(reader.readline(), 5))
    assert lines[-1].startswith(b"235 "), lines
    # The same named client again: over the per-IP limit; another named client: served.
    r2, w2 = await connect("192.0.2.1", 40001)
    assert (await asyncio.wait_for(r2.readline(), 5)).startswith(b"421 4.7.0")
    r3, w3 = await connect("192.0.2.9", 40002)
    assert (await asyncio.wait_for(r3.readline(), 5)).startswith(b"220 ")
    for w in (writer, w2, w3):
        w.close()
    # An untrusted peer naming a client is closed before any TLS.
    r4, w4 = await asyncio.open_connection("127.0.0.1", sub.port, local_addr=("127.0.0.2", 0))
    w4.write(v2("192.0.2.1"))
    try:
        said = await asyncio.wait_for(r4.read(), 5)
    except ConnectionResetError:  # closed with the header unread: a reset
        said = b""
    assert said == b""
    w4.close()


# --- deployment: `address: "::"` (deploy/install.sh) ------------------------------------


def _port_free_on_both() -> int:
    import socket

    for _ in range(20):
        with socket.socket(socket.AF_INET6) as s6:
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s6.bind(("::", 0))
            port = s6.getsockname()[1]
            with socket.socket(socket.AF_INET) as s4:
                try:
                    s4.bind(("0.0.0.0", port))
                except OSError:
                    continue
            return port
    raise AssertionError("no port free on both families")


async def test_mx_on_all_addresses_serves_ipv4_and_ipv6(make_mx) -> None:
    port = _port_free_on_both()

    def tweak(s):
        s.listeners.mx.address, s.listeners.mx.port = "::", port
    mxw = await make_mx(tweak)
    for host in ("127.0.0.1", "::1"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"EHLO lb-client.test\r\nQUIT\r\n")
        said = await asyncio.wait_for(reader.read(), 10)
        assert said.startswith(b"220 "), (host, said)
        writer.close()
    out = await session(mxw, b"", transaction("alice@good.test"))
    assert codes(out)[-2].startswith("250 2.0.0"), out
    [msg] = await mxw.messages()
    assert str(msg.client_ip) == "127.0.0.1"  # plain IPv4, not ::ffff:127.0.0.1
