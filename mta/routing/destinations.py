"""Destination addresses: the verification token, marking one verified, and what
deleting one disables.

[Email routing rules and addresses]: a rule forwards only to verified destinations.
The token is `<address id>.<HMAC-SHA256 of id and address under secret_key>`, so whoever
mails the verification link can recompute it from the row (`verification_token`), and the
stored `verification_token_hash` (its SHA-256) finds the row. Without a `secret_key` no
token can be signed and only an operator can verify (`mta addresses verify --id`).
Callers: the admin API and `mta apply` (create, delete), `mta.routing.verification` (the
mail and the link), the CLI (`mta addresses verify`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.config import Settings
from mta.observe import audit
from mta.store.models import DestinationAddress, RoutingRule, Zone

__all__ = ["AUDIT_FIELDS", "disable_rules_forwarding_to", "mark_verified", "token_hash",
           "verification_token", "verify_with_token"]

AUDIT_FIELDS = ("email", "verified_at")


def _is_id(value: str) -> bool:
    """A 32-hex identifier, the shape of every address id."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def verification_token(settings: Settings, address_id: str, email: str) -> str | None:
    if not settings.secret_key:
        return None
    key = hashlib.sha256(b"mta destination verification\0" + settings.secret_key.encode()).digest()
    mac = hmac.new(key, f"{address_id}:{email.lower()}".encode(), hashlib.sha256).digest()
    return f"{address_id}.{base64.urlsafe_b64encode(mac[:24]).decode()}"


def token_hash(token: str) -> bytes:
    """What is stored of a verification token."""
    return hashlib.sha256(token.encode()).digest()


async def verify_with_token(session: AsyncSession, settings: Settings, token: str,
                            now: datetime, actor: str) -> DestinationAddress:
    """Mark the address of `token` verified; LookupError when the token is not valid."""
    address_id, _, _ = token.strip().partition(".")
    row = await session.get(DestinationAddress, address_id, with_for_update=True) \
        if _is_id(address_id) else None
    expected = verification_token(settings, address_id, row.email) if row else None
    if (row is None or expected is None or not hmac.compare_digest(expected, token.strip())
            or row.verification_token_hash not in (None, token_hash(expected))):
        raise LookupError("invalid or expired verification token")
    return mark_verified(session, row, now, actor)


def mark_verified(session: AsyncSession, row: DestinationAddress, now: datetime,
                  actor: str) -> DestinationAddress:
    if row.verified_at is None:
        before = audit.snapshot(row, AUDIT_FIELDS)
        row.verified_at = now
        audit.record_row(session, actor, "verify", "destination_address", row, AUDIT_FIELDS,
                         account_id=row.account_id, before=before)
    return row


async def disable_rules_forwarding_to(session: AsyncSession, account_id: str, email: str,
                                      actor: str) -> list[str]:
    """Disable the account's enabled rules that forward to `email`; their ids."""
    rows = (await session.execute(
        select(RoutingRule).join(Zone, Zone.id == RoutingRule.zone_id)
        .where(Zone.account_id == account_id, RoutingRule.enabled.is_(True))
        .with_for_update(of=RoutingRule))).scalars()
    target = email.lower()
    changed: list[str] = []
    for rule in rows:
        if any(a.get("type") == "forward" and target in (str(v).strip().lower()
                                                          for v in a.get("value") or ())
               for a in rule.actions or ()):
            rule.enabled = False
            changed.append(rule.id)
            audit.record(session, actor=actor, action="disable", resource_type="routing_rule",
                         resource_id=rule.id, account_id=account_id, before={"enabled": True},
                         after={"enabled": False, "reason": f"destination {email} deleted"})
    return changed
