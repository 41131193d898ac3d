"""API tokens: creation, lookup, revocation.

A token is `mta_` followed by 43 URL-safe characters (256 random bits). It is shown
once, when created; only its SHA-256 is stored (`api_tokens.token_hash`), so a stolen
database does not yield usable tokens and lookup is one indexed equality.

A token belongs to one account and carries a list of permissions:

| permission            | allows                                                          |
| --------------------- | --------------------------------------------------------------- |
| `email_routing:read`  | read routing settings, DNS records, rules, catch-all, addresses |
| `email_routing:edit`  | change all of those (implies `email_routing:read`)              |
| `email_sending:send`  | send mail (REST send/send_raw, SMTP submission)                 |
| `email_sending:edit`  | read and change sending subdomains and suppressions             |
| `analytics:read`      | read the activity log and analytics                             |
| `account:admin`       | all of the above, and operator actions: mark a destination      |
|                       | address verified without its owner's link                       |

`last_used_at` is written at most once a minute per token, so a busy client does not
turn every request into a row update.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mta.store.models import Account, ApiToken

__all__ = [
    "PERMISSIONS",
    "TOKEN_PREFIX",
    "TokenCheck",
    "check_permissions",
    "create_token",
    "generate_token",
    "grants",
    "hash_token",
    "is_well_formed",
    "list_tokens",
    "revoke_token",
    "verify_token",
]

PERMISSIONS: dict[str, str] = {
    "email_routing:read": "read routing settings, DNS records, rules, catch-all, addresses",
    "email_routing:edit": "change routing settings, rules, catch-all, addresses",
    "email_sending:send": "send mail (REST send/send_raw, SMTP submission)",
    "email_sending:edit": "read and change sending subdomains and suppressions",
    "analytics:read": "read the activity log and analytics",
    "account:admin": "all of the above, and mark destination addresses verified",
}

# A permission also grants the ones listed here.
_IMPLIES: dict[str, tuple[str, ...]] = {
    "email_routing:edit": ("email_routing:read",),
    "account:admin": ("email_routing:read", "email_routing:edit", "email_sending:send",
                      "email_sending:edit", "analytics:read"),
}

TOKEN_PREFIX = "mta_"
_TOKEN_RE = re.compile(r"mta_[A-Za-z0-9_-]{43}")
LAST_USED_RESOLUTION = timedelta(seconds=60)


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def is_well_formed(token: str) -> bool:
    """Whether `token` has the shape of one of our tokens (anything else, such as a
    key of another service, is the wrong token type rather than an unknown token)."""
    return _TOKEN_RE.fullmatch(token) is not None


def grants(permissions: Iterable[str], wanted: str) -> bool:
    for p in permissions:
        if p == wanted or wanted in _IMPLIES.get(p, ()):
            return True
    return False


def check_permissions(permissions: Sequence[str]) -> list[str]:
    unknown = [p for p in permissions if p not in PERMISSIONS]
    if unknown:
        raise ValueError(f"unknown permission(s) {', '.join(unknown)}; "
                         f"known: {', '.join(PERMISSIONS)}")
    if not permissions:
        raise ValueError("a token needs at least one permission")
    return sorted(set(permissions))


async def create_token(session: AsyncSession, account_id: str, name: str,
                       permissions: Sequence[str], *,
                       expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Store a new token; returns the row and the secret (its only appearance)."""
    perms = check_permissions(permissions)
    if await session.get(Account, account_id) is None:
        raise LookupError(f"no account {account_id}")
    secret = generate_token()
    row = ApiToken(account_id=account_id, name=name, token_hash=hash_token(secret),
                   permissions=perms, expires_at=expires_at)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return row, secret


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of a lookup: the token when usable, else why not."""

    token: ApiToken | None
    problem: str | None = None  # unknown | revoked | expired


async def verify_token(session: AsyncSession, secret: str, now: datetime) -> TokenCheck:
    row = (await session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))).scalar_one_or_none()
    if row is None:
        return TokenCheck(None, "unknown")
    if row.revoked_at is not None:
        return TokenCheck(None, "revoked")
    if row.expires_at is not None and row.expires_at <= now:
        return TokenCheck(None, "expired")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        # The WHERE clause keeps concurrent requests from all writing the same minute.
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id == row.id,
                   (ApiToken.last_used_at.is_(None))
                   | (ApiToken.last_used_at <= now - LAST_USED_RESOLUTION))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False))
    return TokenCheck(row)


async def list_tokens(session: AsyncSession, account_id: str | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if account_id:
        query = query.where(ApiToken.account_id == account_id)
    return list((await session.execute(query)).scalars())


async def revoke_token(session: AsyncSession, token_id: str, now: datetime) -> ApiToken:
    row = await session.get(ApiToken, token_id)
    if row is None:
        raise LookupError(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = now
    return row
