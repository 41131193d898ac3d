"""Bearer-token authentication and permission checks for the HTTP API.

`require(request, permission)` is the one call a handler makes before doing anything:

| situation                                                   | error (REST row)    |
| ----------------------------------------------------------- | ------------------- |
| no `Authorization` header                                   | 401 10101           |
| a scheme other than Bearer, an `X-Auth-Key` global key, or  | 401 10103           |
| a Bearer value that is not one of our tokens' shape         | (bad token type)    |
| a well-formed token that is unknown, revoked or expired     | 401 10101           |
| a valid token without the permission                        | 403 10102           |
| a valid token used on another account's path                | 403 10102           |

A zone of another account answers 404, exactly like a zone that does not exist, so a
token cannot probe which zone ids exist. Permission names: see mta/tokens.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from mta.api.envelope import api_error
from mta.store.models import Zone
from mta.tokens import grants, is_well_formed, verify_token

__all__ = ["Principal", "authenticate", "is_tag", "owned_row", "require", "zone_of", "zone_session"]

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    token_id: str
    account_id: str
    permissions: tuple[str, ...]

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"token:{self.token_id}"

    def can(self, permission: str) -> bool:
        return grants(self.permissions, permission)


def is_tag(value: str) -> bool:
    """A 32-hex identifier, the shape of every id the API hands out."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        if request.headers.get("x-auth-key") or request.headers.get("x-auth-email"):
            raise api_error("E_BAD_TOKEN_TYPE", "global API keys are not supported; "
                            "use an API token in 'Authorization: Bearer <token>'")
        raise api_error("E_AUTH_REQUIRED", "missing 'Authorization: Bearer <token>' header")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise api_error("E_BAD_TOKEN_TYPE", "expected 'Authorization: Bearer <token>'")
    if not is_well_formed(value):
        raise api_error("E_BAD_TOKEN_TYPE", "not an API token of this server")
    return value


async def authenticate(request: Request) -> Principal:
    """The caller, from its Bearer token; cached on the request."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    secret = _bearer(request)
    ctx = request.app.state.ctx
    async with ctx.db.session() as s:
        check = await verify_token(s, secret, ctx.clock())
    if check.token is None:
        raise api_error("E_UNAUTHORIZED", f"API token is {check.problem}")
    tok = check.token
    principal = Principal(tok.id, tok.account_id, tuple(tok.permissions))
    request.state.principal = principal
    return principal


async def require(request: Request, permission: str, *,
                  account_id: str | None = None) -> Principal:
    """Authenticate and check `permission` (and, for account paths, the account)."""
    principal = await authenticate(request)
    if not principal.can(permission):
        raise api_error("E_FORBIDDEN", f"API token lacks the {permission} permission")
    if account_id is not None and account_id != principal.account_id:
        raise api_error("E_FORBIDDEN", "API token does not belong to this account")
    return principal


async def zone_of(session: AsyncSession, principal: Principal, zone_id: str,
                  *, for_update: bool = False) -> Zone:
    """The zone, if it belongs to the caller's account; else 404."""
    return await owned_row(session, Zone, zone_id, "zone", for_update=for_update,
                           owned=lambda zone: zone.account_id == principal.account_id)


async def owned_row(session: AsyncSession, model: type[T], ident: str, what: str, *,
                    owned: Callable[[T], bool], for_update: bool = False) -> T:
    """The `model` row `ident` when `owned(row)` (it belongs to the caller's account or
    zone); else 404 "`what` `ident` not found", as for an id that never existed."""
    row = await session.get(model, ident, with_for_update=for_update) if is_tag(ident) else None
    if row is None or not owned(row):
        raise api_error("E_NOT_FOUND", f"{what} {ident} not found")
    return row


@asynccontextmanager
async def zone_session(request: Request, permission: str, *, for_update: bool = False
                       ) -> AsyncIterator[tuple[Principal, AsyncSession, Zone]]:
    """How every zone resource begins: the caller (holding `permission`), a database
    session, and the path's zone (404 unless it is the caller's)."""
    principal = await require(request, permission)
    async with request.app.state.ctx.db.session() as session:
        zone = await zone_of(session, principal, request.path_params["zone_id"],
                             for_update=for_update)
        yield principal, session, zone
