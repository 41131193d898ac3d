"""The MX listener (port 25): a node service receiving mail for our routing domains.

`MxServer(ctx)` is the service the node starts (`start`, `stop`, `describe`). This is
the only module that imports aiosmtpd: `_MxProtocol` keeps aiosmtpd's asyncio protocol
plumbing (stream reader/writer, connection life cycle, the inactivity timer) and
replaces its command loop and every command handler with `session.MxSession`, whose
replies all come from `replies.py` (aiosmtpd's own defaults are lenient, see
notes/library-pitfalls.md).

Per connection: the session limits are checked first (421 4.7.0 when full), the RBL
and PTR look-ups start at once, then the session runs. `stop()` stops accepting, says
421 4.3.2 to idle sessions, lets sessions inside a transaction finish until
`shutdown_grace` seconds, then closes what is left (an unfinished DATA is never
acknowledged, so nothing is lost: the client retries).

Settings read: `listeners.mx` (address, port, tls_cert, tls_key), `limits.*`,
`inbound.*`, `node.hostname`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import uuid
from typing import Any

from aiosmtpd.smtp import SMTP

from mta.observe import metrics
from mta.smtp import replies
from mta.smtp.intake import ClientInfo, Intake
from mta.smtp.limits import SessionLimiter
from mta.smtp.replies import Reply
from mta.smtp.session import MxSession
from mta.smtp.tls import server_context
from mta.smtp.wire import Wire

__all__ = ["MxServer"]

log = logging.getLogger("mta.smtp.mx")
LISTENER = "mx"


class _NoHooks:
    """aiosmtpd finds handler hooks by name; we have none (the session does it all)."""


class _MxProtocol(SMTP):
    def __init__(self, server: MxServer) -> None:
        self._server = server
        super().__init__(_NoHooks(), hostname=server.hostname, ident="ESMTP",
                         data_size_limit=None, enable_SMTPUTF8=False, decode_data=False,
                         tls_context=None, timeout=server.settings.limits.command_timeout,
                         auth_exclude_mechanism=("LOGIN", "PLAIN"), loop=server.loop)
        self.wire: Wire | None = None
        self._tls_info: dict[str, Any] | None = None

    # -- Connection protocol (what MxSession uses) -----------------------------------------

    async def send(self, reply: Reply) -> None:
        await self._write([reply.line()], reply.code)

    async def send_lines(self, lines: list[str]) -> None:
        await self._write(lines, int(lines[-1][:3]))

    async def _write(self, lines: list[str], code: int) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        metrics.SMTP_REPLIES.labels(LISTENER, f"{code // 100}xx").inc()
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
        ssl_object: ssl.SSLObject | None = self.transport.get_extra_info("ssl_object")
        cipher = ssl_object.cipher() if ssl_object is not None else None
        self._tls_info = {"version": ssl_object.version() if ssl_object else None,
                          "cipher": cipher[0] if cipher else None,
                          "bits": cipher[2] if cipher else None}
        assert self.session is not None
        self.session.ssl = dict(self._tls_info)  # aiosmtpd's eof_received looks at it
        return dict(self._tls_info)

    def set_timeout(self, seconds: float) -> None:
        self._timeout_duration = seconds
        self._reset_timeout()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- aiosmtpd overrides ------------------------------------------------------------------

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.5.3.2: say why before closing (aiosmtpd closes silently).
        if self.transport is not None and not self.transport.is_closing():
            line = replies.TIMEOUT.format(hostname=self._server.hostname).line()
            try:
                self._writer.write(f"{line}\r\n".encode())
            except Exception:  # noqa: BLE001 - the peer may already be gone
                pass
        super()._timeout_cb()

    async def _handle_client(self) -> None:
        server = self._server
        assert self.session is not None
        peer = self.session.peer or ("0.0.0.0", 0)
        ip, port = str(peer[0]), int(peer[1])
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        self.wire = Wire(self._reader)
        metrics.SMTP_SESSIONS.labels(LISTENER).inc()
        refused = server.limiter.acquire(ip)
        if refused is not None:
            metrics.SMTP_SESSIONS_REFUSED.labels(LISTENER, refused).inc()
            reply = (replies.TOO_MANY_SESSIONS if refused == "sessions"
                     else replies.TOO_MANY_SESSIONS_FROM_IP)
            try:
                await self.send(reply.format(hostname=server.hostname))
            except ConnectionError:
                pass
            self.close()
            return
        client = ClientInfo(session_id=uuid.uuid4().hex[:16], ip=ip, port=port)
        session = MxSession(self, server.intake, server.settings, client)
        server.sessions.add(session)
        metrics.SMTP_SESSIONS_ACTIVE.labels(LISTENER).inc()
        try:
            await session.run(server.stopping)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("session %s with %s failed", client.session_id, ip)
            try:
                await self.send(replies.LOCAL_ERROR)
            except Exception:  # noqa: BLE001
                pass
            self.close()
        finally:
            server.limiter.release(ip)
            server.sessions.discard(session)
            metrics.SMTP_SESSIONS_ACTIVE.labels(LISTENER).dec()


class MxServer:
    """The port 25 service of a node."""

    name = "mx"

    def __init__(self, ctx: Any, shutdown_grace: float = 30.0, router: Any = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.listener = ctx.settings.listeners.mx
        self.hostname = ctx.settings.node.hostname
        self.shutdown_grace = shutdown_grace
        self.tls_context = server_context(self.listener)
        limits = ctx.settings.limits
        self.limiter = SessionLimiter(limits.max_sessions, limits.max_sessions_per_ip)
        self.intake = Intake(ctx.settings, ctx.db, ctx.resolver)
        self.intake.router = router  # mta.routing.inbound.InboundRouter, when wired
        self.sessions: set[MxSession] = set()
        self.stopping = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port: int = self.listener.port

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        # aiosmtpd logs every connection at INFO under "mail.log"; our own session
        # logs say the same with the session id.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self._server = await self.loop.create_server(
            lambda: _MxProtocol(self), host=self.listener.address, port=self.listener.port,
            reuse_address=True, reuse_port=sys.platform.startswith("linux"), backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MX listener on %s:%d", self.listener.address, self.port,
                 extra={"event": "mx.listening", "port": self.port,
                        "tls": self.tls_context is not None})

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self.stopping.set()
        for session in list(self.sessions):
            if session.idle:
                await _say_goodbye(session, self.hostname)
        deadline = asyncio.get_running_loop().time() + self.shutdown_grace
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            for session in list(self.sessions):
                if session.idle:
                    await _say_goodbye(session, self.hostname)
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.conn.close()
        self._server = None

    def describe(self) -> dict:
        return {"listener": "mx", "address": self.listener.address, "port": self.port,
                "tls": self.tls_context is not None}


async def _say_goodbye(session: MxSession, hostname: str) -> None:
    session.idle = False
    try:
        await asyncio.wait_for(
            session.conn.send(replies.SHUTTING_DOWN.format(hostname=hostname)), 1)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
    session.conn.close()
