"""What a handler gets and builds: the incoming message and the helpers for replies.

Names follow the reference's `ForwardableEmailMessage` ([Workers API > Email handler]),
in Python spelling (the reference's camelCase names are aliases):

| reference           | here                                   |
| ------------------- | -------------------------------------- |
| `from`              | `from_` (envelope MAIL FROM)           |
| `to`                | `to` (envelope RCPT TO, +detail kept)   |
| `headers.get(name)` | `headers.get(name)` (case-insensitive) |
| `raw` (stream)      | `raw`: bytes, also `async for chunk in message.raw` and `await message.raw.read()` |
| `rawSize`           | `raw_size`                             |
| `canBeForwarded`    | `can_be_forwarded`                     |
| `setReject(reason)` | `set_reject(reason)`                   |
| `forward(rcptTo, headers?)` | `await forward(rcpt_to, headers=None)` |
| `reply(message)`    | `await reply(EmailMessage(from, to, raw))` |

The actions themselves (forward, reply) are carried out by `mta.handlers.runner`, which
gives each message an `Actions` implementation; this module holds no I/O.
`MimeMessage` is the small builder the reference's examples take from `mimetext`.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage as _StdMessage
from typing import Any, Protocol

from mta.sending.binding import EmailMessage
from mta.sending.compose import new_message_id

__all__ = ["EmailMessage", "EmailSendResult", "ForwardableEmailMessage", "Headers",
           "MimeMessage", "RawMessage", "header_fields"]

CHUNK = 64 * 1024
_LINE = re.compile(rb"\r\n|\n")


def header_fields(raw: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of every field of the header section, in order."""
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    fields: list[tuple[str, str]] = []
    for line in _LINE.split(head):
        text = line.decode("utf-8", "replace")
        if text[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + text.strip())
        elif ":" in text:
            name, _, value = text.partition(":")
            fields.append((name.strip(), value.strip()))
    return fields


class Headers:
    """The header fields of a message, looked up case-insensitively (the reference's
    `Headers`). `get()` joins repeated fields with ", " as the Fetch API does."""

    def __init__(self, fields: Iterable[tuple[str, str]] | Mapping[str, str] | None = None):
        if isinstance(fields, Headers):
            fields = fields.items()
        elif isinstance(fields, Mapping):
            fields = fields.items()
        self._fields: list[tuple[str, str]] = [(str(n), str(v)) for n, v in (fields or ())]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._fields if n.lower() == key]

    def has(self, name: str) -> bool:
        return bool(self.get_all(name))

    def set(self, name: str, value: str) -> None:
        self.delete(name)
        self._fields.append((name, str(value)))

    def append(self, name: str, value: str) -> None:
        self._fields.append((name, str(value)))

    def delete(self, name: str) -> None:
        self._fields = [(n, v) for n, v in self._fields if n.lower() != name.lower()]

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def keys(self) -> list[str]:
        return [n.lower() for n, _ in self._fields]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


class RawMessage(bytes):
    """The message bytes; also an async stream of chunks like the reference's
    `ReadableStream` (`async for chunk in message.raw`, `await message.raw.read()`)."""

    async def read(self) -> bytes:
        return bytes(self)

    async def __aiter__(self) -> AsyncIterator[bytes]:  # type: ignore[override]
        for i in range(0, len(self), CHUNK):
            yield bytes(self[i:i + CHUNK])


@dataclass(frozen=True)
class EmailSendResult:
    """The reference's `EmailSendResult`: the Message-ID of what was sent."""

    message_id: str

    @property
    def messageId(self) -> str:  # noqa: N802 - the reference's name
        return self.message_id


class Actions(Protocol):
    """What the runner does for forward()/reply() (real, or recorded by a simulation)."""

    async def forward(self, message: ForwardableEmailMessage, rcpt_to: str,
                      headers: Headers) -> EmailSendResult: ...

    async def reply(self, message: ForwardableEmailMessage,
                    reply: EmailMessage) -> EmailSendResult: ...


class ForwardableEmailMessage:
    """The incoming email as a handler sees it (one recipient per event)."""

    def __init__(self, *, mail_from: str, rcpt_to: str, raw: bytes, actions: Actions,
                 can_be_forwarded: bool = True) -> None:
        self.from_ = mail_from
        self.to = rcpt_to
        self.raw = RawMessage(raw)
        self.raw_size = len(raw)
        self.headers = Headers(header_fields(raw))
        self.can_be_forwarded = can_be_forwarded
        self.rejected: str | None = None
        self._actions = actions

    # -- actions ---------------------------------------------------------------------------

    def set_reject(self, reason: str) -> None:
        """Refuse the message: the SMTP client gets 550 5.7.1 <reason>."""
        text = " ".join(str(reason).split())  # one line: no CR/LF can reach the wire
        self.rejected = "".join(c for c in text if c.isprintable())[:400] or "Rejected"

    async def forward(self, rcpt_to: str, headers: Headers | Mapping[str, str] |
                      Iterable[tuple[str, str]] | None = None) -> EmailSendResult:
        """Forward to a verified destination address, the same way a forwarding rule
        does (SRS, ARC, DKIM). Only `X-` headers are added; others are removed."""
        return await self._actions.forward(self, rcpt_to, Headers(headers))

    async def reply(self, message: EmailMessage) -> EmailSendResult:
        """Reply to the sender; see docs/handlers.md for the rules (MtaError codes
        E_REPLY_*)."""
        return await self._actions.reply(self, message)

    # -- the reference's spellings -----------------------------------------------------------

    @property
    def rawSize(self) -> int:  # noqa: N802
        return self.raw_size

    @property
    def canBeForwarded(self) -> bool:  # noqa: N802
        return self.can_be_forwarded

    def setReject(self, reason: str) -> None:  # noqa: N802
        self.set_reject(reason)

    def __repr__(self) -> str:
        return f"<ForwardableEmailMessage from={self.from_!r} to={self.to!r} " \
               f"size={self.raw_size}>"


class MimeMessage:
    """A reply or notification as RFC 5322 bytes, text and/or html alternatives:

        msg = MimeMessage(sender="support@example.com", recipient=message.from_,
                          subject="Re: " + (message.headers.get("subject") or ""))
        msg.set_header("In-Reply-To", message.headers.get("Message-ID"))
        msg.add_message("text/plain", "Thanks, we got it.")
        msg.add_message("text/html", "<p>Thanks, we got it.</p>")
        await message.reply(EmailMessage(msg.sender, message.from_, msg.as_raw()))
    """

    def __init__(self, *, sender: str | tuple[str, str] | None = None,
                 recipient: str | None = None, subject: str | None = None) -> None:
        self.sender = ""
        self._sender_name = ""
        self.recipients: list[str] = []
        self.subject = subject or ""
        self._headers: list[tuple[str, str]] = []
        self._parts: dict[str, str] = {}
        if sender is not None:
            self.set_sender(sender)
        if recipient is not None:
            self.set_recipient(recipient)

    def set_sender(self, sender: str | tuple[str, str], name: str = "") -> None:
        if isinstance(sender, tuple):
            name, sender = sender
        self.sender, self._sender_name = sender, name

    def set_recipient(self, recipient: str) -> None:
        self.recipients.append(recipient)

    def set_subject(self, subject: str) -> None:
        self.subject = subject

    def set_header(self, name: str, value: str | None) -> None:
        if value is None:
            return
        self._headers = [(n, v) for n, v in self._headers if n.lower() != name.lower()]
        self._headers.append((name, value))

    def add_message(self, content_type: str, data: str) -> None:
        if content_type not in ("text/plain", "text/html"):
            raise ValueError("content_type must be text/plain or text/html")
        self._parts[content_type] = data

    def as_raw(self) -> bytes:
        if not self.sender or not self.recipients:
            raise ValueError("a message needs a sender and a recipient")
        msg = _StdMessage(policy=email.policy.SMTP)
        local, _, domain = self.sender.rpartition("@")
        msg["From"] = Address(self._sender_name, local, domain) if self._sender_name \
            else self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = self.subject
        msg["Date"] = email.utils.formatdate(usegmt=True)
        names = {n.lower() for n, _ in self._headers}
        if "message-id" not in names:
            msg["Message-ID"] = new_message_id(domain)
        for name, value in self._headers:
            msg[name] = value
        text, html = self._parts.get("text/plain"), self._parts.get("text/html")
        if text is None and html is None:
            text = ""
        if text is not None:
            msg.set_content(text, cte="quoted-printable")
            if html is not None:
                msg.add_alternative(html, subtype="html", cte="quoted-printable")
        else:
            msg.set_content(html or "", subtype="html", cte="quoted-printable")
        return msg.as_bytes()

    asRaw = as_raw  # noqa: N815 - mimetext's name


def parse_headers(value: Any) -> Headers:
    return value if isinstance(value, Headers) else Headers(value)
