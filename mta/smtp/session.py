"""SMTP sessions: `SmtpSession`, the command loop every listener shares, and
`MxSession`, the command state machine of the MX listener (the submission listener's
is `submission_session.SubmissionSession`).

It reads commands through `Wire` (strict CRLF, no NUL, bounded lines), answers with
replies from `replies.py` only, and asks `Intake` everything that is not protocol
(block lists, recipients, policy, the end-of-DATA pipeline). The socket side — aiosmtpd,
TLS, timers — is behind the `Connection` protocol that `protocol.py` implements, so this
module does not import aiosmtpd.

Limits (settings `limits.*`; the RFC's own sizes in `limits.py`): command line length
(512 octets, more where an extension says so: 500 5.5.2), recipients per message, every
RCPT counted, repeats included (452 4.5.3), message size (SIZE in EHLO, SIZE= at MAIL
and the data itself: 552 5.3.4), errors: past `errors_soft_limit` each error reply is
delayed by `error_delay`, at `errors_before_disconnect` the session gets 421 4.7.0 and
is closed (Postfix's smtpd_soft_error_limit / smtpd_hard_error_limit: a sender who
mistypes some addresses still gets the message for the valid ones delivered), command
and data timeouts (set on the connection).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from mta import replies
from mta.checks.rbl import RblResult
from mta.config import Settings
from mta.queue.dsnparams import Dsn, DsnParamError, RcptDsn, read_mail_params, read_rcpt_params
from mta.replies import Reply
from mta.smtp import chunking
from mta.smtp.address import Path, PathError, parse_path
from mta.smtp.authcheck import Reverse, lookup_reverse, start_spf
from mta.smtp.chunking import Chunks
from mta.smtp.headers import header_value
from mta.smtp.intake import ClientInfo, Intake, Transaction
from mta.smtp.limits import command_line_limit
from mta.smtp.wire import DataResult, Wire

__all__ = ["Connection", "MxSession", "SmtpSession"]

log = logging.getLogger("mta.smtp.mx")


class Connection(Protocol):
    """The transport side of a session (implemented in protocol.py)."""

    wire: Wire

    async def send(self, reply: Reply) -> None: ...

    async def send_lines(self, lines: list[str]) -> None: ...

    @property
    def tls_available(self) -> bool: ...

    @property
    def tls_active(self) -> bool: ...

    async def starttls(self) -> dict: ...

    def set_timeout(self, seconds: float) -> None: ...

    def close(self) -> None: ...


class SmtpSession:
    """What every listener's session shares: the command loop over `Wire` (strict
    lines, errors counted, 421 after too many), EHLO/HELO, RSET, NOOP, QUIT, VRFY,
    HELP and STARTTLS. Subclasses add their commands to `_commands` and override the
    hooks (`extensions`, `command_timeout`, `_begin`, `_end`, `_reset`)."""

    def __init__(self, conn: Connection, settings: Settings, client: ClientInfo) -> None:
        self.conn = conn
        self.limits = settings.limits
        self.hostname = settings.node.hostname
        self.client = client
        self.extended = False
        self.errors = 0
        self.idle = False  # waiting for a command: safe to close at shutdown
        self.closing = False
        self._commands = {
            "EHLO": self.ehlo, "HELO": self.helo, "RSET": self.rset, "NOOP": self.noop,
            "QUIT": self.quit, "STARTTLS": self.starttls, "VRFY": self.vrfy,
            "HELP": self.help, "EXPN": self.not_implemented, "BDAT": self.bdat,
            "TURN": self.not_implemented,
        }
        self.chunks: Chunks | None = None  # BDAT chunks of the transaction so far

    # -- hooks ---------------------------------------------------------------------------

    def extensions(self) -> list[str]:
        """The EHLO keywords after the greeting line."""
        return []

    def command_timeout(self) -> float:
        return self.limits.command_timeout

    def _begin(self) -> None:
        """Called before the greeting."""

    def _end(self) -> None:
        """Called when the session ends, whatever the reason."""

    def _reset(self) -> None:
        """Drop the mail transaction (RSET, EHLO, STARTTLS, end of session)."""

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        self._begin()
        try:
            await self.reply(replies.GREETING.format(hostname=self.hostname))
            while not self.closing:
                if stopping.is_set():
                    await self.reply(replies.SHUTTING_DOWN.format(hostname=self.hostname))
                    break
                self.conn.set_timeout(self.command_timeout())
                self.idle = True
                line = await self.conn.wire.read_command()
                self.idle = False
                if line is None:
                    break
                await self.dispatch(line)
                if self.errors >= self.limits.errors_before_disconnect and not self.closing:
                    await self.conn.send(replies.TOO_MANY_ERRORS.format(hostname=self.hostname))
                    break
        finally:
            self.idle = False
            self._reset()
            self._end()
            self.conn.close()

    async def dispatch(self, line) -> None:
        if line.too_long:
            return await self.reply(replies.LINE_TOO_LONG)
        if line.has_nul:
            return await self.reply(replies.NUL_IN_COMMAND)
        if line.bare_line_end:
            return await self.reply(replies.BARE_LINE_END_IN_COMMAND)
        try:
            text = line.text.decode("utf-8")
        except UnicodeDecodeError:
            return await self.reply(replies.NON_ASCII_COMMAND)
        verb, _, arg = text.partition(" ")
        if len(line.text) + 2 > command_line_limit(verb):
            return await self.reply(replies.LINE_TOO_LONG)
        handler = self._commands.get(verb.upper()) if verb.isascii() else None
        if handler is None:
            return await self.reply(replies.UNKNOWN_COMMAND)
        await handler(arg.strip() or None)

    async def reply(self, reply: Reply) -> None:
        if reply.code >= 400:
            self.errors += 1
            if self.errors > self.limits.errors_soft_limit:
                # Slows down address harvesting and broken clients without refusing
                # anything they might still legitimately send.
                await asyncio.sleep(self.limits.error_delay)
        await self.conn.send(reply)

    # -- commands every listener has -----------------------------------------------------

    async def ehlo(self, arg: str | None) -> None:
        if await self._greeted(arg, "EHLO", extended=True):
            await self.conn.send_lines(replies.ehlo_lines(
                self.hostname, f"greets {self.client.helo}", self.extensions()))

    async def helo(self, arg: str | None) -> None:
        if await self._greeted(arg, "HELO", extended=False):
            await self.reply(replies.HELO_OK.format(hostname=self.hostname,
                                                    helo=self.client.helo))

    async def _greeted(self, arg: str | None, verb: str, *, extended: bool) -> bool:
        """EHLO or HELO: a fresh transaction under the name the client gave (RFC 5321
        4.1.4); False, with a 501 sent, when it gave none."""
        if not arg:
            await self.reply(replies.HELO_SYNTAX.format(verb=verb))
            return False
        self._reset()
        self.client.helo = arg.split()[0]
        self.extended = extended
        return True

    async def rset(self, arg: str | None) -> None:
        self._reset()
        await self.reply(replies.RESET_OK)

    async def noop(self, arg: str | None) -> None:
        await self.reply(replies.NOOP_OK)

    async def quit(self, arg: str | None) -> None:
        self.closing = True
        await self.conn.send(replies.CLOSING.format(hostname=self.hostname))

    async def vrfy(self, arg: str | None) -> None:
        await self.reply(replies.VRFY_CANNOT)

    async def help(self, arg: str | None) -> None:
        await self.reply(replies.HELP)

    async def not_implemented(self, arg: str | None) -> None:
        await self.reply(replies.NOT_IMPLEMENTED)

    async def bdat(self, arg: str | None) -> None:
        await chunking.bdat(self, arg)

    def _bdat_refusal(self) -> Reply | None:
        """The reply refusing a BDAT chunk in the current state, or None (listeners with
        a mail transaction override it)."""
        return replies.NOT_IMPLEMENTED

    async def _receive_data(self, go_ahead: Reply) -> None:
        """DATA once the transaction may take it: `go_ahead` (354), the message (its
        timeout restarts with every chunk read), then `_end_of_data` of the listener."""
        if self.chunks is not None:
            return await self.reply(replies.DATA_AFTER_BDAT)
        await self.conn.send(go_ahead)
        timeout = self._chunk_timeout()
        self.conn.set_timeout(timeout)
        result = await self.conn.wire.read_data(
            self._size_limit(), self._bare_mode(),
            on_chunk=lambda: self.conn.set_timeout(timeout))
        if result is None:  # the client went away mid-data: nothing was accepted
            self._reset()
            self.closing = True
            return
        await self._end_of_data(result)

    async def starttls(self, arg: str | None) -> None:
        if arg:
            return await self.reply(replies.PARAMETER_SYNTAX.format(detail="STARTTLS takes none"))
        if self.conn.tls_active:
            return await self.reply(replies.ALREADY_TLS)
        if not self.conn.tls_available:
            return await self.reply(replies.TLS_NOT_AVAILABLE)
        await self.conn.send(replies.READY_FOR_TLS)
        # RFC 3207 §4.2 and CVE-2021-38371-style injection: anything pipelined in the
        # clear after STARTTLS is discarded, and the session starts over. The 220 has
        # been drained, and nothing yields between this discard and the transport
        # switching to TLS, so no plaintext can slip in between; what arrives later is
        # decrypted (a client may send its next command with its handshake Finished).
        self.conn.wire.discard_buffered()
        try:
            self.client.tls = await self.conn.starttls()
        except Exception as exc:
            log.info("TLS handshake with %s failed: %s", self.client.ip, exc)
            self.closing = True
            return
        self._reset()
        self.client.helo = None
        self.extended = False

    @staticmethod
    def _path_error(exc: PathError, syntax: Reply) -> Reply:
        if exc.kind == "non_ascii_local":
            return replies.NON_ASCII_ADDRESS
        if exc.kind == "bad_parameter":
            return replies.PARAMETER_SYNTAX.format(detail=exc.detail)
        if exc.kind == "duplicate_parameter":
            return replies.DUPLICATE_PARAMETER.format(param=exc.detail)
        return syntax

    @staticmethod
    def _data_refusal(result: DataResult) -> tuple[str, Reply] | None:
        """(reason, reply) for data the wire refused (other than too big), or None."""
        if result.refused == "bare_line_end":
            return "bare_line_ending", replies.BARE_LINE_END_IN_DATA
        if result.refused == "nul":
            return "nul_in_data", replies.NUL_IN_DATA
        if result.refused == "long_line":
            return "line_too_long", replies.LONG_LINE_IN_DATA
        return None

    # -- what MAIL and RCPT share across listeners ---------------------------------------

    async def _mail_path(self, arg: str | None) -> Path | None:
        """MAIL's reverse-path, or None when the syntax error has been answered."""
        try:
            return parse_path(arg, "FROM", null_ok=True)
        except PathError as exc:
            await self.reply(self._path_error(exc, replies.BAD_SENDER_SYNTAX))
            return None

    async def _mail_params_ok(self, params: dict[str, str | None], size_limit: int,
                              too_big: Callable[[], Awaitable[None]],
                              also_known: tuple[str, ...] = ()) -> bool:
        """Whether MAIL's parameters (SIZE, BODY and `also_known`, after EHLO only) are
        acceptable; if not, the refusal has been sent (`too_big` sends it for SIZE=
        over `size_limit`)."""
        for key, value in params.items():
            if key == "SIZE" and self.extended:
                if not value or not value.isdigit():
                    await self.reply(replies.PARAMETER_SYNTAX.format(detail="SIZE"))
                    return False
                if int(value) > size_limit:
                    await too_big()
                    return False
            elif key == "BODY" and self.extended:
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    await self.reply(replies.PARAMETER_SYNTAX.format(detail="BODY"))
                    return False
            elif key == "SMTPUTF8" and "SMTPUTF8" in also_known and self.extended:
                if value is not None:  # RFC 6531 §3.4: the parameter takes no value
                    await self.reply(replies.PARAMETER_SYNTAX.format(detail="SMTPUTF8"))
                    return False
            elif key in also_known and self.extended:
                pass
            else:
                await self.reply(replies.UNKNOWN_PARAMETER.format(detail=key))
                return False
        return True

    async def _mail_dsn(self, params: dict[str, str | None]
                        ) -> tuple[str | None, str | None] | None:
        """MAIL's RET and ENVID (RFC 3461 §4.3, §4.4) in their stored forms, or None when
        one was refused (the reply has been sent). `_mail_params_ok` has already refused
        them where DSN is not offered (after HELO)."""
        try:
            return read_mail_params(params)
        except DsnParamError as exc:
            await self.reply(replies.DSN_PARAMETER.format(param=exc.param, detail=exc.detail))
            return None

    async def _rcpt_path(self, arg: str | None, utf8: bool = False
                         ) -> tuple[Path, RcptDsn] | None:
        """RCPT's forward-path and its DSN parameters (NOTIFY, ORCPT: RFC 3461 §4.1,
        §4.2; after EHLO only, like every parameter), or None when the refusal has been
        sent. `utf8`: the transaction asked for SMTPUTF8."""
        try:
            path = parse_path(arg, "TO", null_ok=False, utf8=utf8)
        except PathError as exc:
            await self.reply(self._path_error(exc, replies.BAD_RECIPIENT_SYNTAX))
            return None
        unknown = [k for k in path.params if k not in ("NOTIFY", "ORCPT") or not self.extended]
        if unknown:
            await self.reply(replies.UNKNOWN_PARAMETER.format(detail=unknown[0]))
            return None
        try:
            return path, read_rcpt_params(path.params)
        except DsnParamError as exc:
            await self.reply(replies.DSN_PARAMETER.format(param=exc.param, detail=exc.detail))
            return None


class MxSession(SmtpSession):
    def __init__(self, conn: Connection, intake: Intake, settings: Settings,
                 client: ClientInfo) -> None:
        super().__init__(conn, settings, client)
        self.intake = intake
        self.ptr_timeout = settings.inbound.ptr_timeout
        self.txn: Transaction | None = None
        self._rbl: asyncio.Task[RblResult] | None = None
        self._reverse: asyncio.Task[Reverse] | None = None
        self._commands.update({
            "MAIL": self.mail, "RCPT": self.rcpt, "DATA": self.data,
            "AUTH": self.not_implemented,
        })

    def extensions(self) -> list[str]:
        extensions = ["PIPELINING", f"SIZE {self.intake.size_limit}", "8BITMIME",
                      "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "SMTPUTF8"]
        if self.conn.tls_available and not self.conn.tls_active:
            extensions.append("STARTTLS")
        return extensions

    def _begin(self) -> None:
        ip = self.client.ip
        self._rbl = asyncio.ensure_future(self.intake.check_rbl(ip))
        self._reverse = asyncio.ensure_future(
            lookup_reverse(self.intake.resolver, ip, self.ptr_timeout))

    def _end(self) -> None:
        for task in (self._rbl, self._reverse):
            if task is not None and not task.done():
                task.cancel()

    def _reset(self) -> None:
        if self.txn is not None:
            self.txn.cancel()
        self.txn = None
        self.chunks = None

    # -- what BDAT needs (chunking.py) ----------------------------------------------------

    def _bdat_refusal(self) -> Reply | None:
        if self.txn is None:
            return replies.NEED_MAIL
        if not self.txn.recipients:
            return replies.NO_VALID_RECIPIENTS
        return None

    def _size_limit(self) -> int:
        return self.intake.size_limit

    def _bare_mode(self) -> str:
        return self.intake.bare

    def _chunk_timeout(self) -> float:
        return self.limits.data_timeout

    @staticmethod
    def _message_refusal(content: bytes) -> tuple[str, Reply] | None:
        """RFC 5322 facts refused whatever the policy (monitor_only included): an
        empty message, and one without a From header (§3.6)."""
        if not content:
            return "empty_message", replies.EMPTY_MESSAGE
        if header_value(content, "From") is None:
            return "no_from_header", replies.NO_FROM_HEADER
        return None

    # -- commands ------------------------------------------------------------------------

    async def mail(self, arg: str | None) -> None:
        if not self.client.helo:
            return await self.reply(replies.NEED_HELO)
        if self.txn is not None:
            return await self.reply(replies.NESTED_MAIL)
        path = await self._mail_path(arg)
        if path is None:
            return

        async def too_big() -> None:
            await self.intake.refused(self.client, "too_big", replies.MESSAGE_TOO_BIG,
                                      mail_from=path.address)
            await self.reply(replies.MESSAGE_TOO_BIG.format(limit=self.intake.size_limit))

        if not await self._mail_params_ok(path.params, self.intake.size_limit, too_big,
                                          also_known=("SMTPUTF8", "RET", "ENVID")):
            return
        dsn = await self._mail_dsn(path.params)
        if dsn is None:
            return
        assert self._rbl is not None
        listed = await self._rbl
        if listed.listed:
            reply = self.intake.rbl_reply(self.client.ip, listed)
            await self.intake.refused(self.client, "rbl", reply, mail_from=path.address,
                                      extra={"zones": listed.listed_zones})
            return await self.reply(reply)
        self.txn = Transaction(mail_from=path.address, spf_task=start_spf(
            self.intake.resolver, self.client.ip, path.address, self.client.helo,
            self.hostname), smtputf8="SMTPUTF8" in path.params, dsn=Dsn(*dsn))
        await self.reply(replies.SENDER_OK)

    async def rcpt(self, arg: str | None) -> None:
        txn = self.txn
        if txn is None:
            return await self.reply(replies.NEED_MAIL)
        parsed = await self._rcpt_path(arg, utf8=txn.smtputf8)
        if parsed is None:
            return
        path, dsn = parsed
        # Every RCPT counts, repeats and refusals included: the limit bounds the work
        # (look-ups) a transaction can cause, not only the recipients it ends with.
        txn.rcpt_commands += 1
        if txn.rcpt_commands > self.limits.recipients_per_message:
            return await self.reply(replies.TOO_MANY_RECIPIENTS)
        try:
            verdict = await self.intake.recipient(path.address)
        except Exception as exc:
            log.error("recipient lookup failed for %s: %s", path.address, exc)
            return await self.reply(replies.LOCAL_ERROR)
        if verdict.kind == "relay_denied":
            reply = replies.RELAY_DENIED.format(domain=verdict.domain)
            await self.intake.refused(self.client, "relay_denied", reply,
                                      mail_from=txn.mail_from, recipients=[verdict.address])
            return await self.reply(reply)
        if verdict.kind == "unknown":
            reply = replies.UNKNOWN_RECIPIENT.format(address=verdict.address)
            await self.intake.refused(self.client, "unknown_recipient", reply,
                                      mail_from=txn.mail_from, recipients=[verdict.address])
            return await self.reply(reply)
        if any(r.address == verdict.address for r in txn.recipients):
            return await self.reply(replies.RECIPIENT_OK)  # a duplicate: deliver once
        policy = self.intake.policy_for(verdict.domain)
        if txn.recipients and txn.recipients[0].report_intake != verdict.report_intake:
            # A report mailbox's mail is parsed here, not routed: alone in its transaction.
            return await self.reply(replies.RECIPIENT_NEEDS_OWN_TRANSACTION)
        if txn.policy is not None and policy != txn.policy:
            # One DATA reply covers every recipient, so a transaction keeps one policy.
            return await self.reply(replies.RECIPIENT_NEEDS_OWN_TRANSACTION)
        txn.policy = policy
        txn.recipients.append(verdict)
        txn.dsn.recipients[verdict.address] = dsn
        await self.reply(replies.RECIPIENT_OK)

    async def data(self, arg: str | None) -> None:
        if arg:
            return await self.reply(replies.PARAMETER_SYNTAX.format(detail="DATA takes none"))
        txn = self.txn
        if txn is None:
            return await self.reply(replies.NEED_MAIL)
        if not txn.recipients:
            return await self.reply(replies.NO_VALID_RECIPIENTS)
        await self._receive_data(replies.START_DATA)

    async def _end_of_data(self, result: DataResult) -> None:
        """The message of the transaction has been read (DATA or BDAT LAST)."""
        txn = self.txn
        assert txn is not None
        rcpts = [r.address for r in txn.recipients]
        if result.too_big:
            reply = replies.MESSAGE_TOO_BIG.format(limit=self.intake.size_limit)
            await self.intake.refused(self.client, "too_big", reply, mail_from=txn.mail_from,
                                      recipients=rcpts, extra={"size": result.size})
            self._reset()
            return await self.reply(reply)
        refusal = self._data_refusal(result) or self._message_refusal(result.content)
        if refusal is not None:
            reason, reply = refusal
            await self.intake.refused(self.client, reason, reply,
                                      mail_from=txn.mail_from, recipients=rcpts)
            self._reset()
            return await self.reply(reply)
        if self._reverse is not None:
            self.client.reverse = await self._reverse
        self.txn = None  # the transaction ends here whatever the outcome (RFC 5321 §4.1.1.4)
        reply = await self.intake.finish(self.client, txn, result.content)
        txn.cancel()
        await self.reply(reply)
