"""Destination address verification: the mail, the link, expiry, and why a rule is off.

[Email routing rules and addresses]: adding a destination address sends a verification
mail; until its owner follows the link, rules forwarding to it stay inactive; deleting it
disables them (`mta.routing.destinations.disable_rules_forwarding_to`).

The token is `mta.routing.destinations.verification_token` (address id + HMAC under
`secret_key`, its SHA-256 stored on the row). It expires here:
`routing.verification_ttl` after the last verification mail (`verification_sent_at`);
sending the mail again renews it.

- `send_verification()` composes the mail (link to the HTTP listener and the
  `mta addresses verify TOKEN` command), DKIM-signs it for the forwarding domain and
  enqueues it in the caller's transaction. It goes straight to the queue rather than
  through `SendingService`: that path enforces the account's sender rules (From a
  sending domain, or only to verified addresses), which system mail from our own
  forwarding domain to a not-yet-verified address can never meet.
- `send_pending_verifications()` mails every address that was never mailed (addresses
  created through the API or `mta apply`), so creation needs no hook of its own.
- `verify()` = expiry check + `verify_with_token`; the HTTP listener serves the link
  (`GET /email/routing/verify?token=...`, `mta.api.verification`).
- `inactive_reason()` says why a rule does not route mail.

Settings read: `routing.verification_*`, `routing.forwarding_domain`, `srs.domain`,
`listeners.http`, `secret_key`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.config import Settings
from mta.queue.queue import PRIORITY_INTERACTIVE, Recipient, enqueue, utcnow
from mta.routing.destinations import verification_token, verify_with_token
from mta.routing.forward import KeyStore, forwarding_domain
from mta.routing.rules import Rule, normalize_address
from mta.signing.dkim import sign_message
from mta.store.db import Database
from mta.store.models import DestinationAddress, Message

__all__ = ["VERIFY_PATH", "VerificationError", "VerificationExpired", "compose_verification",
           "inactive_reason", "send_pending_verifications", "send_verification",
           "verification_link", "verify"]

VERIFY_PATH = "/email/routing/verify"


class VerificationError(LookupError):
    """The token is not valid (unknown address, wrong signature, no secret_key)."""


class VerificationExpired(VerificationError):
    """The token was valid but its verification mail is older than the lifetime."""


# -- the mail -----------------------------------------------------------------------------------


def verification_link(settings: Settings, token: str) -> str:
    base = settings.routing.verification_base_url
    if not base:
        http = settings.listeners.http
        base = f"{'https' if http.tls_cert else 'http'}://{http.address}:{http.port}"
    return f"{base.rstrip('/')}{VERIFY_PATH}?{urlencode({'token': token})}"


def _sender(settings: Settings) -> str:
    return settings.routing.verification_from or \
        f"noreply@{forwarding_domain(settings) or settings.node.hostname}"


def compose_verification(settings: Settings, email: str, token: str, now: datetime) -> bytes:
    sender = _sender(settings)
    link = verification_link(settings, token)
    hours = int(settings.routing.verification_ttl // 3600)
    msg = EmailMessage()
    msg["From"] = f"Email Routing <{sender}>"
    msg["To"] = email
    msg["Subject"] = "Verify your email address for Email Routing"
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"
    text = (f"Someone asked to forward email to {email}.\n\n"
            f"To allow it, open this link within {hours} hours:\n\n  {link}\n\n"
            f"or ask the operator to run:\n\n  mta addresses verify {token}\n\n"
            "If you did not expect this, ignore this message: nothing will be forwarded "
            "to you.\n")
    # 7bit keeps the link on one line as written (quoted-printable would fold it with
    # soft breaks that copy-and-paste carries along).
    msg.set_content(text, cte="7bit" if text.isascii() else None)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def send_verification(session: AsyncSession, settings: Settings,
                            row: DestinationAddress, now: datetime,
                            keys: KeyStore | None = None) -> Message:
    """Compose, sign and enqueue the verification mail for `row` in the caller's
    transaction; (re)starts the token's lifetime."""
    token = verification_token(settings, row.id, row.email)
    if token is None:
        raise VerificationError("secret_key must be set to sign verification tokens")
    raw = compose_verification(settings, row.email, token, now)
    domain = forwarding_domain(settings)
    if keys is not None and domain:
        key = await keys.key_for(domain, generate=True)
        if key is not None:
            raw = sign_message(raw, [key])
    row.verification_token_hash = hashlib.sha256(token.encode()).digest()
    row.verification_sent_at = now
    sender = _sender(settings)
    message = Message(direction="outbound", source="verification", account_id=row.account_id,
                      mail_from=sender, rcpt_to=[row.email], raw=raw, size=len(raw),
                      received_at=now, status="queued")
    await enqueue(session, message, [Recipient(row.email)], now=now,
                  priority=PRIORITY_INTERACTIVE)
    return message


async def send_pending_verifications(db: Database, settings: Settings,
                                     now: datetime | None = None) -> list[str]:
    """Mail every unverified address that has never been mailed; their emails."""
    now = now or utcnow()
    keys = KeyStore(db, settings)
    async with db.session() as s:
        rows = (await s.execute(select(DestinationAddress).where(
            DestinationAddress.verified_at.is_(None),
            DestinationAddress.verification_sent_at.is_(None))
            .with_for_update(skip_locked=True))).scalars().all()
        for row in rows:
            await send_verification(s, settings, row, now, keys)
        return [r.email for r in rows]


# -- the token ----------------------------------------------------------------------------------


async def verify(session: AsyncSession, settings: Settings, token: str, now: datetime,
                 actor: str) -> DestinationAddress:
    """Mark the token's address verified, in the caller's transaction. Raises
    VerificationExpired or VerificationError."""
    address_id = token.strip().partition(".")[0]
    row = await session.get(DestinationAddress, address_id) if address_id.isalnum() else None
    ttl = timedelta(seconds=settings.routing.verification_ttl)
    if (row is not None and row.verified_at is None and row.verification_sent_at is not None
            and now - row.verification_sent_at > ttl):
        raise VerificationExpired("the verification link has expired; ask for a new mail")
    try:
        return await verify_with_token(session, settings, token, now, actor)
    except LookupError as exc:
        raise VerificationError(str(exc)) from None


def inactive_reason(rule: Rule, verified: Collection[str]) -> str | None:
    """Why `rule` routes no mail, or None when it is active (the matcher's own test,
    `rules.rule_is_active`, with the reason spelled out)."""
    if not rule.enabled:
        return "the rule is disabled"
    if not rule.actions:
        return "the rule has no action"
    known = {normalize_address(v) for v in verified}
    pending: list[str] = []
    for action in rule.actions:
        if action.type != "forward":
            return None
        dests = [normalize_address(d) for d in action.value]
        if any(d in known for d in dests):
            return None
        pending += dests
    if not pending:
        return "the rule forwards to no destination"
    return "destination address not verified: " + ", ".join(pending)
