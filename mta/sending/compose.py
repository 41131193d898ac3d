"""Compose the MIME message of a validated send ([Email lifecycle > Outbound flow],
[Email headers]).

Structure, outermost first, each level only when needed:

    multipart/mixed          when there are attachments (disposition "attachment")
      multipart/related      when there are inline parts (Content-ID, cid: in the HTML)
        multipart/alternative  when there are both text and HTML
          text/plain, text/html

The output is 7-bit clean with CRLF line ends, so it can be relayed to any server (with or
without 8BITMIME) and DKIM-signed as is: each body part gets 7bit, quoted-printable or
base64 by its content, non-ASCII in display names, Subject and X- header values becomes
RFC 2047 encoded words, and headers are folded at 78 columns.

Except when an address in From, To, Cc or Reply-To has a non-ASCII local part: it has
no 7-bit form, so the header section is written in UTF-8 (RFC 6532, `POLICY_UTF8`: no
encoded words at all) and the message can only go to next hops offering SMTPUTF8
(`queue/intl.py` sees that). Bodies stay 7-bit either way.
"""

from __future__ import annotations

import re
import secrets
import string
from datetime import UTC, datetime
from email.headerregistry import Address as HeaderAddress
from email.message import MIMEPart
from email.policy import SMTP, EmailPolicy
from email.utils import format_datetime

import idna

from mta.sending.validate import Address, Attachment, ValidatedSend

__all__ = ["POLICY", "choose_transfer_encoding", "compose_message", "fold_header",
           "new_message_id"]

# 7bit: the message must survive relays without 8BITMIME, and the email package would
# otherwise emit 8bit bodies for non-ASCII text. 78: RFC 5322's recommended line length.
POLICY: EmailPolicy = SMTP.clone(cte_type="7bit", max_line_length=78)
POLICY_UTF8: EmailPolicy = POLICY.clone(utf8=True)
MAX_LINE = 998  # RFC 5322 hard limit, excluding CRLF
_ID_CHARS = string.ascii_letters + string.digits


def compose_message(
    validated: ValidatedSend,
    sending_domain: str,
    message_id: str | None = None,
    now: datetime | None = None,
    feedback_id: str | None = None,
    cfbl_address: str | None = None,
    *,
    cfbl_feedback_id: str | None = None,
) -> tuple[str, bytes]:
    """Return (Message-ID with angle brackets, the message as bytes with CRLF line ends).

    `message_id` may be given (with or without brackets) so a retried enqueue keeps its
    id; otherwise a random one at `sending_domain` is made. `now` must be timezone-aware.
    `feedback_id` is the whole Feedback-ID value (`a:b:c:SenderId`). `cfbl_address`
    (RFC 9477) must be in a domain aligned with the DKIM signing domain, which the caller
    knows and we do not; CFBL-Feedback-ID defaults to `feedback_id` when a CFBL address
    is given, since both identify the same campaign to the receiver.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    message_id = _bracketed(message_id) if message_id else new_message_id(sending_domain)

    header_addresses = [validated.sender, *validated.to, *validated.cc,
                        *([validated.reply_to] if validated.reply_to else [])]
    policy = POLICY if all(a.address.isascii() for a in header_addresses) else POLICY_UTF8
    msg = MIMEPart(policy=policy)
    msg["From"] = _addresses("From", [validated.sender])
    if validated.to:
        msg["To"] = _addresses("To", validated.to)
    if validated.cc:
        msg["Cc"] = _addresses("Cc", validated.cc)
    # Bcc recipients are envelope-only: no Bcc header, ever.
    if validated.reply_to:
        msg["Reply-To"] = _addresses("Reply-To", [validated.reply_to])
    msg["Subject"] = _plain("Subject", validated.subject) or validated.subject
    msg["Date"] = _PreFolded("Date", format_datetime(now.astimezone(UTC)))
    msg["Message-ID"] = _PreFolded("Message-ID", message_id)
    msg["MIME-Version"] = _PreFolded("MIME-Version", "1.0")
    for name, value in validated.headers:
        msg[name] = _custom_header(name, value)
    if feedback_id:
        msg["Feedback-ID"] = _custom_header("Feedback-ID", feedback_id)
    if cfbl_address:
        msg["CFBL-Address"] = _custom_header("CFBL-Address", f"{cfbl_address}; report=arf")
        cfbl_id = cfbl_feedback_id or feedback_id
        if cfbl_id:
            msg["CFBL-Feedback-ID"] = _custom_header("CFBL-Feedback-ID", cfbl_id)

    body = _body(validated)
    for name, value in body.items():  # the root part's Content-* headers, after ours
        msg[name] = value
    msg.set_payload(body.get_payload())
    return message_id, msg.as_bytes(policy=policy)


def new_message_id(sending_domain: str) -> str:
    """`<36 random alphanumerics@domain>`, like the reference's ids (about 214 bits)."""
    local = "".join(secrets.choice(_ID_CHARS) for _ in range(36))
    return f"<{local}@{idna.encode(sending_domain, uts46=True).decode()}>"


def _bracketed(message_id: str) -> str:
    return "<" + message_id.strip().removeprefix("<").removesuffix(">") + ">"


def _header_address(a: Address) -> HeaderAddress:
    if a.address.isascii():
        return HeaderAddress(display_name=a.name or "", addr_spec=a.address)
    # The email package refuses to parse a non-ASCII local part (addr_spec) but writes
    # one given as a username (quoting it again when it needs quotes).
    local, _, domain = a.address.rpartition("@")
    if local.startswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return HeaderAddress(display_name=a.name or "", username=local, domain=domain)


# What the email package writes unchanged: printable ASCII words separated by single
# spaces, nothing it would decode (=?...?=), quote or fold. Such values skip its header
# parser, which is most of the cost of composing a message; test_compose checks that
# the bytes are the same either way.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*\Z")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_PLAIN_ADDR = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\Z")


def _plain(name: str, value: str) -> _PreFolded | None:
    if (len(name) + 2 + len(value) <= POLICY.max_line_length and "=?" not in value
            and _PLAIN.match(value)):
        return _PreFolded(name, value)
    return None


def _addresses(name: str, addresses) -> object:
    """The address list header value: plain text when every address is a plain
    addr-spec with an atom-only display name, else the email package's objects."""
    texts = []
    for a in addresses:
        if not _PLAIN_ADDR.match(a.address) or ".." in a.address \
                or a.address.startswith(".") or ".@" in a.address:
            break
        if a.name:
            if not _PLAIN_NAME.match(a.name) or "=?" in a.name:
                break
            texts.append(f"{a.name} <{a.address}>")
        else:
            texts.append(a.address)
    else:
        plain = _plain(name, ", ".join(texts))
        if plain is not None:
            return plain
    objects = [_header_address(a) for a in addresses]
    return objects[0] if len(objects) == 1 else objects


# --- body -----------------------------------------------------------------------------

def _body(v: ValidatedSend) -> MIMEPart:
    contents: list[str | bytes] = [v.text or "", v.html or "",
                                   *(a.content for a in v.attachments)]
    if v.text and v.html:
        body = _multipart("alternative", [_text_part(v.text, "plain"),
                                          _text_part(v.html, "html")], contents)
    else:
        body = _text_part(v.text, "plain") if v.text else _text_part(v.html or "", "html")
    inline = [a for a in v.attachments if a.disposition == "inline"]
    attached = [a for a in v.attachments if a.disposition != "inline"]
    if inline:
        body = _multipart("related", [body, *(_attachment_part(a) for a in inline)],
                          contents)
    if attached:
        body = _multipart("mixed", [body, *(_attachment_part(a) for a in attached)],
                          contents)
    return body


def _multipart(subtype: str, parts: list[MIMEPart], contents: list[str | bytes]) -> MIMEPart:
    container = MIMEPart(policy=POLICY)
    # Our own boundary: left to the generator, it compiles a new regular expression
    # for each message to check its random boundary against the parts. Ours is as
    # random, "=_" never occurs in quoted-printable or base64 text, and it is checked
    # against the parts' contents all the same.
    while True:
        boundary = "=_" + secrets.token_hex(16)
        if not any((boundary if isinstance(c, str) else boundary.encode()) in c
                   for c in contents):
            break
    container["Content-Type"] = f'multipart/{subtype}; boundary="{boundary}"'
    for part in parts:
        container.attach(part)
    return container


def _text_part(text: str, subtype: str) -> MIMEPart:
    part = MIMEPart(policy=POLICY)
    data = text.encode("utf-8", "surrogatepass")
    part.set_content(text, subtype=subtype, charset="utf-8",
                     cte=choose_transfer_encoding(data, text=True))
    return part


def _attachment_part(a: Attachment) -> MIMEPart:
    part = MIMEPart(policy=POLICY)
    maintype, _, rest = a.type.partition("/")
    subtype, _, params_text = rest.partition(";")
    maintype, subtype = maintype.strip().lower(), subtype.strip().lower()
    cid = f"<{a.content_id}>" if a.content_id else None
    text = _utf8_or_none(a.content) if maintype == "text" and not params_text else None
    if text is not None:
        # Text travels as text: readable in the source, line ends canonical (CRLF).
        part.set_content(text, subtype=subtype, charset="utf-8",
                         cte=choose_transfer_encoding(a.content, text=True),
                         disposition=a.disposition, filename=a.filename, cid=cid)
    else:
        part.set_content(a.content, maintype, subtype, cte="base64",
                         disposition=a.disposition, filename=a.filename, cid=cid,
                         params=_params(params_text) or None)
    return part


def _utf8_or_none(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def _params(text: str) -> dict[str, str]:
    params = {}
    for item in text.split(";"):
        key, eq, value = item.partition("=")
        if eq and key.strip():
            params[key.strip().lower()] = value.strip().strip('"')
    return params


def choose_transfer_encoding(data: bytes, *, text: bool) -> str:
    """7bit for ASCII text with lines <= 998 octets; quoted-printable for text that is
    mostly ASCII (stays readable, grows little); base64 for the rest, where
    quoted-printable would triple every other byte."""
    if not text:
        return "base64"
    lines = data.splitlines()
    if data.isascii() and b"\0" not in data and all(len(x) <= MAX_LINE for x in lines):
        return "7bit"
    non_ascii = sum(1 for b in data if b > 0x7E or (b < 0x20 and b not in b"\t\r\n"))
    # QP spends 3 octets per such byte, base64 4/3 per byte: QP wins below about 1 in 6.
    return "quoted-printable" if non_ascii * 6 <= len(data) else "base64"


# --- custom headers -------------------------------------------------------------------

class _PreFolded(str):
    """A header value the policy emits through our `fold` instead of its own.

    The email package folds unstructured headers by turning long unbreakable words into
    RFC 2047 encoded words, which breaks List-Unsubscribe URIs and Message-ID lists;
    [Email headers] requires folding "using CRLF+WSP, not MIME encoding". The policy uses
    any value with a `name` attribute as a header object and calls its `fold()`.
    """

    name: str

    def __new__(cls, name: str, value: str) -> _PreFolded:
        obj = super().__new__(cls, value)
        obj.name = name
        return obj

    def fold(self, *, policy: EmailPolicy) -> str:
        return fold_header(self.name, str(self), policy.max_line_length or MAX_LINE,
                           policy.linesep)


def _custom_header(name: str, value: str) -> str:
    # Non-ASCII values have no 7-bit form but encoded words, so the email package's own
    # header (which produces them) is right for those; ASCII ones keep their text.
    return _PreFolded(name, value) if value.isascii() else value


_TOKENS = re.compile(r"[ \t]*[^ \t]+")


def fold_header(name: str, value: str, width: int = 78, linesep: str = "\r\n") -> str:
    """`Name: value` folded before whitespace so no line exceeds `width` where a fold
    point exists (a longer unbroken word keeps its own line, up to RFC 5322's 998)."""
    lines: list[str] = []
    line = f"{name}:"
    for i, token in enumerate(_TOKENS.findall(value)):
        if i == 0:
            line += " " + token.lstrip(" \t")
        elif len(line) + len(token) > width:
            lines.append(line)
            line = token  # starts with its whitespace: the continuation's WSP
        else:
            line += token
    lines.append(line)
    return linesep.join(lines) + linesep
