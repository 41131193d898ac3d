"""The Python send binding: the reference's Workers `env.EMAIL.send()` for handlers and
applications running beside the MTA ([Workers API > send()], [Configure send bindings]).

    binding = SendBinding(service, account_id, allowed_sender_addresses=["noreply@ex.com"])
    message_id = await binding.send(EmailMessageBuilder(
        to="a@example.org", from_="noreply@ex.com", subject="Hi", text="Hello"))

`send()` takes an `EmailMessageBuilder`, a dict in the Workers shape (`from`, `replyTo`,
attachments with `contentId` and base64 or bytes `content`), or the legacy
`EmailMessage(from, to, raw)`, and returns the Message-ID. Failures raise `MtaError`
whose `.code` is the reference's string code.

Restrictions, as [Configure send bindings] says:
- `destination_address`: only that address may receive; with `to` absent it is used.
- `allowed_destination_addresses`: every recipient (to, cc, bcc) must be listed.
- `allowed_sender_addresses`: the sender must be listed (E_SENDER_NOT_VERIFIED).
A refused recipient raises E_RECIPIENT_NOT_ALLOWED. Without a restriction the account's
own rules apply (SendingService): any recipient from an onboarded sending domain, only
verified destination addresses from a routing domain.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mta.errors import MtaError
from mta.sending.service import SendingService, SendResult
from mta.sending.validate import SendRequest, normalize_address, parse_send_request

__all__ = ["EmailMessage", "EmailMessageBuilder", "SendBinding"]

Addresses = str | Mapping[str, str] | list[str | Mapping[str, str]] | None


@dataclass
class EmailMessageBuilder:
    """The structured message of [Workers API > send()] (`from` is `from_`)."""

    to: Addresses = None
    from_: str | Mapping[str, str] | None = None
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    cc: Addresses = None
    bcc: Addresses = None
    reply_to: str | Mapping[str, str] | None = None
    attachments: list[Mapping[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"to": self.to, "from": self.from_, "subject": self.subject,
                               "html": self.html, "text": self.text, "cc": self.cc,
                               "bcc": self.bcc, "replyTo": self.reply_to,
                               "attachments": list(self.attachments) or None,
                               "headers": dict(self.headers) or None}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class EmailMessage:
    """The legacy raw message: envelope sender, one recipient, RFC 5322 bytes."""

    from_: str
    to: str
    raw: bytes | str


class SendBinding:
    def __init__(self, service: SendingService, account_id: str, *,
                 destination_address: str | None = None,
                 allowed_destination_addresses: Iterable[str] | None = None,
                 allowed_sender_addresses: Iterable[str] | None = None) -> None:
        self.service = service
        self.account_id = account_id
        self.destination_address = destination_address
        self.allowed_destinations = _lowered(allowed_destination_addresses)
        self.allowed_senders = _lowered(allowed_sender_addresses)
        if destination_address is not None:
            normalize_address(destination_address, "destination_address")

    async def send(self, message: EmailMessage | EmailMessageBuilder | Mapping[str, Any]
                   ) -> str:
        """Send; returns the Message-ID. Raises MtaError (`.code`)."""
        if isinstance(message, EmailMessage):
            self._check_sender(message.from_)
            self._check_recipients([message.to])
            result = await self.service.send_raw(self.account_id, message.from_,
                                                 [message.to], message.raw, source="binding")
            return _message_id(result)
        data = message.to_dict() if isinstance(message, EmailMessageBuilder) else dict(message)
        if data.get("to") is None and self.destination_address is not None:
            data["to"] = self.destination_address
        if data.get("attachments"):
            data["attachments"] = [_b64_content(a) for a in data["attachments"]]
        request = parse_send_request(data)
        self._check_request(request)
        return _message_id(await self.service.send(self.account_id, request,
                                                   source="binding"))

    # -- restrictions ----------------------------------------------------------------------

    def _check_request(self, request: SendRequest) -> None:
        if request.sender is not None:
            self._check_sender(request.sender.address)
        self._check_recipients(a.address for a in (*request.to, *request.cc, *request.bcc))

    def _check_sender(self, sender: str) -> None:
        if self.allowed_senders is None:
            return
        if _norm(sender, "from") not in self.allowed_senders:
            raise MtaError("E_SENDER_NOT_VERIFIED", f"{sender} is not an allowed sender "
                           "address of this binding.", field="from")

    def _check_recipients(self, recipients: Iterable[str]) -> None:
        fixed = _norm(self.destination_address, "destination_address") \
            if self.destination_address else None
        for r in recipients:
            addr = _norm(r, "to")
            if fixed is not None and addr != fixed:
                raise MtaError("E_RECIPIENT_NOT_ALLOWED", f"This binding may only send to "
                               f"{self.destination_address}.", field="to")
            if self.allowed_destinations is not None and addr not in self.allowed_destinations:
                raise MtaError("E_RECIPIENT_NOT_ALLOWED", f"{r} is not in this binding's "
                               "allowed destination addresses.", field="to")


def _norm(address: str, where: str) -> str:
    return normalize_address(address.strip().strip("<>"), where).lower()


def _lowered(addresses: Iterable[str] | None) -> frozenset[str] | None:
    if addresses is None:
        return None
    return frozenset(_norm(a, "binding") for a in addresses)


def _b64_content(attachment: Mapping[str, Any]) -> dict[str, Any]:
    """Binary content (bytes, bytearray, memoryview: the ArrayBuffer of the reference)
    becomes the base64 string the request parser takes."""
    a = dict(attachment)
    content = a.get("content")
    if isinstance(content, bytes | bytearray | memoryview):
        a["content"] = base64.b64encode(bytes(content)).decode("ascii")
    return a


def _message_id(result: SendResult) -> str:
    # E_DELIVERY_FAILED: nothing will ever arrive, which a Workers caller learns by an
    # error (REST callers read permanent_bounces instead).
    if result.permanent_bounces and not result.delivered and not result.queued:
        raise MtaError("E_DELIVERY_FAILED", "Every recipient's server refused the message: "
                       + ", ".join(result.permanent_bounces) + ".")
    return result.message_id
