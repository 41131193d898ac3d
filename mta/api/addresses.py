"""Destination addresses: /accounts/{account_id}/email/routing/addresses[...].

Account-level forwarding destinations ([Email routing rules and addresses]). Adding one
creates its verification token; until it is verified, rules forwarding to it are
inactive. Deleting one disables every rule that forwards to it (audited per rule).
At most `limits.addresses_per_account` per account.

The verification token and what deleting an address disables are routing's
(`mta.routing.destinations`); the mail and the link are `mta.routing.verification`'s.

PATCH `status`: any editor may set an address back to `unverified`; setting `verified`
needs admin privileges ([Update destination address]): a token with `account:admin`
(other tokens get 403, pointed at that permission and at `mta addresses verify`).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.auth import owned_row, require
from mta.api.envelope import (
    api_error,
    body_str,
    crud_routes,
    isotime,
    json_body,
    ok,
    page_of,
    page_request,
    query_bool,
)
from mta.observe import audit
from mta.routing.destinations import (
    AUDIT_FIELDS,
    disable_rules_forwarding_to,
    mark_verified,
    token_hash,
    verification_token,
)
from mta.store.models import DestinationAddress

__all__ = ["address_body", "normalize_email", "routes"]

READ, EDIT, ADMIN = "email_routing:read", "email_routing:edit", "account:admin"
_EMAIL_RE = re.compile(r"[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")


def normalize_email(value: str, *, field: str = "email") -> str:
    """The lower-cased address, or a validation error naming `field`."""
    v = value.strip()
    if len(v) > 320 or not _EMAIL_RE.fullmatch(v):
        raise api_error("E_VALIDATION_ERROR", f"{value!r} is not an email address", field=field)
    return v.lower()


def address_body(row: DestinationAddress) -> dict[str, Any]:
    return {"id": row.id, "tag": row.id, "email": row.email, "created": isotime(row.created_at),
            "modified": isotime(row.modified_at), "verified": isotime(row.verified_at)}


# --- handlers --------------------------------------------------------------------------------


async def _address(session: AsyncSession, account_id: str, address_id: str,
                   for_update: bool = False) -> DestinationAddress:
    return await owned_row(session, DestinationAddress, address_id, "destination address",
                           owned=lambda row: row.account_id == account_id, for_update=for_update)


async def list_addresses(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, READ, account_id=account_id)
    page = page_request(request)
    verified = query_bool(request, "verified")
    direction = request.query_params.get("direction", "asc")
    if direction not in ("asc", "desc"):
        raise api_error("E_VALIDATION_ERROR", "direction must be asc or desc", field="direction")
    where = [DestinationAddress.account_id == account_id]
    if verified is not None:
        where.append(DestinationAddress.verified_at.is_not(None) if verified
                     else DestinationAddress.verified_at.is_(None))
    order = [DestinationAddress.created_at, DestinationAddress.id]
    if direction == "desc":
        order = [o.desc() for o in order]
    async with request.app.state.ctx.db.session() as s:
        rows, total = await page_of(
            s, select(DestinationAddress).where(*where).order_by(*order), page)
    result = [address_body(r) for r, in rows]
    return ok(result, result_info=page.info(len(result), total))


async def create_address(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, EDIT, account_id=account_id)
    body = await json_body(request)
    email = normalize_email(body_str(body, "email", required=True) or "")
    ctx = request.app.state.ctx
    async with ctx.db.session() as s:
        # Serialise creates per account so the limit and the duplicate check hold.
        await s.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"addr:{account_id}"))))
        exists = (await s.execute(select(DestinationAddress.id).where(
            DestinationAddress.account_id == account_id,
            func.lower(DestinationAddress.email) == email))).first()
        if exists:
            raise api_error("E_VALIDATION_ERROR", f"{email} is already a destination address",
                            field="email")
        limit = ctx.settings.limits.addresses_per_account
        count = (await s.execute(select(func.count()).select_from(DestinationAddress).where(
            DestinationAddress.account_id == account_id))).scalar_one()
        if count >= limit:
            raise api_error("E_VALIDATION_ERROR", f"the account already has {limit} destination "
                            "addresses (limits.addresses_per_account)", field="email")
        row = DestinationAddress(account_id=account_id, email=email)
        s.add(row)
        await s.flush()
        token = verification_token(ctx.settings, row.id, email)
        if token:
            row.verification_token_hash = token_hash(token)
            await _mail_verification(s, ctx, row)
        await s.flush()
        await s.refresh(row)
        audit.record_row(s, p.actor, "create", "destination_address", row, AUDIT_FIELDS,
                         account_id=account_id)
        return ok(address_body(row))


async def _mail_verification(session: AsyncSession, ctx: Any, row: DestinationAddress) -> None:
    """Queue the verification mail in the transaction that creates the address. Without
    a forwarding domain there is no sender for it yet: `mta addresses send-verification
    --pending` mails those addresses once one is configured."""
    # Imported here: the routing package imports this module's token helpers.
    from mta.routing.forward import KeyStore, forwarding_domain
    from mta.routing.verification import send_verification

    if forwarding_domain(ctx.settings):
        await send_verification(session, ctx.settings, row, ctx.clock(),
                                KeyStore(ctx.db, ctx.settings))


async def get_address(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, READ, account_id=account_id)
    async with request.app.state.ctx.db.session() as s:
        row = await _address(s, account_id, request.path_params["address_id"])
        return ok(address_body(row))


async def edit_address(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, EDIT, account_id=account_id)
    status = body_str(await json_body(request), "status", required=True)
    if status not in ("verified", "unverified"):
        raise api_error("E_VALIDATION_ERROR", "status must be verified or unverified",
                        field="status")
    async with request.app.state.ctx.db.session() as s:
        row = await _address(s, account_id, request.path_params["address_id"], for_update=True)
        if status == "verified" and row.verified_at is None:
            if not p.can(ADMIN):
                raise api_error("E_FORBIDDEN", f"marking an address verified needs the {ADMIN} "
                                "permission (or `mta addresses verify`); the owner verifies "
                                "through the link")
            mark_verified(s, row, request.app.state.ctx.clock(), p.actor)
            await s.flush()
            await s.refresh(row)
        if status == "unverified" and row.verified_at is not None:
            before = audit.snapshot(row, AUDIT_FIELDS)
            row.verified_at = None
            await s.flush()
            await s.refresh(row)
            audit.record(s, actor=p.actor, action="unverify",
                         resource_type="destination_address", resource_id=row.id,
                         account_id=account_id, before=before,
                         after=audit.snapshot(row, AUDIT_FIELDS))
        return ok(address_body(row))


async def delete_address(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, EDIT, account_id=account_id)
    async with request.app.state.ctx.db.session() as s:
        row = await _address(s, account_id, request.path_params["address_id"], for_update=True)
        body = address_body(row)
        await disable_rules_forwarding_to(s, account_id, row.email, p.actor)
        audit.record_row(s, p.actor, "delete", "destination_address", row, AUDIT_FIELDS,
                         account_id=account_id)
        await s.delete(row)
        return ok(body)


def routes() -> list[Route]:
    return crud_routes("/accounts/{account_id}/email/routing/addresses", "/{address_id}",
                       list_=list_addresses, create=create_address, get=get_address,
                       edit=edit_address, delete=delete_address)
