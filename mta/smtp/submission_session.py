"""One SMTP submission session ([SMTP], MISSION S2): AUTH, then MAIL / RCPT / DATA handed
to the sending pipeline (`SendingService.send_raw`, the one every front door uses).

The command loop, EHLO/HELO, RSET, NOOP, QUIT and STARTTLS are `session.SmtpSession`'s,
the wire is `wire.Wire` (strict CRLF command lines, DATA ending only at
<CR><LF>.<CR><LF>). What differs from the MX listener:

- nothing but EHLO, HELO, STARTTLS, AUTH, NOOP, RSET, QUIT, HELP and VRFY works before
  AUTH: MAIL, RCPT and DATA get `530 5.7.0`; on the STARTTLS listener AUTH and MAIL
  before STARTTLS get `530 5.7.0 Must issue a STARTTLS command first` and AUTH is not
  advertised in the clear (RFC 4954 §4);
- AUTH PLAIN (RFC 4616) and LOGIN, with or without an initial response; each step of
  the exchange, and every command before AUTH succeeds, has `auth_timeout` (30 s);
  failures are throttled per client address (then `454 4.7.0`) and per user name (then
  delayed), see `auth_throttle.py`;
- MAIL FROM: the sender domain must be onboarded for the token's account
  (`550 5.7.1`); `SIZE=` over the limit is `552 5.3.4`; `SMTPUTF8` (RFC 6531) lets the
  transaction use internationalised local parts (without it they are `553 5.6.7`) and
  UTF-8 headers (RFC 6532); domains may be U-labels either way (sent as A-labels);
- RCPT TO: at most `RECIPIENTS_PER_SESSION` (50) accepted recipients per session,
  across transactions ([SMTP > Limits]: "50 per session"); the next is `452 4.5.3`;
- DATA: `data_timeout` (300 s) without progress ends the session; over the size limit
  `552 5.3.4` after the data; bare CR/LF in the data are normalised to CRLF (submitting
  clients such as curl upload files with LF line ends; normalising after the end of data
  was found cannot start a second message) and NULs removed; a line over 998 octets is
  `550 5.6.0`; then `send_raw()` validates (the header
  allowlist of [Email headers] included), signs and durably enqueues; its errors become
  their replies from `mta/errors.py`, success is `250 2.0.0 Ok <Message-ID>`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mta import replies
from mta.config import Settings
from mta.errors import ERRORS, MtaError
from mta.observe import metrics
from mta.queue.dsnparams import Dsn
from mta.replies import Reply
from mta.smtp.intake import ClientInfo
from mta.smtp.session import Connection, SmtpSession
from mta.smtp.submission_auth import SubmissionGate, Submitter, b64decode, parse_plain
from mta.smtp.wire import DataResult

__all__ = ["RECIPIENTS_PER_SESSION", "SubmissionSession", "error_reply"]

log = logging.getLogger("mta.smtp.submission")

# [SMTP > Limits]: "RCPT TO recipients: 50 per session".
RECIPIENTS_PER_SESSION = 50
_LOGIN_USERNAME = "VXNlcm5hbWU6"  # base64 "Username:" (draft-murchison-sasl-login)
_LOGIN_PASSWORD = "UGFzc3dvcmQ6"  # base64 "Password:"


def error_reply(code: str | MtaError, *, detail: bool = True) -> Reply:
    """The SMTP reply of an error code from `mta/errors.py`, with the error's
    client-safe message appended when `detail` (one line, no controls)."""
    err = code if isinstance(code, MtaError) else None
    spec = ERRORS[err.code if err else str(code)]
    text = spec.smtp.text
    if detail and err is not None and err.message != spec.description:
        extra = "".join(c if " " <= c <= "~" else " " for c in err.message)[:400]
        text = f"{text}: {extra}"
    return Reply(spec.smtp.code, spec.smtp.enhanced, text)


class _Cancelled(Exception):
    """The client ended the AUTH exchange (or the connection) before it finished."""


class SubmissionSession(SmtpSession):
    def __init__(self, conn: Connection, gate: SubmissionGate, sending: Any,
                 settings: Settings, client: ClientInfo, *, size_limit: int,
                 auth_timeout: float, data_timeout: float) -> None:
        super().__init__(conn, settings, client)
        self.gate = gate
        self.sending = sending  # mta.sending.service.SendingService
        self.size_limit = size_limit
        self.auth_timeout = auth_timeout
        self.data_timeout = data_timeout
        self.submitter: Submitter | None = None
        self.mail_from: str | None = None
        self.smtputf8 = False  # MAIL ... SMTPUTF8: the transaction may use UTF-8 addresses
        self.recipients: list[str] = []
        self.dsn = Dsn()  # RFC 3461: RET, ENVID and each recipient's NOTIFY, ORCPT
        self.session_recipients = 0
        self._commands.update({"AUTH": self.auth, "MAIL": self.mail, "RCPT": self.rcpt,
                               "DATA": self.data})

    # -- hooks -------------------------------------------------------------------------

    def extensions(self) -> list[str]:
        common = [f"SIZE {self.size_limit}", "8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING",
                  "CHUNKING", "DSN", "SMTPUTF8"]
        if not self.conn.tls_active:
            return [*common, "STARTTLS"] if self.conn.tls_available else common
        return ["AUTH PLAIN LOGIN", *common]

    def command_timeout(self) -> float:
        return self.auth_timeout if self.submitter is None else self.limits.command_timeout

    def _reset(self) -> None:
        self.mail_from = None
        self.smtputf8 = False
        self.recipients = []
        self.dsn = Dsn()
        self.chunks = None

    # -- what BDAT needs (chunking.py) ----------------------------------------------------

    def _bdat_refusal(self) -> Reply | None:
        if not self.conn.tls_active:
            return replies.NEED_TLS_FIRST
        if self.submitter is None:
            return error_reply("E_AUTH_REQUIRED")
        if self.mail_from is None:
            return replies.NEED_MAIL
        if not self.recipients:
            return replies.NO_VALID_RECIPIENTS
        return None

    def _size_limit(self) -> int:
        return self.size_limit

    def _bare_mode(self) -> str:
        return "normalize"  # as for DATA: submitting clients send LF line ends

    def _chunk_timeout(self) -> float:
        return self.data_timeout

    async def help(self, arg: str | None) -> None:
        await self.reply(replies.SUBMISSION_HELP)

    async def refuse(self, reply: Reply, reason: str) -> None:
        metrics.SUBMISSION_REJECTIONS.labels(reason).inc()
        await self.reply(reply)

    async def _gatekeep(self) -> bool:
        """Whether a mail command may go on; if not, the refusal has been sent."""
        if not self.conn.tls_active:
            await self.refuse(replies.NEED_TLS_FIRST, "tls_required")
            return False
        if self.submitter is None:
            await self.refuse(error_reply("E_AUTH_REQUIRED"), "auth_required")
            return False
        return True

    # -- AUTH ----------------------------------------------------------------------------

    async def auth(self, arg: str | None) -> None:
        if not arg:
            return await self.reply(replies.PARAMETER_SYNTAX.format(
                detail="AUTH <mechanism> [initial-response]"))
        if not self.conn.tls_active:
            return await self.refuse(replies.NEED_TLS_FIRST, "tls_required")
        if self.submitter is not None:
            return await self.reply(replies.ALREADY_AUTHENTICATED)
        if not self.client.helo:
            return await self.reply(replies.NEED_HELO)
        if self.mail_from is not None:
            return await self.reply(replies.AUTH_DURING_TRANSACTION)
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            return await self.reply(replies.AUTH_MECHANISM_UNKNOWN)
        label = mechanism.lower()
        throttle = self.gate.throttle
        if throttle.ip_blocked(self.client.ip):
            metrics.SUBMISSION_AUTH_THROTTLED.labels("ip").inc()
            metrics.SUBMISSION_AUTH.labels(label, "throttled").inc()
            return await self.refuse(replies.AUTH_THROTTLED, "auth_throttled")
        try:
            if mechanism == "PLAIN":
                credentials = await self._plain(initial.strip() or None)
            else:
                credentials = await self._login(initial.strip() or None)
        except _Cancelled:
            metrics.SUBMISSION_AUTH.labels(label, "cancelled").inc()
            return
        if isinstance(credentials, Reply):  # malformed exchange
            metrics.SUBMISSION_AUTH.labels(label, "failed").inc()
            throttle.failed(self.client.ip, None)
            return await self.reply(credentials)
        authzid, username, password = credentials
        delay = throttle.user_delay(username)
        if delay:  # before the look-up, whatever its outcome: no timing oracle
            metrics.SUBMISSION_AUTH_THROTTLED.labels("user").inc()
            await asyncio.sleep(delay)
        try:
            self.submitter = await self.gate.authenticate(username, password,
                                                          authzid=authzid)
        except MtaError as err:
            temporary = err.spec.temporary
            if not temporary:
                throttle.failed(self.client.ip, username)
            metrics.SUBMISSION_AUTH.labels(label, "error" if temporary else "failed").inc()
            # Which part was wrong goes to the log only (submission_auth.py).
            return await self.refuse(error_reply(err, detail=False), err.code)
        metrics.SUBMISSION_AUTH.labels(label, "ok").inc()
        log.info("submission client authenticated", extra={
            "event": "submission.authenticated", "session_id": self.client.session_id,
            "token_id": self.submitter.token_id, "account_id": self.submitter.account_id,
            "mechanism": label})
        await self.conn.send(replies.AUTH_OK)

    async def _response(self, challenge: str) -> bytes | Reply:
        """Send a 334 challenge and read the client's base64 answer."""
        await self.conn.send(replies.AUTH_CHALLENGE.format(challenge=challenge))
        self.conn.set_timeout(self.auth_timeout)
        line = await self.conn.wire.read_command()
        if line is None:
            self.closing = True
            raise _Cancelled
        if not line.ok:
            return replies.AUTH_BAD_RESPONSE
        text = line.text.decode("ascii", "replace").strip()
        if text == "*":
            await self.reply(replies.AUTH_CANCELLED)
            raise _Cancelled
        decoded = b64decode(text)
        return replies.AUTH_BAD_RESPONSE if decoded is None else decoded

    async def _plain(self, initial: str | None) -> tuple[str, str, str] | Reply:
        if initial is None:
            message = await self._response("")
        else:
            message = b64decode(initial) if initial != "=" else b""
            if message is None:
                return replies.AUTH_BAD_RESPONSE
        if isinstance(message, Reply):
            return message
        parsed = parse_plain(message)
        return replies.AUTH_BAD_RESPONSE if parsed is None else parsed

    async def _login(self, initial: str | None) -> tuple[str, str, str] | Reply:
        user = b64decode(initial) if initial is not None else await self._response(
            _LOGIN_USERNAME)
        if user is None or isinstance(user, Reply):
            return user or replies.AUTH_BAD_RESPONSE
        password = await self._response(_LOGIN_PASSWORD)
        if isinstance(password, Reply):
            return password
        try:
            return "", user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            return replies.AUTH_BAD_RESPONSE

    # -- the mail transaction ------------------------------------------------------------

    async def mail(self, arg: str | None) -> None:
        if not self.client.helo:
            return await self.reply(replies.NEED_HELO)
        if not await self._gatekeep():
            return
        assert self.submitter is not None
        if self.mail_from is not None:
            return await self.reply(replies.NESTED_MAIL)
        path = await self._mail_path(arg)
        if path is None:
            return
        if not path.address:
            return await self.reply(replies.SUBMISSION_NULL_SENDER)

        async def too_big() -> None:
            await self.refuse(self._too_big(), "too_big")

        # AUTH= (RFC 4954 §5) names the original submitter; we know who submits.
        if not await self._mail_params_ok(path.params, self.size_limit, too_big,
                                          also_known=("AUTH", "RET", "ENVID", "SMTPUTF8")):
            return
        dsn = await self._mail_dsn(path.params)
        if dsn is None:
            return
        try:
            await self.gate.check_sender(self.submitter.account_id, path.address)
        except MtaError as err:
            return await self.refuse(error_reply(err), err.code)
        except Exception:
            log.exception("sender check failed", extra={
                "event": "submission.error", "session_id": self.client.session_id})
            return await self.reply(replies.LOCAL_ERROR)
        self.mail_from = path.address
        self.dsn = Dsn(ret=dsn[0], envid=dsn[1])
        self.smtputf8 = "SMTPUTF8" in path.params
        await self.reply(replies.SUBMISSION_SENDER_OK)

    async def rcpt(self, arg: str | None) -> None:
        if not await self._gatekeep():
            return
        if self.mail_from is None:
            return await self.reply(replies.NEED_MAIL)
        parsed = await self._rcpt_path(arg, utf8=self.smtputf8)
        if parsed is None:
            return
        path, rcpt_dsn = parsed
        # Repeats count too: the limit bounds what a session can make us do.
        if self.session_recipients >= RECIPIENTS_PER_SESSION:
            return await self.refuse(error_reply(MtaError(
                "E_TOO_MANY_RECIPIENTS", f"At most {RECIPIENTS_PER_SESSION} recipients per "
                "session; open a new session for the rest.")), "too_many_recipients")
        self.session_recipients += 1
        if not any(r.lower() == path.address.lower() for r in self.recipients):
            self.recipients.append(path.address)  # a repeat is delivered once
            self.dsn.recipients[path.address] = rcpt_dsn
        await self.reply(replies.SUBMISSION_RECIPIENT_OK)

    async def data(self, arg: str | None) -> None:
        if arg:
            return await self.reply(replies.PARAMETER_SYNTAX.format(detail="DATA takes none"))
        if not await self._gatekeep():
            return
        assert self.submitter is not None
        if self.mail_from is None:
            return await self.reply(replies.NEED_MAIL)
        if not self.recipients:
            return await self.reply(replies.NO_VALID_RECIPIENTS)
        await self._receive_data(replies.SUBMISSION_START_DATA)

    async def _end_of_data(self, result: DataResult) -> None:
        """The message of the transaction has been read (DATA or BDAT LAST)."""
        assert self.submitter is not None and self.mail_from is not None
        mail_from, recipients, dsn = self.mail_from, list(self.recipients), self.dsn
        self._reset()  # the transaction ends here whatever the outcome
        if result.too_big:
            metrics.SUBMISSION_MESSAGES.labels("rejected").inc()
            return await self.refuse(self._too_big(), "too_big")
        refusal = self._data_refusal(result)  # NULs were removed ("normalize")
        if refusal is not None:
            metrics.SUBMISSION_MESSAGES.labels("rejected").inc()
            return await self.refuse(refusal[1], refusal[0])
        started = time.monotonic()
        try:
            sent = await self.sending.send_raw(self.submitter.account_id, mail_from,
                                               recipients, result.content,
                                               source="submission", dsn=dsn)
        except MtaError as err:
            metrics.SUBMISSION_MESSAGES.labels(
                "tempfailed" if err.spec.temporary else "rejected").inc()
            log.info("submission refused: %s", err.code, extra={
                "event": "submission.refused", "session_id": self.client.session_id,
                "account_id": self.submitter.account_id, "error_code": err.code})
            return await self.refuse(error_reply(err), err.code)
        except Exception:
            log.exception("submission failed", extra={
                "event": "submission.error", "session_id": self.client.session_id})
            metrics.SUBMISSION_MESSAGES.labels("tempfailed").inc()
            return await self.reply(replies.LOCAL_ERROR)
        finally:
            metrics.SUBMISSION_SECONDS.observe(time.monotonic() - started)
        metrics.SUBMISSION_MESSAGES.labels("accepted").inc()
        log.info("message submitted", extra={
            "event": "submission.accepted", "session_id": self.client.session_id,
            "message_id": sent.message_id, "account_id": self.submitter.account_id,
            "recipients": len(recipients), "size": result.size})
        await self.reply(replies.SUBMISSION_ACCEPTED.format(message_id=sent.message_id))

    def _too_big(self) -> Reply:
        return error_reply(MtaError("E_CONTENT_TOO_LARGE", f"The message exceeds the "
                                    f"{self.size_limit} byte SIZE limit."))
