"""A real SMTP server on a loopback address that records what it receives.

It runs aiosmtpd in its own thread, so tests in any event loop (or none) can use it.
Each message keeps the MAIL and RCPT arguments as sent (`mail_command`,
`rcpt_commands`). Replies can be scripted per recipient or for DATA (`sink.rcpt_replies["a@x"] = "550 5.1.1 no"`,
`sink.data_replies.append("451 4.3.0 try later")`), and STARTTLS is offered when a
certificate is given (see `tls_context_for` in conftest). It offers PIPELINING unless
told not to, and closes a connection idle for `idle_timeout` seconds (421 first).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["ReceivedMessage", "SmtpSink"]


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    peer: tuple
    helo: str | None
    received_at: float = field(default_factory=time.time)
    smtputf8: bool = False  # MAIL FROM carried SMTPUTF8 (RFC 6531)
    # The MAIL and RCPT arguments as sent (parameters included, case kept), in order.
    mail_command: str = ""
    rcpt_commands: list[str] = field(default_factory=list)


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:  # aiosmtpd reads pipelined commands in order anyway
            responses.insert(1, "250-PIPELINING")
        if self.sink.dsn:
            responses.insert(1, "250-DSN")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        scripted = self.sink._next_reply(self.sink.rcpt_replies, address.lower())
        if scripted:
            return scripted
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.on_data is not None:  # e.g. a test stopping the database right here
            self.sink.on_data()
        scripted = None
        with self.sink._lock:
            if self.sink.data_replies:
                scripted = self.sink.data_replies.popleft()
        if scripted and not scripted.startswith("2"):
            return scripted
        msg = ReceivedMessage(
            mail_from=envelope.mail_from or "", rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or envelope.content,
            tls=session.ssl is not None, peer=session.peer, helo=session.host_name,
            smtputf8="SMTPUTF8" in [o.upper() for o in envelope.mail_options],
            mail_command=getattr(envelope, "raw_mail", ""),
            rcpt_commands=list(getattr(envelope, "raw_rcpts", [])))
        with self.sink._lock:
            self.sink.messages.append(msg)
            self.sink._arrived.notify_all()
        return scripted or "250 2.0.0 queued as sink"


_DSN_PARAMS = ("RET=", "ENVID=", "NOTIFY=", "ORCPT=")


class _RecordingSmtp(SMTP):
    """aiosmtpd's server, keeping the raw MAIL and RCPT arguments on the envelope; with
    the sink's `dsn` on, it takes the RFC 3461 parameters (which aiosmtpd refuses) by
    recording them and handing aiosmtpd the command without them."""

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(self._dsn_stripped(arg))
        if self.envelope is not None and self.envelope.mail_from is not None:
            self.envelope.raw_mail = arg or ""
            self.envelope.raw_rcpts = []

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self.envelope is not None and hasattr(self.envelope, "raw_rcpts"):
            self.envelope.raw_rcpts.append(arg or "")
        await super().smtp_RCPT(self._dsn_stripped(arg))

    def _dsn_stripped(self, arg: str | None) -> str | None:
        if arg is None or not self.event_handler.sink.dsn:
            return arg
        return " ".join(w for w in arg.split(" ") if not w.upper().startswith(_DSN_PARAMS))


class _Controller(Controller):
    def __init__(self, sink: SmtpSink, **kw) -> None:
        self._sink = sink
        super().__init__(_Handler(sink), **kw)

    def factory(self) -> SMTP:
        return _RecordingSmtp(self.handler, hostname=self._sink.hostname, decode_data=False,
                    tls_context=self._sink.tls_context,
                    require_starttls=self._sink.require_starttls,
                    enable_SMTPUTF8=self._sink.smtputf8, data_size_limit=self._sink.size_limit,
                    timeout=self._sink.idle_timeout)

    def _trigger_server(self) -> None:
        # The base class connects to the listening port to wake the server; with
        # STARTTLS offered that would need TLS, so a plain connect is enough here.
        family = socket.AF_INET6 if ":" in self.hostname else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(self.ready_timeout)
            s.connect((self.hostname, self.port))
            s.recv(1024)


class SmtpSink:
    def __init__(self, address: str = "127.0.0.2", port: int = 0,
                 tls_context: ssl.SSLContext | None = None, require_starttls: bool = False,
                 hostname: str = "sink.test", size_limit: int = 64 * 1024 * 1024,
                 pipelining: bool = True, idle_timeout: float = 300) -> None:
        self.address = address
        self.port = port or _free_port(address)
        self.tls_context = tls_context
        self.require_starttls = require_starttls
        self.hostname = hostname
        self.size_limit = size_limit
        self.pipelining = pipelining  # offer PIPELINING (RFC 2920) in the EHLO reply
        self.idle_timeout = idle_timeout  # seconds of silence before it says 421 and closes
        self.smtputf8 = True  # offer SMTPUTF8 (RFC 6531); read per connection
        self.dsn = False  # offer DSN (RFC 3461) and take its parameters; per connection
        self.messages: list[ReceivedMessage] = []
        # Scripted replies: per recipient (lower-cased) a queue of replies used one per RCPT.
        self.rcpt_replies: dict[str, deque[str] | str] = {}
        self.data_replies: deque[str] = deque()
        # Called (in the sink's thread) when a message's data has arrived, before the reply.
        self.on_data: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._controller: _Controller | None = None

    def _next_reply(self, table: dict, key: str) -> str | None:
        with self._lock:
            entry = table.get(key)
            if entry is None:
                return None
            if isinstance(entry, str):
                return entry
            return entry.popleft() if entry else None

    def start(self) -> SmtpSink:
        self._controller = _Controller(self, hostname=self.address, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until `count` messages have arrived (or fail with AssertionError)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"sink {self.address}:{self.port} got {len(self.messages)} "
                        f"message(s), expected {count}")
                self._arrived.wait(left)
            return list(self.messages)


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]
