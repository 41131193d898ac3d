"""The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2) on the SMTP
listeners: a TCP load balancer in front of the nodes says, before anything else on the
connection, which client it is relaying. That address then stands for the client
everywhere (SPF, RBL, session limits, rate limits, Received, events, logs).

Configured per listener (`listeners.<name>.proxy_protocol`, `ProxyProtocolSettings`):
`trusted` networks are the load balancers; `required` says whether a trusted peer must
send a header.

`ProxyServer` is such a listener: it accepts the sockets itself, reads the header off
each (never a byte more), then hands the connection to asyncio (TLS from the start for
implicit TLS) with the client it names. Per connection, before the greeting (`accept`):
- a trusted peer: the header is read within `timeout` seconds (bounded: 107 bytes for
  v1, 16 + `MAX_V2_BODY` for v2). A malformed header, or none where one is required,
  closes the connection with nothing processed. A peer that sends nothing on a
  listener where the header is optional waits `LISTEN_WINDOW` for the greeting;
- any other peer: its address is its own. Since an SMTP client speaks only after the
  greeting, bytes arriving in the first `LISTEN_WINDOW` seconds are a PROXY header (or
  an early talker): the connection is closed with nothing processed, so a client can
  never name an address of its choosing.

`LOCAL` (v2) and `UNKNOWN` (v1) headers — the balancer's own health checks — keep the
connection's real addresses, as the specification says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mta.config import ProxyProtocolSettings
from mta.observe import metrics

log = logging.getLogger("mta.smtp.proxy")

__all__ = ["LISTEN_WINDOW", "MAX_V1", "MAX_V2_BODY", "ProxyError", "ProxyHeader",
           "ProxyPolicy", "ProxyServer", "accept", "parse_v1", "parse_v2", "read_header", "socket_recv"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1 = 107  # the whole v1 line, CRLF included (spec section 2.1)
MAX_V2_BODY = 4096 - 16  # addresses and TLVs; HAProxy's TLVs are far smaller
# How long a listener that speaks PROXY waits, before the greeting, for bytes from a
# peer that owes it none (an untrusted peer, or a trusted one where the header is
# optional). A header is sent the moment the connection opens, so this is plenty.
LISTEN_WINDOW = 0.5


class ProxyError(Exception):
    """The connection cannot go on: a bad, missing or unwanted PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    # None for LOCAL / UNKNOWN: the connection's own addresses stand.
    source: tuple[str, int] | None
    destination: tuple[str, int] | None = None


@dataclass(frozen=True)
class ProxyPolicy:
    """One listener's `proxy_protocol` settings, parsed."""

    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    required: bool
    timeout: float

    @classmethod
    def from_settings(cls, settings: ProxyProtocolSettings | None) -> ProxyPolicy | None:
        if settings is None:
            return None
        nets = tuple(ipaddress.ip_network(n, strict=False)
                     for n in settings.trusted)
        return cls(nets, bool(settings.required),
                   float(settings.timeout))

    def trusts(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted)


# --- parsing (pure functions over bytes) ---------------------------------------------------


def _ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    # An IPv4 client relayed over IPv6 (::ffff:a.b.c.d) is an IPv4 client: SPF, RBLs
    # and limits must see a.b.c.d.
    mapped = getattr(addr, "ipv4_mapped", None)
    return str(mapped or addr)


def _port(text: str) -> int:
    # Decimal, no leading zeros (spec 2.1); int() alone would accept "+25" or "0025".
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyError(f"bad port {text!r}")
    return int(text)


def parse_v1(line: bytes) -> ProxyHeader:
    """`PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n` -> ProxyHeader."""
    if not line.startswith(b"PROXY ") or not line.endswith(b"\r\n") or len(line) > MAX_V1:
        raise ProxyError("not a PROXY v1 line")
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, None)  # the rest of the line is to be ignored
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"malformed PROXY v1 line {text[:60]!r}")
    kind = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    try:
        src, dst = kind(parts[2]), kind(parts[3])
    except ValueError:
        raise ProxyError(f"bad {parts[1]} address in {text[:60]!r}") from None
    return ProxyHeader(1, (_ip(src), _port(parts[4])), (_ip(dst), _port(parts[5])))


def parse_v2(head: bytes, body: bytes) -> ProxyHeader:
    """The 16-byte v2 header and the `len` bytes after it -> ProxyHeader."""
    if len(head) != 16 or head[:12] != V2_SIGNATURE:
        raise ProxyError("not a PROXY v2 header")
    version, command = head[12] >> 4, head[12] & 0x0F
    family, transport = head[13] >> 4, head[13] & 0x0F
    if version != 2:
        raise ProxyError(f"PROXY v2 header with version {version}")
    if command == 0:  # LOCAL: the balancer's own connection (health check)
        return ProxyHeader(2, None)
    if command != 1:
        raise ProxyError(f"PROXY v2 command {command} is not LOCAL or PROXY")
    if family == 0 or transport != 1:  # UNSPEC, or not a stream: keep the real addresses
        return ProxyHeader(2, None)
    if family == 1 and len(body) >= 12:
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == 2 and len(body) >= 36:
        src, dst = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
    elif family == 3:  # AF_UNIX: no IP address to speak of
        return ProxyHeader(2, None)
    else:
        raise ProxyError(f"PROXY v2 address block too short ({len(body)} bytes)")
    return ProxyHeader(2, (_ip(src), sport), (_ip(dst), dport))


# --- reading from the connection -----------------------------------------------------------

Recv = Callable[[int], Awaitable[bytes]]  # up to n bytes; b"" at end of stream


async def _exactly(recv: Recv, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await recv(n - len(buf))
        if not chunk:
            raise ProxyError("closed inside the PROXY header")
        buf += chunk
    return buf


def socket_recv(sock: socket.socket) -> Recv:
    """Reads straight from the socket, never past what is asked: what follows the
    header (SMTP, or a TLS ClientHello) stays in the kernel for the transport."""
    loop = asyncio.get_running_loop()
    return lambda n: loop.sock_recv(sock, n)


async def read_header(recv: Recv, first: bytes = b"") -> ProxyHeader:
    """Read one header (v1 or v2), `first` being its first byte(s) if already read.
    Reads never go past the header's end nor its size bound; the caller puts a
    deadline on the whole."""
    buf = first or await _exactly(recv, 1)
    if buf[:1] == b"P":  # v1: byte by byte up to CRLF, so nothing after it is taken
        while not buf.endswith(b"\r\n"):
            if len(buf) >= MAX_V1 or not b"PROXY ".startswith(buf[:6]):
                raise ProxyError("not a PROXY v1 line (or longer than 107 bytes)")
            buf += await _exactly(recv, 1)
        return parse_v1(buf)
    if buf[:1] == b"\r":
        buf += await _exactly(recv, 16 - len(buf))
        if buf[:12] != V2_SIGNATURE:
            raise ProxyError("not a PROXY v2 signature")
        (length,) = struct.unpack("!H", buf[14:16])
        if length > MAX_V2_BODY:
            raise ProxyError(f"PROXY v2 header of {length} bytes is too long")
        return parse_v2(buf, await _exactly(recv, length))
    raise ProxyError("data before the greeting that is no PROXY header")


async def accept(recv: Recv, peer_ip: str, peer_port: int,
                 policy: ProxyPolicy) -> tuple[str, int]:
    """The client's (ip, port) for a new connection from (peer_ip, peer_port): named by
    the PROXY header of a trusted peer, else the peer's own. ProxyError when the
    connection must close unprocessed."""
    trusted = policy.trusts(peer_ip)
    wait = policy.timeout if trusted and policy.required else min(LISTEN_WINDOW,
                                                                  policy.timeout)
    try:
        first = await asyncio.wait_for(recv(1), wait)
    except TimeoutError:
        if trusted and policy.required:
            raise ProxyError(f"no PROXY header within {wait:g}s") from None
        return peer_ip, peer_port  # a direct client, waiting for the greeting
    if not first:
        raise ProxyError("closed before the greeting")
    if not trusted:
        raise ProxyError("data before the greeting (a PROXY header?) from a peer "
                         "outside proxy_protocol.trusted")
    try:
        header = await asyncio.wait_for(read_header(recv, first), policy.timeout)
    except TimeoutError:
        raise ProxyError(f"incomplete PROXY header after {policy.timeout:g}s") from None
    if header.source is None:
        return peer_ip, peer_port
    return header.source


# --- the listening side ----------------------------------------------------------------------


class ProxyServer:
    """A listener whose connections open with a PROXY header. It accepts sockets itself
    and reads the header straight off each one (nothing after it is consumed), then hands
    the connection to asyncio with the client it names: `protocol_factory(client)`, over
    TLS from the start when `tls()` gives a context (implicit TLS: HAProxy sends the
    header in clear before the ClientHello). Same surface as asyncio's Server as far as
    the listeners use it: `sockets`, `close()`."""

    def __init__(self, policy: ProxyPolicy,
                 protocol_factory: Callable[[tuple[str, int]], asyncio.Protocol], *,
                 name: str, tls: Callable[[], ssl.SSLContext | None] = lambda: None,
                 tls_handshake_timeout: float = 30.0) -> None:
        self.policy = policy
        self.protocol_factory = protocol_factory
        self.name = name  # the listener, for logs and metrics
        self.tls = tls
        self.tls_handshake_timeout = tls_handshake_timeout
        self.sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self, hosts: str | list[str], port: int, *, backlog: int = 512,
                    reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        for host in [hosts] if isinstance(hosts, str) else hosts:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:  # as asyncio: `::` and `0.0.0.0` apart
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
            except OSError:
                sock.close()
                self.close()
                raise
            self.sockets.append(sock)
        for sock in self.sockets:
            self._spawn(self._accept_loop(sock))

    def close(self) -> None:
        """Stop accepting; connections still before their greeting are dropped (those
        already handed over are the listener's to drain)."""
        for task in list(self._tasks):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(listening)
            except OSError as exc:  # EMFILE and friends: breathe, then go on
                log.warning("accept on the %s listener failed: %s", self.name, exc)
                await asyncio.sleep(0.1)
                continue
            self._spawn(self._hand_over(conn, address))

    async def _hand_over(self, conn: socket.socket, address: tuple) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        ip, port = str(address[0]), int(address[1])
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        handed = False
        try:
            client = await accept(socket_recv(conn), ip, port, self.policy)
            if client != (ip, port):
                log.debug("client %s:%d via %s", client[0], client[1], ip, extra={
                    "event": "smtp.proxied", "listener": self.name, "peer": ip,
                    "client_ip": client[0]})
            ctx = self.tls()
            await loop.connect_accepted_socket(
                lambda: self.protocol_factory(client), conn, ssl=ctx,
                ssl_handshake_timeout=self.tls_handshake_timeout if ctx else None)
            handed = True
        except ProxyError as exc:
            log.info("closed connection from %s: %s", ip, exc, extra={
                "event": "smtp.proxy_refused", "listener": self.name, "peer": ip})
            metrics.SMTP_SESSIONS_REFUSED.labels(self.name, "proxy_protocol").inc()
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.info("connection from %s failed before the greeting: %s", ip, exc)
        finally:
            if not handed:  # refused, failed or cancelled (the listener stopped)
                conn.close()
