"""TLS reports (RFC 8460) other domains sent about the account's domains (an extension,
alongside the DMARC ones in dmarc_reports.py):

    GET /accounts/{account_id}/email/reports/tls/days          per day, reporter, policy
    GET /accounts/{account_id}/email/reports/tls/received      one entry per report
    GET /accounts/{account_id}/email/reports/tls/received/{id} one report's policies

`days` (1-366, default 7) bounds how far back by time of receipt; `domain` picks one
policy domain. An account sees the reports naming one of its zones, routing or sending
domains, and of those only its own policies; a report file that could not be parsed
names no domain and is shown only by `mta reports tls list --reports`. Needs
`analytics:read`. mta/reports/tls_received.py holds the queries
(docs/tls-reporting.md).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.dmarc_reports import json_value, report_by_id, report_routes, report_scope
from mta.api.envelope import ok_all
from mta.reports import tls_received as received

__all__ = ["routes"]


async def days(request: Request) -> JSONResponse:
    db, domains, since, domain = await report_scope(request)
    reports = await received.report_list(db, since)
    return ok_all(json_value(received.daily_summary(reports, domain, domains)))


async def list_(request: Request) -> JSONResponse:
    db, domains, since, domain = await report_scope(request)
    if domain is not None:
        domains = domains & {domain}
    reports = await received.report_list(db, since)
    return ok_all([json_value(received.report_summary(r)) for r in reports
                   if received.visible(r, domains)])


async def get(request: Request) -> JSONResponse:
    return await report_by_id(request, received.report_detail, "TLS")


def routes() -> list[Route]:
    return report_routes("tls", days, list_, get)
