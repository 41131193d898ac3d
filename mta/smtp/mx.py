"""The MX listener (port 25): a node service receiving mail for our routing domains.

`MxServer(ctx)` is the service the node starts (`start`, `stop`, `describe`): the
listeners' shared connection plumbing (`protocol.SmtpProtocol`, aiosmtpd's asyncio
protocol) with `session.MxSession` inside, whose replies all come from `replies.py`.

Per connection: the session limits are checked first (421 4.7.0 when full), the RBL
and PTR look-ups start at once, then the session runs. `stop()` stops accepting, says
421 4.3.2 to idle sessions, lets sessions inside a transaction finish until
`shutdown_grace` seconds, then closes what is left (an unfinished DATA is never
acknowledged, so nothing is lost: the client retries). `reload()` (SIGHUP) takes new
certificate files and drops the cached routing rules.

Settings read: `listeners.mx` (address, port, tls_cert, tls_key, proxy_protocol), `limits.*`,
`inbound.*`, `node.hostname`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from mta.smtp.intake import ClientInfo, Intake
from mta.smtp.limits import SessionLimiter
from mta.smtp.protocol import SmtpProtocol, drain_sessions, listen, say_goodbye
from mta.smtp.proxyproto import ProxyPolicy, ProxyServer
from mta.smtp.session import MxSession
from mta.smtp.tls import reload_context, server_context

__all__ = ["MxServer"]

log = logging.getLogger("mta.smtp.mx")
LISTENER = "mx"


class MxServer:
    """The port 25 service of a node."""

    name = LISTENER

    def __init__(self, ctx: Any, shutdown_grace: float = 30.0, router: Any = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.listener = ctx.settings.listeners.mx
        self.hostname = ctx.settings.node.hostname
        self.shutdown_grace = shutdown_grace
        self.tls_context = server_context(self.listener)
        self.proxy = ProxyPolicy.from_settings(self.listener.proxy_protocol)
        limits = ctx.settings.limits
        self.limiter = SessionLimiter(limits.max_sessions, limits.max_sessions_per_ip)
        self.intake = Intake(ctx.settings, ctx.db, ctx.resolver)
        self.intake.router = router  # mta.routing.inbound.InboundRouter, when wired
        self.sessions: set[MxSession] = set()
        self.stopping = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | ProxyServer | None = None
        self.port: int = self.listener.port

    def new_session(self, conn: SmtpProtocol, client: ClientInfo) -> MxSession:
        return MxSession(conn, self.intake, self.settings, client)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        # aiosmtpd logs every connection at INFO under "mail.log"; our own session
        # logs say the same with the session id.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self._server = await listen(self, log, self.listener.address, self.listener.port,
                                    self.proxy)
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
                await say_goodbye(session, self.hostname)
        await drain_sessions(self.sessions, self.hostname, self.shutdown_grace)
        self._server = None

    def reload(self, fresh: Any) -> None:
        """SIGHUP: new certificate files for the next STARTTLS, routing rules read afresh
        at the next RCPT. Open connections go on as they are."""
        self.intake.directory.forget()
        if self.tls_context is not None:
            try:
                self.tls_context = reload_context(fresh.listeners.mx, None)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.error("MX certificate not reloaded, keeping the running one: %s", exc,
                          extra={"event": "mx.tls_reload_failed"})
                return
            log.info("MX certificate reloaded", extra={"event": "mx.tls_reloaded"})

    def describe(self) -> dict:
        return {"listener": "mx", "address": self.listener.address, "port": self.port,
                "tls": self.tls_context is not None}

