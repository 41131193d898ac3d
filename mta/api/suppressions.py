"""Suppressions: /accounts/{account_id}/email/sending/suppressions[/{id}|/bulk].

The list itself (upsert rules, scopes, read-only complaint entries, cursor encoding) is
mta/store/suppression.py; this module only speaks the reference's HTTP shapes:
- entries added here have reason `manual`;
- list pagination is by cursor: `result_info.cursor` (what the SDK reads) and
  `result_info.next_cursor` (what its docs name) both carry the next cursor, absent on
  the last page;
- PATCH changes `note` and `expires_at` (explicit null = permanent); any `scope` is
  400 `scope_immutable`;
- read-only entries (complaints) cannot be deleted through the API (403) and are
  `skipped` by the bulk import;
- bulk: items repeating an earlier (email, scope) are dropped and counted in
  `deduplicated`; each other item is `processed`, `invalid` or `error` on its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.auth import require
from mta.api.envelope import api_error, body_list, body_str, crud_routes, json_body, ok
from mta.observe import audit
from mta.store import suppression as sup
from mta.store.models import Suppression

__all__ = ["routes"]

EDIT = "email_sending:edit"
_AUDIT_FIELDS = ("email", "reason", "scope_type", "scope_value", "note", "expires_at",
                 "read_only")


def _error(exc: sup.SuppressionError) -> Exception:
    if isinstance(exc, sup.SuppressionNotFound):
        return api_error("E_NOT_FOUND", str(exc))
    if isinstance(exc, sup.SuppressionProtected):
        return api_error("E_FORBIDDEN", str(exc))
    return api_error("E_VALIDATION_ERROR", str(exc))


def _expires(value: Any, field: str = "expires_at") -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise api_error("E_VALIDATION_ERROR", "expires_at must be an ISO 8601 time or null",
                        field=field)
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise api_error("E_VALIDATION_ERROR", f"expires_at {value!r} is not an ISO 8601 time",
                        field=field) from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _scope(value: Any, field: str = "scope") -> tuple[str, str | None]:
    if value is None:
        return "account", None
    if not isinstance(value, dict) or value.get("type") not in sup.SCOPES:
        raise api_error("E_VALIDATION_ERROR", "scope is {type: account} or "
                        "{type: sending_domain, value: <domain>}", field=field)
    return value["type"], value.get("value")


def _scope_body(entry: Suppression) -> dict:
    return sup.to_dict(entry)["scope"]


async def create(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, EDIT, account_id=account_id)
    body = await json_body(request)
    email = body_str(body, "email", required=True) or ""
    note = body_str(body, "note", allow_null=True)
    expires_at = _expires(body.get("expires_at"))
    scope_type, scope_value = _scope(body.get("scope"))
    ctx = request.app.state.ctx
    async with ctx.db.session() as s:
        try:
            entry = await sup.add(s, account_id, email, "manual", now=ctx.clock(),
                                  scope_type=scope_type, scope_value=scope_value, note=note,
                                  expires_at=expires_at)
        except sup.SuppressionError as exc:
            raise _error(exc) from None
        audit.record_row(s, p.actor, "create", "suppression", entry, _AUDIT_FIELDS,
                         account_id=account_id)
        return ok({"id": entry.id, "scope": _scope_body(entry)})


async def list_(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, EDIT, account_id=account_id)
    q = request.query_params
    try:
        per_page = int(float(q.get("per_page", "50")))
    except ValueError:
        raise api_error("E_VALIDATION_ERROR", "per_page must be a number",
                        field="per_page") from None
    if not 1 <= per_page <= 1000:
        raise api_error("E_VALIDATION_ERROR", "per_page must be between 1 and 1000",
                        field="per_page")
    if q.get("reason") and q["reason"] not in sup.REASONS:
        raise api_error("E_VALIDATION_ERROR", f"reason must be one of {', '.join(sup.REASONS)}",
                        field="reason")
    if q.get("scope_type") and q["scope_type"] not in sup.SCOPES:
        raise api_error("E_VALIDATION_ERROR", "scope_type must be account or sending_domain",
                        field="scope_type")
    async with request.app.state.ctx.db.session() as s:
        try:
            page = await sup.list_entries(
                s, account_id, email=q.get("email"), reason=q.get("reason"),
                scope_type=q.get("scope_type"), scope_value=q.get("scope_value"),
                search=q.get("search"), cursor=q.get("cursor") or None, per_page=per_page)
        except (ValueError, UnicodeDecodeError):
            raise api_error("E_VALIDATION_ERROR", "cursor is not one this server issued",
                            field="cursor") from None
    result = [sup.to_dict(e) for e in page.items]
    info: dict[str, Any] = {"count": len(result), "per_page": per_page}
    if page.cursor:
        info["cursor"] = info["next_cursor"] = page.cursor
    return ok(result, result_info=info)


async def get(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, EDIT, account_id=account_id)
    async with request.app.state.ctx.db.session() as s:
        try:
            entry = await sup.get(s, account_id, request.path_params["suppression_id"])
        except sup.SuppressionError as exc:
            raise _error(exc) from None
        return ok(sup.to_dict(entry))


async def edit(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, EDIT, account_id=account_id)
    body = await json_body(request)
    if "scope" in body:
        raise api_error("E_VALIDATION_ERROR", "scope_immutable: the scope is fixed when the "
                        "suppression is created; delete and recreate it", field="scope")
    note = body_str(body, "note")
    set_expires = "expires_at" in body
    expires_at = _expires(body.get("expires_at"))
    ctx = request.app.state.ctx
    async with ctx.db.session() as s:
        try:
            entry = await sup.get(s, account_id, request.path_params["suppression_id"])
            before = audit.snapshot(entry, _AUDIT_FIELDS)
            entry = await sup.edit(s, account_id, entry.id, now=ctx.clock(), note=note,
                                   expires_at=expires_at, set_expires=set_expires)
        except sup.SuppressionError as exc:
            raise _error(exc) from None
        audit.record_row(s, p.actor, "update", "suppression", entry, _AUDIT_FIELDS,
                         account_id=account_id, before=before)
        return ok(sup.to_dict(entry))


async def delete(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, EDIT, account_id=account_id)
    async with request.app.state.ctx.db.session() as s:
        try:
            entries = await sup.remove(s, account_id,
                                       suppression_id=request.path_params["suppression_id"])
        except sup.SuppressionError as exc:
            raise _error(exc) from None
        entry = entries[0]
        audit.record_row(s, p.actor, "delete", "suppression", entry, _AUDIT_FIELDS,
                         account_id=account_id)
        return ok({"id": entry.id, "scope": _scope_body(entry)})


async def bulk(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, EDIT, account_id=account_id)
    items = body_list(await json_body(request), "items", required=True) or []
    ctx = request.app.state.ctx
    out: list[dict] = []
    counts = {"processed": 0, "invalid": 0, "error": 0, "skipped": 0}
    seen: set[tuple[str, str, str]] = set()
    deduplicated = 0
    async with ctx.db.session() as s:
        for index, item in enumerate(items):
            result: dict[str, Any] = {"index": index}
            try:
                if not isinstance(item, dict) or not isinstance(item.get("email"), str):
                    raise api_error("E_FIELD_MISSING", "email is required")
                result["email"] = email = item["email"].strip().lower()
                scope_type, scope_value = _scope(item.get("scope"))
                key = (email, scope_type, (scope_value or "").lower().rstrip("."))
                if key in seen:
                    deduplicated += 1
                    continue
                seen.add(key)
                expires_at = _expires(item.get("expires_at"))
                note = item.get("note") if isinstance(item.get("note"), str) else None
                existing = (await s.execute(select(Suppression).where(
                    Suppression.account_id == account_id, Suppression.email == email,
                    Suppression.scope_type == scope_type,
                    Suppression.scope_value == key[2]))).scalar_one_or_none()
                if existing is not None and existing.read_only:
                    result.update(status="skipped", id=existing.id,
                                  scope=_scope_body(existing))
                else:
                    async with s.begin_nested():
                        entry = await sup.add(s, account_id, email, "manual", now=ctx.clock(),
                                              scope_type=scope_type, scope_value=scope_value,
                                              note=note, expires_at=expires_at)
                    result.update(status="processed", id=entry.id, scope=_scope_body(entry))
                    audit.record_row(s, p.actor, "create", "suppression", entry, _AUDIT_FIELDS,
                                     account_id=account_id)
            except sup.SuppressionError as exc:
                result.update(status="invalid", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad item must not sink the batch
                err = getattr(exc, "message", None)
                result.update(status="invalid" if err else "error",
                              error=err or "could not store this item")
            counts[result["status"]] += 1
            out.append(result)
    return ok({"total": len(items), "processed": counts["processed"],
               "deduplicated": deduplicated, "invalid": counts["invalid"],
               "errors": counts["error"], "skipped": counts["skipped"], "items": out})


def routes() -> list[Route]:
    b = "/accounts/{account_id}/email/sending/suppressions"
    # /bulk (POST) before /{suppression_id}, which has no POST: order keeps it readable.
    return [Route(b + "/bulk", bulk, methods=["POST"]),
            *crud_routes(b, "/{suppression_id}", list_=list_, create=create, get=get, edit=edit,
                         delete=delete)]
