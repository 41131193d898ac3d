"""Delivery status notifications: compose (RFC 3464) and parse bounces and complaints.

Job: the format only. `compose_dsn` builds a multipart/report DSN from per-recipient
results; `parse_dsn`, `parse_arf` (RFC 5965 feedback reports) and `parse_bounce` (DSN or,
failing that, the common non-standard bounce texts) read what comes back. Deciding when to
send a DSN, to whom, and what a parsed bounce does to the suppression list is
`bounces.py`'s job; sending it with the null reverse-path is the caller's.
No side effects, no settings.

Loop protection lives here as predicates (`is_dsn`, `dsn_allowed`) because only the format
knows what a DSN looks like: a DSN is never sent about a DSN, a message with a null
reverse-path, or an auto-reply (RFC 3461 §6.2, RFC 3834 §2).
"""

from __future__ import annotations

import email
import email.message
import email.utils
import quopri
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from mta.canon import fold_words
from mta.queue.dsnparams import orcpt_for
from mta.queue.intl import utf8_headers
from mta.queue.outcome import RecipientOutcome, Reply

__all__ = ["ArfReport", "DsnRecipient", "ParsedDsnRecipient", "compose_dsn", "dsn_allowed",
           "is_auto_submitted", "is_dsn", "parse_arf", "parse_bounce", "parse_dsn"]

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
# Not inside an IP address or version number: 10.5.1.1 is no 5.1.1.
_STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_ADDR_RE = re.compile(r"<?([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*"
                      r"[A-Za-z0-9])?\.[A-Za-z]{2,})>?")
_SMTP_CODE_RE = re.compile(r"(?<![\d.])([45])\d\d[ -]")
# Where common non-standard bounces start quoting the original message; addresses after
# this point are the original's, not failed recipients.
_ORIGINAL_START_RE = re.compile(
    r"^\s*(-+\s*(original message|this is a copy|below this line|the original)|"
    r"(original message follows|the original message (was|is) (received|attached))|"
    r"-+ ?(forwarded|original) message ?-+)", re.IGNORECASE | re.MULTILINE)
_NOT_RECIPIENTS = ("mailer-daemon@", "postmaster@")


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient's line in a DSN we send."""

    recipient: str
    action: Action
    status: str  # RFC 3463, e.g. 5.1.1
    diagnostic: Reply | None = None  # the remote server's reply, when there was one
    remote_mta: str | None = None
    original_recipient: str | None = None  # ORCPT (RFC 3461 §4.2): `addr-type;address`
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None  # delayed DSNs only
    detail: str | None = None  # local reason, for the human-readable part

    @classmethod
    def from_outcome(cls, outcome: RecipientOutcome, action: Action,
                     **kw: object) -> DsnRecipient:
        reply = outcome.reply
        if reply is not None and reply.enhanced:
            status = reply.enhanced
        elif reply is not None:
            status = f"{str(reply.code)[0]}.0.0"
        else:  # no reply at all: connection trouble, "other network problem" (RFC 3463)
            status = {"failed": "5.4.0", "delayed": "4.4.1"}.get(action, "2.0.0")
        return cls(outcome.recipient, action, status, reply, outcome.mx_host,
                   detail=outcome.detail, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ParsedDsnRecipient:
    recipient: str
    action: str
    status: str
    original_recipient: str | None = None
    diagnostic_code: str | None = None
    remote_mta: str | None = None
    reporting_mta: str | None = None
    envelope_id: str | None = None
    message_id: str | None = None  # of the original message, when the DSN includes it
    source: Literal["dsn", "heuristic"] = "dsn"

    @property
    def permanent(self) -> bool:
        return self.action == "failed" or self.status.startswith("5.")


@dataclass(frozen=True)
class ArfReport:
    feedback_type: str
    original_mail_from: str | None
    original_rcpt_to: list[str]
    user_agent: str | None = None
    version: str | None = None
    arrival_date: str | None = None
    reporting_mta: str | None = None
    source_ip: str | None = None
    reported_domain: list[str] = field(default_factory=list)
    original_headers: list[tuple[str, str]] = field(default_factory=list)
    original_message_id: str | None = None


# -- compose ------------------------------------------------------------------------------


# RET=FULL (RFC 3461 §4.3) returns the whole message up to this size; a larger one is
# returned as its header section only (as Postfix's bounce_size_limit does), so that a
# DSN about a large message does not bounce itself.
RETURN_FULL_LIMIT = 1024 * 1024


def compose_dsn(reporting_mta: str, original_raw: bytes, envelope_from: str,
                outcomes: Iterable[DsnRecipient], arrival_date: datetime,
                postmaster_address: str, *, envelope_id: str | None = None,
                ret: str | None = None, now: datetime | None = None) -> bytes:
    """An RFC 3464 DSN about `original_raw`, addressed to `envelope_from`. What it
    returns of the message follows `ret` (RFC 3461 §4.3): FULL the whole message (up
    to RETURN_FULL_LIMIT), HDRS or None its header section. `envelope_id` is the
    sender's ENVID, echoed as Original-Envelope-Id."""
    recipients = list(outcomes)
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    now = now or datetime.now(UTC)
    actions = {r.action for r in recipients}
    subject = ("Undelivered Mail Returned to Sender" if "failed" in actions else
               "Delayed Mail (still being retried)" if "delayed" in actions else
               "Successful Mail Delivery Report")
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    orig_headers = _header_block(original_raw)
    orig_id = _header_value(orig_headers, "message-id")
    head = [
        f"From: Mail Delivery System <{postmaster_address}>",
        f"To: <{envelope_from}>",
        f"Subject: {subject}",
        f"Date: {email.utils.format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(16)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="{boundary}"',
    ]
    if orig_id:  # threads the DSN under the original in the sender's client
        head += [f"In-Reply-To: {orig_id}", f"References: {orig_id}"]
    human = _human_text(reporting_mta, recipients).encode("utf-8")
    human_cte = "7bit" if human.isascii() else "quoted-printable"
    if human_cte != "7bit":
        human = _crlf(quopri.encodestring(human))
    status = [f"Reporting-MTA: dns; {reporting_mta}"]
    if envelope_id:
        status.append(f"Original-Envelope-Id: {_ascii(envelope_id)}")
    status.append(f"Arrival-Date: {email.utils.format_datetime(arrival_date)}")
    blocks = ["\r\n".join(status)] + [_recipient_block(r) for r in recipients]
    what = "Undelivered message" if "failed" in actions else "Message"
    # RFC 6533 §6.3, §6.4: an internationalised message (UTF-8 in its header section)
    # comes back as message/global or message/global-headers, which makes the DSN one
    # that needs SMTPUTF8 (`intl.needs_smtputf8`). The status fields stay ASCII
    # (`_ascii`, utf-8-addr-xtext), so message/delivery-status serves either way.
    intl = utf8_headers(original_raw)
    if ret == "FULL" and len(original_raw) <= RETURN_FULL_LIMIT:
        whole = _crlf(original_raw)
        whole = whole if whole.endswith(b"\r\n") else whole + b"\r\n"
        kind = "message/global" if intl else "message/rfc822"
        returned = _part(boundary, f"{kind}\r\nContent-Transfer-Encoding: "
                         f"{'7bit' if whole.isascii() else '8bit'}\r\nContent-Description: "
                         f"{what}", whole)
    else:
        kind = "message/global-headers" if intl else "text/rfc822-headers"
        returned = _part(boundary, f"{kind}\r\nContent-Transfer-Encoding: "
                         f"{'7bit' if orig_headers.isascii() else '8bit'}\r\n"
                         f"Content-Description: {what} headers", orig_headers)
    parts = [
        b"\r\n".join(h.encode() for h in head) + b"\r\n\r\n"
        b"This is a MIME-encapsulated delivery status notification.\r\n",
        _part(boundary, f"text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {human_cte}"
              "\r\nContent-Description: Notification", human),
        _part(boundary, "message/delivery-status\r\nContent-Description: Delivery report",
              "\r\n\r\n".join(blocks).encode("ascii") + b"\r\n"),
        returned,
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)


def _part(boundary: str, content_type: str, body: bytes) -> bytes:
    body = body if body.endswith(b"\r\n") else body + b"\r\n"
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body


def _recipient_block(r: DsnRecipient) -> str:
    lines = []
    if r.original_recipient:
        addr_type, semi, address = r.original_recipient.partition(";")
        lines.append(f"Original-Recipient: {addr_type}; {_ascii(address)}" if semi
                     else f"Original-Recipient: {_addr_type(r.original_recipient)}")
    lines += [f"Final-Recipient: {_addr_type(r.recipient)}", f"Action: {r.action}",
              f"Status: {r.status}"]
    if r.remote_mta:
        lines.append(f"Remote-MTA: dns; {_ascii(r.remote_mta)}")
    if r.diagnostic is not None:
        lines.append(_fold(f"Diagnostic-Code: smtp; {_ascii(str(r.diagnostic))}"))
    if r.last_attempt:
        lines.append(f"Last-Attempt-Date: {email.utils.format_datetime(r.last_attempt)}")
    if r.will_retry_until:
        lines.append(f"Will-Retry-Until: {email.utils.format_datetime(r.will_retry_until)}")
    return "\r\n".join(lines)


def _addr_type(address: str) -> str:
    # RFC 6533 §3: a non-ASCII address is reported with the utf-8 address type, its
    # non-ASCII characters as \x{HEX} (utf-8-addr-xtext), as in the ORCPT we store.
    if address.isascii():
        return f"rfc822; {address}"
    return "utf-8; " + orcpt_for(" ".join(address.split())).removeprefix("utf-8;")


def _ascii(text: str) -> str:
    """Remote text goes into a header field: one line, ASCII (RFC 3464 §2.1.2)."""
    one_line = " ".join(text.split())
    return one_line.encode("ascii", "backslashreplace").decode("ascii")


def _fold(line: str, width: int = 78) -> str:
    return "\r\n".join(fold_words(line.split(" "), width))


def _human_text(reporting_mta: str, recipients: list[DsnRecipient]) -> str:
    lines = [f"This is the mail system at {reporting_mta}.", ""]
    groups = [("failed", "Your message could not be delivered to these recipients:"),
              ("delayed", "Delivery to these recipients is delayed; the mail system will "
                          "keep trying and tell you if it gives up:"),
              ("delivered", "Your message was delivered to these recipients:"),
              # RFC 3461 §5.2.2: NOTIFY=SUCCESS, next hop without DSN.
              ("expanded", "Your message was forwarded from these addresses to several "
                           "others:"),
              ("relayed", "Your message was passed on to these recipients' mail system, "
                          "which does not send delivery notifications; you will hear no "
                          "more about it from there:")]
    for action, intro in groups:
        chosen = [r for r in recipients if r.action == action]
        if not chosen:
            continue
        lines += [intro, ""]
        for r in chosen:
            lines.append(f"  <{r.recipient}>")
            if r.diagnostic is not None:
                host = f"{r.remote_mta} said: " if r.remote_mta else ""
                lines.append(f"    {host}{' '.join(str(r.diagnostic).split())}")
            elif r.detail:
                lines.append(f"    {' '.join(r.detail.split())}")
            if r.will_retry_until:
                lines.append(f"    retrying until {email.utils.format_datetime(r.will_retry_until)}")
        lines.append("")
    return "\r\n".join(lines)


def _header_block(raw: bytes) -> bytes:
    raw = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end + 2]


def _header_value(block: bytes, name: str) -> str | None:
    msg = email.message_from_bytes(block + b"\r\n")
    value = msg.get(name)
    return " ".join(str(value).split()) if value is not None else None


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


# -- loop protection ----------------------------------------------------------------------


def is_dsn(raw: bytes) -> bool:
    """A delivery or feedback report (multipart/report of delivery-status or feedback)."""
    msg = email.message_from_bytes(_header_block(raw) + b"\r\n")
    return (msg.get_content_type() == "multipart/report" and
            (msg.get_param("report-type") or "").lower() in ("delivery-status",
                                                             "feedback-report"))


def is_auto_submitted(raw: bytes) -> bool:
    """RFC 3834: Auto-Submitted present with any value but `no`."""
    msg = email.message_from_bytes(_header_block(raw) + b"\r\n")
    value = (msg.get("Auto-Submitted") or "no").split(";")[0].strip().lower()
    return value != "no"


def dsn_allowed(envelope_from: str, raw: bytes) -> bool:
    """Whether a failure DSN may be sent about this message. Not for a null sender or a
    DSN, nor an auto-reply. Auto-generated mail (e.g. a password reset) still gets one:
    its sender asked for delivery and needs to hear about a failure."""
    if envelope_from.strip("<> ") == "" or is_dsn(raw):
        return False
    msg = email.message_from_bytes(_header_block(raw) + b"\r\n")
    auto = (msg.get("Auto-Submitted") or "no").split(";")[0].strip().lower()
    return auto != "auto-replied"


# -- parse ---------------------------------------------------------------------------------


def parse_dsn(raw: bytes) -> list[ParsedDsnRecipient]:
    """The per-recipient fields of an RFC 3464 DSN; [] when `raw` is not one."""
    msg = email.message_from_bytes(raw)
    status_part = next((p for p in msg.walk()
                        if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        return []
    blocks = _field_blocks(status_part)
    if len(blocks) < 2:
        return []
    per_message = blocks[0]
    reporting = _strip_type(per_message.get("reporting-mta"))
    envid = per_message.get("original-envelope-id")
    message_id = _original_message_id(msg)
    out = []
    for block in blocks[1:]:
        final = _strip_type(block.get("final-recipient"))
        action = (block.get("action") or "").strip().lower()
        status = (block.get("status") or "").split()
        if not final or not action or not status:
            continue  # RFC 3464 §2.3: these three are required
        out.append(ParsedDsnRecipient(
            recipient=final, action=action, status=status[0],
            original_recipient=_strip_type(block.get("original-recipient")),
            diagnostic_code=_strip_type(block.get("diagnostic-code")),
            remote_mta=_strip_type(block.get("remote-mta")), reporting_mta=reporting,
            envelope_id=envid.strip() if envid else None, message_id=message_id))
    return out


def _field_blocks(part: email.message.Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package splits the blocks for us
        return [{k.lower(): " ".join(str(v).split()) for k, v in b.items()} for b in payload]
    text = part.get_payload(decode=True) or b""  # e.g. a base64-encoded report
    blocks = re.split(r"\r?\n\s*\r?\n", text.decode("utf-8", "replace").strip())
    return [{k.lower(): " ".join(str(v).split())
             for k, v in email.message_from_string(b.strip() + "\n\n").items()}
            for b in blocks if b.strip()]


def _strip_type(value: str | None) -> str | None:
    """`rfc822; a@b` -> `a@b` (the address / MTA / diagnostic type prefix)."""
    if not value:
        return None
    _, sep, rest = value.partition(";")
    return (rest if sep else value).strip().strip("<>") or None


def _original_message_id(msg: email.message.Message) -> str | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global") and part.is_multipart():
            inner = part.get_payload(0)
            if inner.get("Message-ID"):
                return " ".join(str(inner["Message-ID"]).split())
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            block = part.get_payload(decode=True) or b""
            found = _header_value(block, "message-id")
            if found:
                return found
    return None


def parse_arf(raw: bytes) -> ArfReport | None:
    """An RFC 5965 abuse/feedback report, or None when `raw` is not one."""
    msg = email.message_from_bytes(raw)
    if msg.get_content_type() != "multipart/report":
        return None
    report = next((p for p in msg.walk()
                   if p.get_content_type() == "message/feedback-report"), None)
    if report is None:
        return None
    payload = report.get_payload()
    fields = payload[0] if isinstance(payload, list) and payload else \
        email.message_from_bytes(report.get_payload(decode=True) or b"")

    def one(name: str) -> str | None:
        # str(): a value with 8-bit bytes comes back as an email.header.Header
        value = fields.get(name)
        return " ".join(str(value).split()) if value is not None else None

    feedback_type = (one("Feedback-Type") or "").lower()
    if not feedback_type:
        return None
    original_headers: list[tuple[str, str]] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global") and part.is_multipart():
            original_headers = [(k, " ".join(str(v).split()))
                                for k, v in part.get_payload(0).items()]
            break
        if ctype in ("text/rfc822-headers", "message/global-headers"):
            block = email.message_from_bytes((part.get_payload(decode=True) or b"") + b"\n\n")
            original_headers = [(k, " ".join(str(v).split())) for k, v in block.items()]
            break
    mail_from = one("Original-Mail-From")
    return ArfReport(
        feedback_type=feedback_type,
        original_mail_from=mail_from.strip("<>") if mail_from is not None else None,
        original_rcpt_to=[str(v).strip().strip("<>")
                          for v in fields.get_all("Original-Rcpt-To", [])],
        user_agent=one("User-Agent"), version=one("Version"),
        arrival_date=one("Arrival-Date") or one("Received-Date"),
        reporting_mta=_strip_type(one("Reporting-MTA")), source_ip=one("Source-IP"),
        reported_domain=[str(v).strip() for v in fields.get_all("Reported-Domain", [])],
        original_headers=original_headers,
        original_message_id=next((v for k, v in original_headers
                                  if k.lower() == "message-id"), None))


def parse_bounce(raw: bytes) -> list[ParsedDsnRecipient]:
    """A standard DSN when `raw` is one, else a best effort on non-standard bounces
    (qmail, old Exim and Sendmail texts, webmail bounces): each address in the bounce text
    paired with the 4.x.x / 5.x.x status (or 4xx / 5xx reply) that follows it."""
    parsed = parse_dsn(raw)
    if parsed:
        return parsed
    msg = email.message_from_bytes(raw)
    text = _bounce_text(msg)
    cut = _ORIGINAL_START_RE.search(text)
    if cut:
        text = text[:cut.start()]
    lines = text.splitlines()
    found: dict[str, ParsedDsnRecipient] = {}
    for i, line in enumerate(lines):
        for m in _ADDR_RE.finditer(line):
            address = m.group(1)
            if address.lower().startswith(_NOT_RECIPIENTS) or address.lower() in found:
                continue
            # The reason is on the address's line or within the next few lines.
            window = " ".join([line[m.end():], *lines[i + 1:i + 6]])
            status, diag = _status_in(window)
            if status is None:
                continue
            found[address.lower()] = ParsedDsnRecipient(
                recipient=address, action="failed" if status[0] == "5" else "delayed",
                status=status, diagnostic_code=diag, message_id=_original_message_id(msg),
                source="heuristic")
    return list(found.values())


def _bounce_text(msg: email.message.Message) -> str:
    chunks = []
    for part in msg.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers",
                                       "message/global", "message/global-headers"):
            break  # the original message starts here
        if part.get_content_type() == "text/plain":
            data = part.get_payload(decode=True) or b""
            chunks.append(data.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(chunks)


def _status_in(text: str) -> tuple[str | None, str | None]:
    enhanced = _STATUS_RE.search(text)
    basic = _SMTP_CODE_RE.search(text)
    if enhanced is None and basic is None:
        return None, None
    if enhanced is not None:
        status = enhanced.group(0)
        start = enhanced.start() if basic is None else min(basic.start(), enhanced.start())
    else:
        assert basic is not None
        status, start = f"{basic.group(1)}.0.0", basic.start()
    return status, " ".join(text[start:start + 200].split()) or None
