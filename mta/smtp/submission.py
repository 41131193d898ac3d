"""The SMTP submission listeners ([SMTP], MISSION S2): node services that take mail from
authenticated clients and hand it to the sending pipeline.

- `listeners.submission` (production port 465): implicit TLS — the TLS handshake comes
  first, then the 220 greeting (RFC 8314 §3.3). TLS 1.2 is the minimum (`tls.py`).
- `listeners.submission_starttls` (587, off by default; beyond the reference): plain
  TCP, `STARTTLS` required before AUTH and before any mail command.

Both need `tls_cert` and `tls_key`: a submission listener never takes credentials in
the clear, so an enabled listener without a certificate stops the node from starting
with a `ConfigError` naming the key (rather than running without its port).

The connection plumbing (aiosmtpd's asyncio protocol, timers, STARTTLS, implicit TLS,
the 421 on timeout) is every listener's (`protocol.SmtpProtocol`); the command loop is
`session.SmtpSession`'s; the protocol of submission is `submission_session.py`; the
database questions (token, sender domain) are `submission_auth.py`'s; the message goes
through `SendingService.send_raw()`, the pipeline REST send_raw uses too.

Limits ([SMTP > Limits]): SIZE `limits.submission_message_size` (5 MiB), 50 recipients
per session, AUTH timeout 30 s, DATA timeout 300 s (both can be given to the server;
`limits.submission_auth_timeout` / `limits.submission_data_timeout` are read when the
settings have them); sessions are bounded by `limits.max_sessions` and
`limits.max_sessions_per_ip`, per listener.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from mta.config import ConfigError
from mta.smtp.intake import ClientInfo
from mta.smtp.limits import SessionLimiter
from mta.smtp.protocol import SmtpProtocol, drain_sessions, listen
from mta.smtp.proxyproto import ProxyPolicy, ProxyServer
from mta.smtp.submission_auth import SubmissionGate
from mta.smtp.submission_session import SubmissionSession
from mta.smtp.tls import reload_context, server_context

__all__ = ["AUTH_TIMEOUT", "DATA_TIMEOUT", "SubmissionServer", "submission_services"]

log = logging.getLogger("mta.smtp.submission")

# [SMTP > Limits]: "AUTH command timeout 30 seconds", "DATA command timeout 300 seconds".
AUTH_TIMEOUT = 30.0
DATA_TIMEOUT = 300.0
MODES = {"submission": "implicit", "submission_starttls": "starttls"}


def _tls_context(settings: Any, name: str) -> ssl.SSLContext:
    listener = getattr(settings.listeners, name)
    src = getattr(settings, "source", "")
    try:
        ctx = server_context(listener)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"listeners.{name}.tls_cert",
                          f"cannot load the certificate and key: {exc}", source=src) from None
    if ctx is None:
        raise ConfigError(
            f"listeners.{name}", "SMTP submission needs tls_cert and tls_key (it takes "
            "credentials only over TLS); set them, or set enabled: false", source=src)
    return ctx


class SubmissionServer:
    """One submission listener of a node (`listeners.submission` or
    `listeners.submission_starttls`)."""

    def __init__(self, ctx: Any, listener: str = "submission", *, sending: Any = None,
                 gate: SubmissionGate | None = None, auth_timeout: float | None = None,
                 data_timeout: float | None = None, shutdown_grace: float = 30.0) -> None:
        if listener not in MODES:
            raise ValueError(f"unknown submission listener {listener!r}")
        self.ctx = ctx
        self.settings = ctx.settings
        self.name = listener
        self.mode = MODES[listener]
        self.listener = getattr(ctx.settings.listeners, listener)
        self.hostname = ctx.settings.node.hostname
        self.tls_context = _tls_context(ctx.settings, listener)
        self.proxy = ProxyPolicy.from_settings(self.listener.proxy_protocol)
        limits = ctx.settings.limits
        self.size_limit = int(limits.submission_message_size)
        self.auth_timeout = float(auth_timeout if auth_timeout is not None else getattr(
            limits, "submission_auth_timeout", AUTH_TIMEOUT))
        self.data_timeout = float(data_timeout if data_timeout is not None else getattr(
            limits, "submission_data_timeout", DATA_TIMEOUT))
        self.shutdown_grace = shutdown_grace
        self.limiter = SessionLimiter(limits.max_sessions, limits.max_sessions_per_ip)
        self.gate = gate or SubmissionGate(ctx)
        if sending is None:
            from mta.sending.service import SendingService

            sending = SendingService(ctx)
        self.sending = sending
        self.sessions: set[SubmissionSession] = set()
        self.stopping = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | ProxyServer | None = None
        self._bound_tls: ssl.SSLContext | None = None  # the one create_server holds
        self.port: int = self.listener.port

    def new_session(self, conn: SmtpProtocol, client: ClientInfo) -> SubmissionSession:
        return SubmissionSession(
            conn, self.gate, self.sending, self.settings, client,
            size_limit=self.size_limit, auth_timeout=self.auth_timeout,
            data_timeout=self.data_timeout)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        implicit = self.mode == "implicit"
        # Behind load balancers the header comes in clear, before any TLS ClientHello.
        self._server = await listen(
            self, log, self.listener.address, self.listener.port, self.proxy,
            tls=lambda: self.tls_context if implicit else None,
            tls_handshake_timeout=self.auth_timeout)
        if self.proxy is None:
            self._bound_tls = self.tls_context if implicit else None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("submission listener on %s:%d (%s TLS)", self.listener.address, self.port,
                 self.mode, extra={"event": "submission.listening", "port": self.port,
                                   "listener": self.name, "tls": self.mode})

    async def stop(self) -> None:
        """As the MX listener: 421 to idle sessions, let transactions finish until
        `shutdown_grace`, then close (an unacknowledged DATA is the client's to retry);
        then let background delivery attempts record their outcome."""
        if self._server is None:
            return
        self._server.close()
        self.stopping.set()
        await drain_sessions(self.sessions, self.hostname, self.shutdown_grace)
        self._server = None
        close = getattr(self.sending, "close", None)
        if close is not None:
            await close(timeout=self.shutdown_grace)

    def reload(self, fresh: Any) -> None:
        """SIGHUP: new certificate files for the next handshake; open connections go
        on with theirs."""
        try:
            ctx = reload_context(getattr(fresh.listeners, self.name), self._bound_tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("%s certificate not reloaded, keeping the running one: %s",
                      self.name, exc, extra={"event": "submission.tls_reload_failed"})
            return
        self.tls_context = ctx
        log.info("%s certificate reloaded", self.name,
                 extra={"event": "submission.tls_reloaded", "listener": self.name})

    def describe(self) -> dict:
        return {"listener": self.name, "address": self.listener.address, "port": self.port,
                "tls": self.mode}


def submission_services(ctx: Any, sending: Any = None) -> list[SubmissionServer]:
    """The enabled submission listeners of a node, sharing one sending pipeline."""
    listeners = ctx.settings.listeners
    names = [n for n in MODES if getattr(listeners, n).enabled]
    if names and sending is None:
        from mta.sending.service import SendingService

        sending = SendingService(ctx)
    gate = SubmissionGate(ctx)
    return [SubmissionServer(ctx, n, sending=sending, gate=gate) for n in names]
