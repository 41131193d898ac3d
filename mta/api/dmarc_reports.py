"""DMARC aggregate reports other domains sent about the account's domains (an extension):

    GET /accounts/{account_id}/email/reports/dmarc/days          per day and domain
    GET /accounts/{account_id}/email/reports/dmarc/received      one entry per report
    GET /accounts/{account_id}/email/reports/dmarc/received/{id} one report's records

`days` (1-366, default 7) bounds how far back by time of receipt; `domain` picks one
policy domain. An account sees the reports whose policy domain is one of its zones,
routing or sending domains; a report file that could not be parsed names no domain and
is shown only by `mta reports dmarc list --reports`. Needs `analytics:read`.
mta/reports/dmarc_received.py holds the queries (docs/reports.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.auth import require
from mta.api.envelope import api_error, ok, ok_all, query_int
from mta.reports import dmarc_received as received

__all__ = ["json_value", "report_by_id", "report_routes", "report_scope", "routes"]

READ = "analytics:read"


def json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value


async def report_scope(request: Request) -> tuple[Any, set[str], datetime, str | None]:
    account_id = request.path_params["account_id"]
    await require(request, READ, account_id=account_id)
    days = query_int(request, "days", 7, 1, 366)
    db = request.app.state.ctx.db
    domains = await received.account_domains(db, account_id)
    domain = (request.query_params.get("domain") or "").strip().lower() or None
    return db, domains, datetime.now(UTC) - timedelta(days=days), domain


async def days(request: Request) -> JSONResponse:
    db, domains, since, domain = await report_scope(request)
    reports = await received.report_list(db, since, domain, domains)
    return ok_all(json_value(received.daily_summary(reports)))


async def list_(request: Request) -> JSONResponse:
    db, domains, since, domain = await report_scope(request)
    reports = await received.report_list(db, since, domain, domains)
    return ok_all([json_value(received.report_summary(r)) for r in reports])


async def report_by_id(request: Request, report_detail, kind: str) -> JSONResponse:
    """GET .../received/{report_id}: one report, by `report_detail(db, id, domains)` with
    the account's domains, or a 404 when there is none the account may see."""
    account_id = request.path_params["account_id"]
    await require(request, READ, account_id=account_id)
    db = request.app.state.ctx.db
    raw = request.path_params["report_id"]
    detail = None
    if raw.isdigit() and len(raw) < 19:
        detail = await report_detail(db, int(raw),
                                     await received.account_domains(db, account_id))
    if detail is None:
        raise api_error("E_NOT_FOUND", f"{kind} report {raw} not found")
    return ok(json_value(detail))


def report_routes(kind: str, days, list_, get) -> list[Route]:
    """The three routes of one kind of received reports (`dmarc`, `tls`)."""
    a = f"/accounts/{{account_id}}/email/reports/{kind}"
    return [Route(a + "/days", days, methods=["GET"]),
            Route(a + "/received", list_, methods=["GET"]),
            Route(a + "/received/{report_id}", get, methods=["GET"])]


async def get(request: Request) -> JSONResponse:
    return await report_by_id(request, received.report_detail, "DMARC")


def routes() -> list[Route]:
    return report_routes("dmarc", days, list_, get)
