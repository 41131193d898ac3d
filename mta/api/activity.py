"""The activity log over HTTP: /accounts/{account_id}/email/activity[/groups].

The reference serves its activity log through GraphQL datasets (emailRoutingAdaptive,
emailSendingAdaptive and their `...Groups` aggregates, [Metrics and analytics]); it has
no REST path for them, so these two paths are ours, with the reference's envelope, its
page/per_page pagination and its field and dimension names:

| call                                          | answers                                 |
| --------------------------------------------- | --------------------------------------- |
| GET .../email/activity                        | events, newest first, page/per_page     |
| GET .../email/activity/groups?dimensions=...  | counts grouped by dimensions            |

Both take a time range `since` (inclusive) and `until` (exclusive), RFC 3339 or a date,
default the last 24 hours (the dashboard's default), and the same filters: `status`
(`Delivery failed`, `deliveryFailed` and `delivery_failed` are one status), `direction`
(inbound | outbound), `domain` (recipient's or sender's), `sending_domain`,
`recipient_domain`, `from`, `to`, `message_id` (our queue id from the 250 reply, or the
Message-ID header), `event_type`, `zone_id`, `rule_id`, `action`, `spf`, `dkim`, `dmarc`,
`arc`. The token needs `analytics:read` on the account (mta/api/auth.py). The queries
live in mta/observe/analytics.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.auth import require
from mta.api.envelope import api_error, isotime, ok, page_request, query_int
from mta.observe import analytics
from mta.observe.analytics import EventFilter

__all__ = ["DEFAULT_RANGE", "parse_time", "routes", "time_range"]

READ = "analytics:read"
DEFAULT_RANGE = timedelta(hours=24)
EVENTS_PER_PAGE = (50, 1, 1000)  # default, min, max
GROUPS_LIMIT = (1000, 1, 10000)  # the reference's examples ask for up to 10000 groups
MAX_DIMENSIONS = 8
DIRECTIONS = ("inbound", "outbound")
EVENT_TYPES = ("incoming", "forward", "reply", "newEmail")
_FILTERS = {  # query parameter -> EventFilter field
    "status": "status", "domain": "domain", "sending_domain": "sending_domain",
    "recipient_domain": "recipient_domain", "from": "mail_from", "to": "rcpt_to",
    "message_id": "message_id", "zone_id": "zone_id", "rule_id": "rule_id",
    "action": "action", "spf": "spf", "dkim": "dkim", "dmarc": "dmarc", "arc": "arc",
}


def parse_time(value: str, name: str) -> datetime:
    """An RFC 3339 time (UTC when it has no offset) or a date (its midnight, UTC)."""
    raw = value.strip()
    try:
        if len(raw) == 10:
            d = date.fromisoformat(raw)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        ts = datetime.fromisoformat(raw)
        return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise api_error("E_VALIDATION_ERROR", f"{name} must be an RFC 3339 time or a date "
                        "such as 2024-07-15T00:00:00Z", field=name) from None


def time_range(request: Request, now: datetime, *, until_names: tuple[str, ...] = ("until",)
               ) -> tuple[datetime, datetime]:
    q = request.query_params
    until_name = next((n for n in until_names if q.get(n)), None)
    until = parse_time(q[until_name], until_name) if until_name else now
    since = parse_time(q["since"], "since") if q.get("since") else until - DEFAULT_RANGE
    if since > until:
        raise api_error("E_VALIDATION_ERROR", "since must not be after until", field="since")
    return since, until


def newest_first(request: Request, name: str = "order") -> bool:
    order = request.query_params.get(name) or "desc"
    if order not in ("asc", "desc"):
        raise api_error("E_VALIDATION_ERROR", f"{name} must be asc or desc", field=name)
    return order == "desc"


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and value not in allowed:
        raise api_error("E_VALIDATION_ERROR", f"{name} must be one of {', '.join(allowed)}",
                        field=name)
    return value


async def _filter(request: Request) -> tuple[EventFilter, datetime, datetime]:
    account_id = request.path_params["account_id"]
    await require(request, READ, account_id=account_id)
    since, until = time_range(request, request.app.state.ctx.clock())
    f = EventFilter(since=since, until=until, account_id=account_id,
                    direction=_choice(request, "direction", DIRECTIONS),
                    event_type=_choice(request, "event_type", EVENT_TYPES))
    for param, attr in _FILTERS.items():
        value = request.query_params.get(param)
        if value:
            setattr(f, attr, value)
    return f, since, until


def _dimensions(request: Request) -> list[str]:
    raw = [part for value in request.query_params.getlist("dimensions")
           for part in value.split(",") if part.strip()]
    out: list[str] = []
    for name in raw:
        canonical = analytics.canonical_dimension(name)
        if canonical is None:
            raise api_error("E_VALIDATION_ERROR", f"unknown dimension {name!r}; known: "
                            + ", ".join(analytics.DIMENSIONS), field="dimensions")
        if canonical not in out:
            out.append(canonical)
    if len(out) > MAX_DIMENSIONS:
        raise api_error("E_VALIDATION_ERROR", f"at most {MAX_DIMENSIONS} dimensions",
                        field="dimensions")
    return out


async def list_events(request: Request) -> JSONResponse:
    f, since, until = await _filter(request)
    page = page_request(request, EVENTS_PER_PAGE)
    desc = newest_first(request)
    async with request.app.state.ctx.db.session() as s:
        rows, total = await analytics.list_events(s, f, offset=page.offset,
                                                  limit=page.per_page, newest_first=desc)
    info = {**page.info(len(rows), total), "since": isotime(since), "until": isotime(until)}
    return ok(rows, result_info=info)


async def event_groups(request: Request) -> JSONResponse:
    f, since, until = await _filter(request)
    dimensions = _dimensions(request)
    limit = query_int(request, "limit", *GROUPS_LIMIT)
    async with request.app.state.ctx.db.session() as s:
        groups, total = await analytics.aggregate(s, f, dimensions, limit=limit)
    info = {"count": len(groups), "limit": limit, "total_events": total,
            "dimensions": dimensions, "since": isotime(since), "until": isotime(until)}
    return ok(groups, result_info=info)


def routes() -> list[Route]:
    a = "/accounts/{account_id}/email/activity"
    return [Route(a, list_events, methods=["GET"]),
            Route(a + "/groups", event_groups, methods=["GET"])]
