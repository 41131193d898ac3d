"""Webhook endpoints: /accounts/{account_id}/email/webhooks[/{webhook_id}[/test|/deliveries]].

An extension beyond the reference API (which has none), under the same envelope, errors
and token rules. The endpoints receive every activity of the account, so managing them
takes `account:admin`. The secret is in the answer to the POST that creates an endpoint
and never again. mta/webhooks/ holds the logic (docs/webhooks.md).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.auth import require
from mta.api.envelope import (
    api_error,
    body_list,
    body_str,
    json_body,
    ok,
    ok_all,
    page_request,
)
from mta.observe import audit
from mta.webhooks import endpoints
from mta.webhooks.sender import send_test

__all__ = ["routes"]

ADMIN = "account:admin"
_AUDIT_FIELDS = ("url", "event_types", "description", "enabled")
LOG_PER_PAGE = (50, 1, 1000)


def _invalid(exc: endpoints.EndpointError) -> Exception:
    return api_error("E_VALIDATION_ERROR", str(exc), field=exc.field)


async def _endpoint(request: Request, session, account_id: str):
    row = await endpoints.get(session, request.path_params["webhook_id"], account_id)
    if row is None:
        raise api_error("E_NOT_FOUND", f"webhook {request.path_params['webhook_id']} not found")
    return row


async def create(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, ADMIN, account_id=account_id)
    body = await json_body(request)
    url = body_str(body, "url", required=True) or ""
    types = body_list(body, "event_types")
    description = body_str(body, "description", allow_null=True, max_len=1000)
    async with request.app.state.ctx.db.session() as s:
        try:
            row = await endpoints.create(s, account_id, url, event_types=types,
                                         description=description,
                                         settings=request.app.state.ctx.settings.webhooks)
        except endpoints.EndpointError as exc:
            raise _invalid(exc) from None
        audit.record_row(s, p.actor, "create", "webhook", row, _AUDIT_FIELDS,
                         account_id=account_id)
        return ok(endpoints.to_dict(row, secret=True))


async def list_(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, ADMIN, account_id=account_id)
    async with request.app.state.ctx.db.session() as s:
        rows = await endpoints.list_for(s, account_id)
        counts = await endpoints.stats(s, [r.id for r in rows])
        return ok_all([endpoints.to_dict(r, counts[r.id]) for r in rows])


async def get(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, ADMIN, account_id=account_id)
    async with request.app.state.ctx.db.session() as s:
        row = await _endpoint(request, s, account_id)
        counts = await endpoints.stats(s, [row.id])
        return ok(endpoints.to_dict(row, counts[row.id]))


async def delete(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    p = await require(request, ADMIN, account_id=account_id)
    async with request.app.state.ctx.db.session() as s:
        row = await _endpoint(request, s, account_id)
        audit.record_row(s, p.actor, "delete", "webhook", row, _AUDIT_FIELDS,
                         account_id=account_id)
        await endpoints.delete(s, row)
        return ok({"id": row.id})


async def test(request: Request) -> JSONResponse:
    """POST a `test` event to the endpoint now and say how it answered."""
    account_id = request.path_params["account_id"]
    await require(request, ADMIN, account_id=account_id)
    ctx = request.app.state.ctx
    async with ctx.db.session() as s:
        row = await _endpoint(request, s, account_id)
        url, secret = row.url, row.secret
    result = await send_test(account_id, url, secret, ctx.settings.webhooks, ctx.resolver)
    return ok({"id": request.path_params["webhook_id"], "ok": result.ok,
               "status_code": result.status_code, "error": result.error,
               "duration_ms": round(result.seconds * 1000, 1)})


async def deliveries(request: Request) -> JSONResponse:
    """The endpoint's delivery log, newest first (`?status=pending|delivered|failed`)."""
    account_id = request.path_params["account_id"]
    await require(request, ADMIN, account_id=account_id)
    page = page_request(request, LOG_PER_PAGE)
    async with request.app.state.ctx.db.session() as s:
        row = await _endpoint(request, s, account_id)
        try:
            rows, total = await endpoints.log_rows(
                s, row.id, status=request.query_params.get("status") or None,
                limit=page.per_page, offset=page.offset)
        except endpoints.EndpointError as exc:
            raise _invalid(exc) from None
        return ok([endpoints.log_to_dict(r) for r in rows],
                  result_info=page.info(len(rows), total))


def routes() -> list[Route]:
    a = "/accounts/{account_id}/email/webhooks"
    one = a + "/{webhook_id}"
    return [Route(a, list_, methods=["GET"]), Route(a, create, methods=["POST"]),
            Route(one, get, methods=["GET"]), Route(one, delete, methods=["DELETE"]),
            Route(one + "/test", test, methods=["POST"]),
            Route(one + "/deliveries", deliveries, methods=["GET"])]
