"""The connection plumbing every SMTP listener shares (MX in `mx.py`, submission in
`submission.py`).

`SmtpProtocol` is an asyncio stream protocol (reader, writer, connection life cycle, the
inactivity timer) running one task per connection: the listener's `session.SmtpSession`,
whose replies all come from `replies.py`. It implements the `session.Connection`
protocol. (It used to be aiosmtpd's `SMTP` with the command loop replaced; aiosmtpd's
constructor introspects the instance for its own command and AUTH handlers — about
0.6 ms of CPU per connection, none of it used here — and sized the read buffer for one
command line, which made DATA arrive in 2 KB pieces.)

An idle session holds: its task (waiting in `Wire.read_command`), the stream reader and
writer with empty buffers, one timer handle, and the session object. Nothing else runs
for it.

Per connection: the TLS facts of an implicit-TLS transport are recorded, the session
limits are checked (421 4.7.0 when full), then the listener's session runs. The client
is the TCP peer, or on a listener with `proxy_protocol` the one its load balancer named
(`proxyproto.ProxyServer` accepts those connections and passes it in). The
listener (`ListenerServer`) names the metrics label (`name`) and builds the session
(`new_session`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from mta import replies
from mta.observe import metrics
from mta.replies import Reply
from mta.smtp.intake import ClientInfo
from mta.smtp.limits import SessionLimiter
from mta.smtp.proxyproto import ProxyPolicy, ProxyServer
from mta.smtp.session import SmtpSession
from mta.smtp.wire import CHUNK, Wire

__all__ = ["ListenerServer", "SmtpProtocol", "bind_hosts", "drain_sessions", "listen",
           "say_goodbye"]

log = logging.getLogger("mta.smtp.protocol")


class ListenerServer(Protocol):
    """What `SmtpProtocol` needs from the listener service that created it."""

    name: str  # the listener label of the SMTP metrics
    hostname: str
    settings: Any
    loop: asyncio.AbstractEventLoop | None
    tls_context: ssl.SSLContext | None
    limiter: SessionLimiter
    sessions: Any  # a set of the running sessions
    stopping: asyncio.Event

    def new_session(self, conn: SmtpProtocol, client: ClientInfo) -> SmtpSession: ...


class SmtpProtocol(asyncio.StreamReaderProtocol):
    def __init__(self, server: ListenerServer, log: logging.Logger = log,
                 client: tuple[str, int] | None = None) -> None:
        self._server = server
        self._log = log
        self._client = client
        loop = server.loop or asyncio.get_running_loop()
        self.loop = loop
        # The reader pauses the socket beyond 2 x CHUNK buffered; it holds nothing while
        # the session is idle.
        self._reader = asyncio.StreamReader(limit=CHUNK, loop=loop)
        self._writer: asyncio.StreamWriter | None = None
        super().__init__(self._reader, client_connected_cb=self._connected, loop=loop)
        self.transport: Any = None
        self.peer: tuple | None = None
        self.wire: Wire | None = None
        self._tls_info: dict[str, Any] | None = None
        self._timeout_duration = float(server.settings.limits.command_timeout)
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    # -- Connection protocol (what the sessions use) ---------------------------------------

    async def send(self, reply: Reply) -> None:
        await self._write([reply.line()], reply.code)

    async def send_lines(self, lines: list[str]) -> None:
        await self._write(lines, int(lines[-1][:3]))

    async def _write(self, lines: list[str], code: int) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        metrics.SMTP_REPLIES.labels(self._server.name, f"{code // 100}xx").inc()
        self._writer.write("".join(f"{line}\r\n" for line in lines).encode("utf-8", "replace"))
        await self._writer.drain()

    @property
    def tls_available(self) -> bool:
        return self._server.tls_context is not None

    @property
    def tls_active(self) -> bool:
        return self._tls_info is not None

    async def starttls(self) -> dict:
        ctx = self._server.tls_context
        assert ctx is not None
        await self._writer.start_tls(ctx, ssl_handshake_timeout=30)
        self.transport = self._writer.transport
        self._record_tls()
        assert self._tls_info is not None
        return dict(self._tls_info)

    def set_timeout(self, seconds: float) -> None:
        self._timeout_duration = seconds
        self._reset_timeout()

    def _reset_timeout(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timeout_handle = self.loop.call_later(self._timeout_duration, self._timeout_cb)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _record_tls(self) -> None:
        """Note the TLS facts of the transport, once it is TLS (after STARTTLS, or from
        the start on an implicit-TLS listener)."""
        ssl_object: ssl.SSLObject | None = self.transport.get_extra_info("ssl_object")
        cipher = ssl_object.cipher() if ssl_object is not None else None
        self._tls_info = {"version": ssl_object.version() if ssl_object else None,
                          "cipher": cipher[0] if cipher else None,
                          "bits": cipher[2] if cipher else None}

    # -- connection life cycle ----------------------------------------------------------------

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer  # StreamReaderProtocol made it in connection_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self._reset_timeout()
        self._task = self.loop.create_task(self._handle_client())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        super().connection_lost(exc)
        if self._task is not None:
            self._task.cancel()
        self.transport = None

    def eof_received(self) -> bool:
        # The client is gone: stop the session where it is, as aiosmtpd did (a message
        # is acknowledged only after its commit, so nothing acknowledged is lost).
        if self._task is not None:
            self._task.cancel()
        return bool(super().eof_received())

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.5.3.2: say why before closing.
        if self.transport is not None and not self.transport.is_closing():
            line = replies.TIMEOUT.format(hostname=self._server.hostname).line()
            try:
                self._writer.write(f"{line}\r\n".encode())
            except Exception:  # noqa: BLE001 - the peer may already be gone
                pass
            self.transport.close()

    async def _handle_client(self) -> None:
        server = self._server
        # The client a load balancer named (PROXY protocol), else the TCP peer.
        peer = self._client or self.peer or ("0.0.0.0", 0)
        ip, port = str(peer[0]), int(peer[1])
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        self.wire = Wire(self._reader)
        if self.transport.get_extra_info("ssl_object") is not None:  # implicit TLS
            self._record_tls()
        metrics.SMTP_SESSIONS.labels(server.name).inc()
        refused = server.limiter.acquire(ip)
        if refused is not None:
            metrics.SMTP_SESSIONS_REFUSED.labels(server.name, refused).inc()
            reply = (replies.TOO_MANY_SESSIONS if refused == "sessions"
                     else replies.TOO_MANY_SESSIONS_FROM_IP)
            try:
                await self.send(reply.format(hostname=server.hostname))
            except ConnectionError:
                pass
            self.close()
            return
        client = ClientInfo(session_id=uuid.uuid4().hex[:16], ip=ip, port=port,
                            tls=dict(self._tls_info) if self._tls_info else None)
        session = server.new_session(self, client)
        server.sessions.add(session)
        metrics.SMTP_SESSIONS_ACTIVE.labels(server.name).inc()
        try:
            await session.run(server.stopping)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            self._log.exception("session %s with %s failed", client.session_id, ip)
            try:
                await self.send(replies.LOCAL_ERROR)
            except Exception:  # noqa: BLE001
                pass
            self.close()
        finally:
            server.limiter.release(ip)
            server.sessions.discard(session)
            metrics.SMTP_SESSIONS_ACTIVE.labels(server.name).dec()


def bind_hosts(address: str) -> str | list[str]:
    """What a listener's `address` binds: `::` is every address of both families. asyncio
    makes IPv6 listening sockets v6-only, so that takes two sockets, `::` and `0.0.0.0`
    (IPv4 clients then show as plain IPv4, not as ::ffff:-mapped)."""
    return ["::", "0.0.0.0"] if address.strip("[]") == "::" else address


async def listen(server: ListenerServer, log: logging.Logger, address: str, port: int,
                 proxy: ProxyPolicy | None, *,
                 tls: Callable[[], ssl.SSLContext | None] | None = None,
                 tls_handshake_timeout: float = 30.0) -> asyncio.base_events.Server | ProxyServer:
    """The listening sockets of an SMTP listener: behind load balancers (`proxy`) the
    PROXY header names the client and TLS (`tls`, implicit TLS only) starts after it with
    the context current at that moment; otherwise a plain asyncio server."""
    reuse_port = sys.platform.startswith("linux")
    if proxy is not None:
        proxied = ProxyServer(proxy, lambda client: SmtpProtocol(server, log, client),
                              name=server.name, tls=tls or (lambda: None),
                              tls_handshake_timeout=tls_handshake_timeout)
        await proxied.start(bind_hosts(address), port, backlog=512, reuse_port=reuse_port)
        return proxied
    context = tls() if tls is not None else None
    return await asyncio.get_running_loop().create_server(
        lambda: SmtpProtocol(server, log), host=bind_hosts(address), port=port,
        reuse_address=True, reuse_port=reuse_port, backlog=512, ssl=context,
        ssl_handshake_timeout=tls_handshake_timeout if context is not None else None)


async def say_goodbye(session: SmtpSession, hostname: str) -> None:
    """Tell an idle session the listener is shutting down (best effort), then close it."""
    session.idle = False
    try:
        await asyncio.wait_for(
            session.conn.send(replies.SHUTTING_DOWN.format(hostname=hostname)), 1)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
    session.conn.close()


async def drain_sessions(sessions: set[Any], hostname: str, grace: float) -> None:
    """A stopping listener's last act: say goodbye to each session as it becomes idle,
    until `grace` seconds have passed, then close what is left (an unacknowledged DATA
    is the client's to retry)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while sessions and loop.time() < deadline:
        for session in list(sessions):
            if session.idle:
                await say_goodbye(session, hostname)
        await asyncio.sleep(0.05)
    for session in list(sessions):
        session.conn.close()
