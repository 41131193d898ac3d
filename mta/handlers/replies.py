"""`message.reply()`: the reference's reply rules, and the path a reply goes out by.

Rules, exactly as [Workers API > Reply to emails] and the two reply pages list them,
each with its own error code (mta/errors.py), checked in this order:

1. only one reply per event ........................... E_REPLY_ALREADY_SENT
2. the incoming email passed DMARC .................... E_REPLY_DMARC_NOT_PASSED
3. the reply's recipient is the incoming sender ....... E_REPLY_RECIPIENT_MISMATCH
   (the envelope `to` of the EmailMessage, and every To/Cc address of its header)
4. the reply's sender domain is the receiving domain .. E_REPLY_SENDER_DOMAIN_MISMATCH
   (the envelope `from` of the EmailMessage and its From: address)
5. the incoming References has at most 100 entries .... E_REPLY_TOO_MANY_REFERENCES
A refused reply sends nothing and does not count as the one reply.

The sending path for replies (`prepare_reply` then `stage_reply`): a reply is
system-originated mail from a routing domain, which the account has not necessarily
onboarded for sending, so it does not go through SendingService's "sending domain"
rule; everything else is the same pipeline: the suppression list (E_RECIPIENT_SUPPRESSED),
the size limit, our Date/Message-ID when missing, In-Reply-To and References threaded
onto the incoming message, `Auto-Submitted: auto-replied` (RFC 3834) unless the handler
set it, DKIM signed for the receiving domain (its key in dkim_keys, generated on first
use like the forwarding key, the TXT record to publish logged), then enqueued for the
delivery workers in the incoming message's own transaction (committed with it, before
the SMTP 250).
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mta.errors import MtaError
from mta.handlers.message import EmailMessage, ForwardableEmailMessage, header_fields
from mta.observe.events import event_rows, record_events
from mta.queue.queue import PRIORITY_INTERACTIVE, Recipient, enqueue
from mta.routing.forward import KeyStore
from mta.sending.compose import fold_header, new_message_id
from mta.signing.dkim import normalize_line_endings, sign_message
from mta.store import suppression
from mta.store.db import Database
from mta.store.models import Message

__all__ = ["MAX_REFERENCES", "PreparedReply", "check_reply_rules", "prepare_reply",
           "stage_reply"]

MAX_REFERENCES = 100
MAX_REPLY_SIZE = 5 * 1024 * 1024  # as any sent message ([Limits])
_MSGID = re.compile(r"<[^<>\s]+>")
# Fields the platform sets on the way out: a handler's own would be wrong or forged.
_DROPPED = {"bcc", "return-path", "received", "dkim-signature", "arc-seal",
            "arc-message-signature", "arc-authentication-results",
            "authentication-results"}


def _addr(value: str) -> str:
    return email.utils.parseaddr(value.strip())[1].strip().strip("<>").lower()


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def references_of(incoming: ForwardableEmailMessage) -> list[str]:
    return _MSGID.findall(incoming.headers.get("References") or "")


def check_reply_rules(incoming: ForwardableEmailMessage, reply: EmailMessage, *,
                      dmarc_result: str, already_replied: bool) -> None:
    """Raise the MtaError of the first rule `reply` breaks."""
    if already_replied:
        raise MtaError("E_REPLY_ALREADY_SENT", "This email has already been replied to "
                       "in this event.")
    if dmarc_result != "pass":
        raise MtaError("E_REPLY_DMARC_NOT_PASSED", f"The incoming email's DMARC result is "
                       f"{dmarc_result}; only mail that passed DMARC can be replied to.")
    sender = _addr(incoming.from_)
    fields = header_fields(_raw(reply))
    header_rcpts = [a.lower() for _, a in email.utils.getaddresses(
        [v for n, v in fields if n.lower() in ("to", "cc")]) if a]
    if not sender or _addr(reply.to) != sender or any(a != sender for a in header_rcpts):
        raise MtaError("E_REPLY_RECIPIENT_MISMATCH", f"A reply may only go to the sender "
                       f"of the incoming email ({incoming.from_ or '<>'}).", field="to")
    receiving = _domain(_addr(incoming.to))
    header_from = [_addr(v) for n, v in fields if n.lower() == "from"]
    if _domain(_addr(reply.from_)) != receiving or \
            any(_domain(a) != receiving for a in header_from):
        raise MtaError("E_REPLY_SENDER_DOMAIN_MISMATCH", f"A reply must come from the "
                       f"domain that received the email ({receiving}).", field="from")
    refs = references_of(incoming)
    if len(refs) > MAX_REFERENCES:
        raise MtaError("E_REPLY_TOO_MANY_REFERENCES", f"The incoming email has {len(refs)} "
                       f"References entries (more than {MAX_REFERENCES}).")


def _raw(reply: EmailMessage) -> bytes:
    return reply.raw.encode("utf-8") if isinstance(reply.raw, str) else bytes(reply.raw)


@dataclass
class PreparedReply:
    mail_from: str
    rcpt_to: str
    raw: bytes  # final bytes, signed (unsigned in a simulation)
    message_id: str
    in_reply_to: str | None
    signed_by: tuple[str, ...]
    subject: str | None


def thread_reply(incoming: ForwardableEmailMessage, reply: EmailMessage,
                 now: datetime) -> tuple[bytes, str, str | None]:
    """The reply's bytes with our header additions; (raw, Message-ID, In-Reply-To)."""
    raw = normalize_line_endings(_raw(reply))
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise MtaError("E_EMAIL_INVALID", "The reply has no header section.")
    lines = head.split(b"\r\n")
    kept: list[bytes] = []
    skip = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skip:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        skip = name in _DROPPED
        if not skip:
            kept.append(line)
    names = {n.lower() for n, _ in header_fields(raw)}
    ours: list[str] = []
    if "date" not in names:
        ours.append(fold_header("Date", format_datetime(now)))
    message_id = next((v for n, v in header_fields(raw) if n.lower() == "message-id"), None)
    if not message_id:
        message_id = new_message_id(_domain(_addr(reply.from_)))
        ours.append(fold_header("Message-ID", message_id))
    parent = incoming.headers.get("Message-ID")
    parent = parent.strip() if parent else None
    if parent and "in-reply-to" not in names:
        ours.append(fold_header("In-Reply-To", parent))
    if parent and "references" not in names:
        chain = [*references_of(incoming), parent]
        ours.append(fold_header("References", " ".join(dict.fromkeys(chain))))
    if "auto-submitted" not in names:
        ours.append(fold_header("Auto-Submitted", "auto-replied"))
    if "mime-version" not in names:
        ours.append(fold_header("MIME-Version", "1.0"))
    out = "".join(ours).encode("utf-8") + b"\r\n".join(kept) + b"\r\n\r\n" + body
    in_reply_to = next((v for n, v in header_fields(out) if n.lower() == "in-reply-to"),
                       None)
    return out, message_id.strip(), in_reply_to


async def prepare_reply(incoming: ForwardableEmailMessage, reply: EmailMessage, *,
                        db: Database, keys: KeyStore | None, account_id: str | None,
                        now: datetime) -> PreparedReply:
    """Everything that can fail, done before anything is staged: suppression, size,
    threading headers, DKIM (skipped when `keys` is None: a simulation)."""
    rcpt = _addr(reply.to)
    if account_id:
        async with db.session() as s:
            if await suppression.suppressed_among(s, account_id, [rcpt], None, now):
                raise MtaError("E_RECIPIENT_SUPPRESSED", f"{rcpt} is on the suppression "
                               "list.", field="to")
    raw, message_id, in_reply_to = thread_reply(incoming, reply, now)
    if len(raw) > MAX_REPLY_SIZE:
        raise MtaError("E_CONTENT_TOO_LARGE", "The reply is larger than 5 MiB.")
    domain = _domain(_addr(reply.from_))
    signed_by: tuple[str, ...] = ()
    if keys is not None:
        key = await keys.key_for(domain, generate=True)
        if key is None:
            raise MtaError("E_INTERNAL_SERVER_ERROR", "No DKIM key for the reply.")
        raw = await asyncio.to_thread(sign_message, raw, [key])
        signed_by = (key.domain,)
    subject = next((v for n, v in header_fields(raw) if n.lower() == "subject"), None)
    return PreparedReply(reply.from_.strip().strip("<>"), rcpt, raw, message_id,
                         in_reply_to, signed_by, subject)


async def stage_reply(session: AsyncSession, prepared: PreparedReply, *,
                      account_id: str | None, incoming: Message | None, now: datetime,
                      details: dict[str, Any]) -> Message:
    """The reply as an outbound message with its delivery and a Sent event, in the
    caller's transaction (the one that stores the incoming message)."""
    msg = Message(direction="outbound", source="reply", account_id=account_id,
                  message_id_header=prepared.message_id, mail_from=prepared.mail_from,
                  rcpt_to=[prepared.rcpt_to], raw=prepared.raw, size=len(prepared.raw),
                  received_at=now, status="queued",
                  session_id=incoming.session_id if incoming is not None else None)
    await enqueue(session, msg, [Recipient(prepared.rcpt_to)], now=now,
                  priority=PRIORITY_INTERACTIVE)
    await record_events(session, event_rows(
        direction="outbound", status="Sent", recipients=[prepared.rcpt_to],
        mail_from=prepared.mail_from, message_id=msg.id, subject=prepared.subject,
        per_recipient={prepared.rcpt_to: {"account_id": account_id}},
        details={"source": "reply", "message_id": prepared.message_id,
                 "in_reply_to": prepared.in_reply_to, "signed_by": list(prepared.signed_by),
                 "incoming_message_id": str(incoming.id) if incoming is not None else None,
                 **details}))
    return msg
