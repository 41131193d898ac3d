"""A small SMTP client for outbound delivery: one connection, commands pipelined.

Job: speak the client side of RFC 5321 over one connected socket — greeting, EHLO (HELO
for pre-ESMTP servers), STARTTLS (RFC 3207), AUTH PLAIN/LOGIN (RFC 4954) for a smart
host, and the mail transaction with PIPELINING (RFC 2920): MAIL, every RCPT and DATA
leave in one write and their replies are read in order, so a message costs one round
trip plus the body instead of one per command. With a server that offers CHUNKING
(RFC 3030) the message goes in BDAT chunks instead of DATA: sent as it is (no
dot-stuffing, no end-of-data marker to smuggle), chunks pipelined when the server
offers PIPELINING (RFC 3030 §4.2). It knows nothing about MX hosts,
policies or outcomes (`remote.py` decides those); it reports replies and raises
`SmtpClientError` when the connection is gone or the server speaks nonsense.

Replies are parsed strictly: every line of a reply starts with the same three digits,
a line longer than `MAX_LINE` or a reply longer than `MAX_REPLY` ends the connection.
Data the server sends while nobody asked (a 421 before an idle timeout) is kept: it
makes the connection unusable (`reusable`), never the answer to a later command.
"""

from __future__ import annotations

import _ssl  # ENCODING_DER for the certificate chain on Python < 3.13 (peer_chain)
import asyncio
import base64
import re
import ssl
from collections import deque
from dataclasses import dataclass

__all__ = ["BDAT_CHUNK", "ClientReply", "SmtpClient", "SmtpClientError", "dot_stuff"]

MAX_LINE = 2048  # RFC 5321 §4.5.3.1.5 says 512 for a reply line; be lenient, not unbounded
MAX_REPLY = 64 * 1024
# Octets per BDAT chunk: bounds what one chunk makes the server buffer before it
# answers; the whole message still leaves in one write when chunks are pipelined.
BDAT_CHUNK = 1024 * 1024
_DOT_LINE = re.compile(rb"(?m)^\.")


class SmtpClientError(Exception):
    """The connection broke, timed out, or the server's bytes are not SMTP."""


@dataclass(frozen=True)
class ClientReply:
    code: int
    lines: tuple[str, ...]

    @property
    def message(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {' '.join(self.lines)}".strip()


def dot_stuff(body: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line starting with '.' gets another one. `body` ends in CRLF
    and has only CRLF line ends (`remote.normalize_line_endings`)."""
    return _DOT_LINE.sub(b"..", body)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None
        self.replies: deque[ClientReply] = deque()
        self._waiter: asyncio.Future | None = None
        self.error: SmtpClientError | None = None
        self.expecting = 0  # replies someone is waiting for; more than that is unsolicited
        self.unsolicited = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._parse()
        except SmtpClientError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.abort()
            return
        if len(self.replies) > self.expecting:
            self.unsolicited = True
        self._wake()

    def _parse(self) -> None:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise SmtpClientError("reply line too long")
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[:end + 1]
            if len(line) > MAX_LINE:
                raise SmtpClientError("reply line too long")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise SmtpClientError(f"not an SMTP reply: {line[:80]!r}")
            code = int(line[:3])
            if self._code is not None and code != self._code:
                raise SmtpClientError("reply lines with different codes")
            self._code = code
            self._lines.append(line[4:].decode("utf-8", "replace"))
            if sum(len(x) for x in self._lines) > MAX_REPLY:
                raise SmtpClientError("reply too long")
            if line[3:4] != b"-":
                self.replies.append(ClientReply(code, tuple(self._lines)))
                self._code, self._lines = None, []

    def _fail(self, exc: SmtpClientError) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        self._fail(SmtpClientError("connection closed by the server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SmtpClientError(f"connection lost: {exc}" if exc else "connection closed"))
        self.transport = None

    async def next_reply(self, timeout: float) -> ClientReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.replies:
            if self.error is not None:
                raise self.error
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise SmtpClientError(f"no reply within {timeout:g}s") from None
            finally:
                self._waiter = None
        self.expecting = max(0, self.expecting - 1)
        return self.replies.popleft()


class SmtpClient:
    """One SMTP connection; create it with `connect`."""

    def __init__(self, protocol: _Protocol, host: str, timeout: float) -> None:
        self._p = protocol
        self.host = host
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.esmtp = False

    # -- connection ------------------------------------------------------------------------

    @classmethod
    async def connect(cls, sock, host: str, *, timeout: float,
                      tls: ssl.SSLContext | None = None) -> tuple[SmtpClient, ClientReply]:
        """Take over a connected socket (implicit TLS when `tls` is given, the
        certificate checked against `host`) and read the greeting."""
        loop = asyncio.get_running_loop()
        protocol = _Protocol()
        protocol.expecting = 1  # the greeting
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: protocol, sock=sock, ssl=tls, server_hostname=host if tls else None,
                ssl_handshake_timeout=timeout if tls else None), timeout)
        except TimeoutError:
            sock.close()
            raise SmtpClientError("TLS handshake timed out") from None
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise SmtpClientError(f"TLS handshake failed: {exc}") from None
        client = cls(protocol, host, timeout)
        try:
            greeting = await protocol.next_reply(timeout)
        except SmtpClientError:
            client.close()
            raise
        return client, greeting

    @property
    def tls_version(self) -> str | None:
        t = self._p.transport
        obj = t.get_extra_info("ssl_object") if t is not None else None
        return obj.version() if obj is not None else None

    @property
    def peer_chain(self) -> list[bytes]:
        """The certificates the server sent, as sent (DER, its own first), unverified:
        what DANE matches TLSA records against. Python < 3.13 has no public call for
        it; its SSL object's `get_unverified_chain` has been there since 3.10."""
        t = self._p.transport
        obj = t.get_extra_info("ssl_object") if t is not None else None
        if obj is None:
            return []
        chain = (obj.get_unverified_chain() if hasattr(obj, "get_unverified_chain")
                 else obj._sslobj.get_unverified_chain())
        return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER)
                for c in chain or []]

    @property
    def encrypted(self) -> bool:
        return self.tls_version is not None

    @property
    def reusable(self) -> bool:
        """Connected, in sync, and nothing arrived that nobody asked for."""
        p = self._p
        return (p.transport is not None and not p.transport.is_closing()
                and p.error is None and not p.unsolicited and not p.replies
                and p.expecting == 0)

    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    def close(self) -> None:
        if self._p.transport is not None:
            self._p.transport.abort()

    def quit_and_close(self) -> None:
        """Say goodbye without waiting for the answer (idle connections, shutdown)."""
        t = self._p.transport
        if t is not None and not t.is_closing():
            t.write(b"QUIT\r\n")
            t.close()  # flushes QUIT first

    # -- commands --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        t = self._p.transport
        if t is None or t.is_closing():
            raise self._p.error or SmtpClientError("connection closed")
        t.write(data)

    async def command(self, line: bytes, timeout: float | None = None) -> ClientReply:
        return (await self.pipeline([line], timeout))[0]

    def send(self, lines: list[bytes]) -> None:
        """Write several commands at once (PIPELINING); read their replies with
        `reply()`, one each, in order."""
        for line in lines:
            if b"\r" in line or b"\n" in line:
                raise ValueError("a command must not contain CR or LF")
        self._p.expecting += len(lines)
        self._write(b"".join(line + b"\r\n" for line in lines))

    async def reply(self, timeout: float | None = None) -> ClientReply:
        return await self._p.next_reply(self.timeout if timeout is None else timeout)

    async def pipeline(self, lines: list[bytes], timeout: float | None = None
                       ) -> list[ClientReply]:
        self.send(lines)
        return [await self.reply(timeout) for _ in lines]

    async def send_body(self, body: bytes, timeout: float) -> ClientReply:
        """After a 354: the message (CRLF line ends, ending in CRLF), dot-stuffed, and
        the final dot; the reply to it."""
        self._p.expecting += 1
        self._write(dot_stuff(body) + b".\r\n")
        return await self.reply(timeout)

    async def send_chunked(self, body: bytes, timeout: float, *, pipelined: bool,
                           chunk_size: int = BDAT_CHUNK) -> ClientReply:
        """RFC 3030: the message (CRLF line ends) in `BDAT <size>` chunks of at most
        `chunk_size` octets, the last one `BDAT <size> LAST`. Pipelined, every chunk
        is written at once and the replies are read after; otherwise chunk by chunk,
        stopping at the first refusal (the transaction is then left open: the caller
        sends RSET before the next one). The reply: the first that is not 250, else the
        one to LAST."""
        view = memoryview(body)
        starts = range(0, max(len(body), 1), chunk_size)
        reply: ClientReply | None = None
        if pipelined:
            self._p.expecting += len(starts)
        for n, start in enumerate(starts):
            piece = view[start:start + chunk_size]
            last = b" LAST" if n == len(starts) - 1 else b""
            if not pipelined:
                self._p.expecting += 1
            self._write(b"BDAT %d%s\r\n" % (len(piece), last))
            self._write(piece)
            if not pipelined:
                reply = await self.reply(timeout)
                if reply.code != 250:
                    return reply
        if pipelined:
            replies = [await self.reply(timeout) for _ in starts]
            reply = next((r for r in replies if r.code != 250), replies[-1])
        assert reply is not None
        return reply

    async def ehlo(self, name: str) -> ClientReply:
        r = await self.command(b"EHLO " + name.encode("ascii"))
        if r.code == 250:
            self.esmtp = True
            self.extensions = {}
            for line in r.lines[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params
        return r

    async def helo(self, name: str) -> ClientReply:
        r = await self.command(b"HELO " + name.encode("ascii"))
        if r.code == 250:
            self.esmtp, self.extensions = False, {}
        return r

    async def starttls(self, context: ssl.SSLContext, timeout: float) -> ClientReply:
        """STARTTLS; on 220 the TLS handshake (certificate checked against `host` when
        the context says so). The caller sends EHLO again."""
        r = await self.command(b"STARTTLS", timeout)
        if r.code != 220:
            return r
        if self._p._buffer or self._p.replies:
            # Bytes after the 220 would be read as if they came over TLS: an injection.
            self.close()
            raise SmtpClientError("the server sent data after 220 to STARTTLS")
        loop = asyncio.get_running_loop()
        assert self._p.transport is not None
        try:
            transport = await loop.start_tls(self._p.transport, self._p, context,
                                             server_hostname=self.host,
                                             ssl_handshake_timeout=timeout)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            self.close()
            raise SmtpClientError(f"TLS handshake failed: {exc}") from exc
        self._p.transport = transport  # type: ignore[assignment]
        self.extensions = {}
        return r

    def auth_methods(self) -> set[str]:
        return {m.upper() for m in self.extensions.get("AUTH", "").split()}

    async def auth(self, username: str, password: str) -> ClientReply:
        """One AUTH attempt, PLAIN preferred (a relay's lockout counts attempts)."""
        methods = self.auth_methods()
        if "PLAIN" in methods:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            return await self.command(f"AUTH PLAIN {token}".encode())
        if "LOGIN" in methods:
            r = await self.command(b"AUTH LOGIN")
            for value in (username, password):
                if r.code != 334:
                    return r
                r = await self.command(base64.b64encode(value.encode()))
            return r
        return ClientReply(504, (f"no supported AUTH mechanism among "
                                 f"{' '.join(sorted(methods)) or 'none'}",))
