"""The audit log over HTTP: GET /accounts/{account_id}/audit_logs.

The path, the `since`/`before` range, `direction` (sort order, default desc), page and
per_page (default 100, at most 1000) and the entry shape are the reference's account
audit logs (`{id, when, action: {type, result}, actor: {id, type}, interface, owner,
resource: {id, type}, oldValueJson, newValueJson}`); `until` is accepted for `before`.
Filters: `actor` (`token:<id>`, `cli:<user>` or just the id/user; `actor.id` too),
`action` (`action.type`), `resource_type` (`resource.type`), `resource_id`
(`resource.id`). Entries are the ones `mta.observe.audit.record` wrote for the account.

Reading it needs `analytics:read`: the log holds who changed what, not secrets
(mta/observe/audit.py keeps hashes and keys out of the snapshots).
"""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.activity import newest_first, parse_time
from mta.api.auth import require
from mta.api.envelope import api_error, isotime, ok, page_request
from mta.observe import analytics

__all__ = ["routes"]

READ = "analytics:read"
PER_PAGE = (100, 1, 1000)


def _time(request: Request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    return parse_time(value, name) if value else None


def _param(request: Request, *names: str) -> str | None:
    for name in names:
        value = request.query_params.get(name)
        if value:
            return value
    return None


async def list_audit_logs(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, READ, account_id=account_id)
    until_name = "before" if request.query_params.get("before") else "until"
    since = _time(request, "since")
    until = _time(request, until_name)
    if since is not None and until is not None and since > until:
        raise api_error("E_VALIDATION_ERROR", f"since must not be after {until_name}",
                        field="since")
    f = analytics.AuditFilter(
        since=since, until=until, account_id=account_id,
        actor=_param(request, "actor", "actor.id"), action=_param(request, "action",
                                                                   "action.type"),
        resource_type=_param(request, "resource_type", "resource.type"),
        resource_id=_param(request, "resource_id", "resource.id"))
    page = page_request(request, PER_PAGE)
    desc = newest_first(request, "direction")
    async with request.app.state.ctx.db.session() as s:
        rows, total = await analytics.list_audit(s, f, offset=page.offset,
                                                 limit=page.per_page, newest_first=desc)
    info = {**page.info(len(rows), total), "since": isotime(since), "until": isotime(until)}
    return ok(rows, result_info=info)


def routes() -> list[Route]:
    return [Route("/accounts/{account_id}/audit_logs", list_audit_logs, methods=["GET"])]
