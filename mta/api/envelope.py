"""The reference API's response envelope, request-body parsing and list pagination.

Every response under /client/v4 is `{success, errors, messages, result, result_info?}`.
Errors are `MtaError`s (mta/errors.py holds every code and its REST row); the handlers
installed by `install_error_handlers` turn them, unknown routes and unexpected exceptions
into that envelope with the reference's HTTP status and numeric code. An unexpected
exception never shows internal text: it is logged and answered 500/10002.

Request bodies are JSON objects. The official SDK sends `Content-Type: application/json`
with an empty body for calls without one, so an empty body reads as `{}`. A body that is
not JSON, or not an object, is the reference's validation error (400/10001).

Pagination: page/per_page lists (`V4PagePaginationArray` in the SDK) take `page` and
`per_page` as numbers (the SDK sends floats such as `2.0`), answer a page past the end
with 200 and an empty `result` (the SDK stops iterating only on an empty page), and
report `result_info {page, per_page, count, total_count, total_pages}`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mta.errors import MtaError, rest_error_body
from mta.store.db import DatabaseUnavailable, is_unavailable
from mta.text import is_utf8

__all__ = [
    "API_PREFIX",
    "PageRequest",
    "api_error",
    "error_response",
    "install_error_handlers",
    "isotime",
    "json_body",
    "ok",
    "crud_routes",
    "ok_all",
    "page_of",
    "page_request",
    "query_bool",
    "query_int",
    "body_bool",
    "body_int",
    "body_list",
    "body_str",
]

Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger("mta.api")

API_PREFIX = "/client/v4"

# Retry-After of a 503 (database unreachable): an embedded cluster is back within
# seconds, a failover of a managed database takes tens of seconds; clients back off.
RETRY_AFTER_SECONDS = 5

# [per_page] of the reference's rules and addresses lists: default 20, between 5 and 50.
PER_PAGE_DEFAULT = 20
PER_PAGE_MIN = 5
PER_PAGE_MAX = 50


def isotime(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, as the reference writes timestamps."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ok(result: Any = None, *, result_info: dict | None = None, status: int = 200) -> JSONResponse:
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return JSONResponse(body, status_code=status)


def ok_all(result: list) -> JSONResponse:
    """A list the API never pages: all of it, as page 1 of 1."""
    return ok(result, result_info={"page": 1, "per_page": max(len(result), 1),
                                   "count": len(result), "total_count": len(result),
                                   "total_pages": 1})


def api_error(code: str, message: str | None = None, *, field: str | None = None) -> MtaError:
    """Shorthand for the errors the admin API raises (all codes live in mta/errors.py)."""
    return MtaError(code, message, field=field)


def api_area(path: str) -> str:
    """Which area of the API a path belongs to, for its error strings."""
    return "routing" if "/email/routing" in path else "sending"


def error_response(err: MtaError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if err.http_status == 503 else None
    return JSONResponse(rest_error_body(err, api_area(path)), status_code=err.http_status,
                        headers=headers)


# --- request bodies ----------------------------------------------------------------------


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise api_error("E_VALIDATION_ERROR", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise api_error("E_VALIDATION_ERROR", "request body must be a JSON object")
    _check_text(data)
    return data


def _check_text(value: Any) -> None:
    """PostgreSQL text holds neither NUL nor lone surrogates (`"\\ud800"` is valid JSON):
    refuse them here as a validation error instead of failing in the database."""
    if isinstance(value, str):
        if "\x00" in value or not value.isascii() and not is_utf8(value):
            raise api_error("E_VALIDATION_ERROR",
                            "strings must not contain NUL or unpaired surrogate characters")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check_text(v)
    elif isinstance(value, list):
        for v in value:
            _check_text(v)


_MISSING = object()


def _get(body: dict, name: str, required: bool) -> Any:
    value = body.get(name, _MISSING)
    if value is _MISSING or (value is None and required):
        if required:
            raise api_error("E_FIELD_MISSING", f"{name} is required", field=name)
        return _MISSING
    return value


def body_str(body: dict, name: str, *, required: bool = False, default: str | None = None,
             max_len: int | None = None, allow_null: bool = False) -> str | None:
    value = _get(body, name, required)
    if value is _MISSING:
        return default
    if value is None and allow_null:
        return None
    if not isinstance(value, str):
        raise api_error("E_VALIDATION_ERROR", f"{name} must be a string", field=name)
    if max_len is not None and len(value) > max_len:
        raise api_error("E_VALIDATION_ERROR", f"{name} is longer than {max_len} characters",
                        field=name)
    return value


def _typed(body: dict, name: str, kind: type, what: str, required: bool, default: Any) -> Any:
    """The field `name` when it is a `kind` ("must be `what`" otherwise), `default` when
    absent."""
    value = _get(body, name, required)
    if value is _MISSING:
        return default
    if not isinstance(value, kind):
        raise api_error("E_VALIDATION_ERROR", f"{name} must be {what}", field=name)
    return value


def body_bool(body: dict, name: str, *, default: bool | None = None) -> bool | None:
    return _typed(body, name, bool, "true or false", False, default)


def body_int(body: dict, name: str, *, default: int | None = None, minimum: int = 0,
             maximum: int = 2**31 - 1) -> int | None:
    """A whole number; the SDK types numbers as floats, so 3.0 is accepted as 3."""
    value = _get(body, name, False)
    if value is _MISSING:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not value.is_integer()):
        raise api_error("E_VALIDATION_ERROR", f"{name} must be a whole number", field=name)
    if not minimum <= value <= maximum:
        raise api_error("E_VALIDATION_ERROR", f"{name} must be between {minimum} and {maximum}",
                        field=name)
    return int(value)


def body_list(body: dict, name: str, *, required: bool = False) -> list | None:
    return _typed(body, name, list, "a list", required, None)


# --- query strings -----------------------------------------------------------------------


def query_bool(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise api_error("E_VALIDATION_ERROR", f"{name} must be true or false", field=name)


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """A whole number from the query string (`2.0` is 2), `default` when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value.is_integer() or not lo <= value <= hi:
        raise api_error("E_VALIDATION_ERROR",
                        f"{name} must be a whole number between {lo} and {hi}", field=name)
    return int(value)


@dataclass(frozen=True)
class PageRequest:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def info(self, count: int, total: int) -> dict[str, int]:
        return {"page": self.page, "per_page": self.per_page, "count": count,
                "total_count": total, "total_pages": math.ceil(total / self.per_page)}


async def page_of(session: AsyncSession, query: Select, page: PageRequest) -> tuple[list, int]:
    """One page of `query`'s rows (ordered by the caller) and how many rows it has in all:
    the paginated list of every admin resource."""
    total = (await session.execute(
        select(func.count()).select_from(query.order_by(None).subquery()))).scalar_one()
    rows = list((await session.execute(query.offset(page.offset).limit(page.per_page))).all())
    return rows, total


def page_request(request: Request, bounds: tuple[int, int, int] = (
        PER_PAGE_DEFAULT, PER_PAGE_MIN, PER_PAGE_MAX)) -> PageRequest:
    """`page` and `per_page` from the query string; `bounds` is per_page's (default,
    minimum, maximum)."""
    default, lo, hi = bounds
    return PageRequest(page=query_int(request, "page", 1, 1, 2**31 - 1),
                       per_page=query_int(request, "per_page", default, lo, hi))


def crud_routes(path: str, item: str, *, list_: Endpoint, create: Endpoint, get: Endpoint,
                edit: Endpoint, delete: Endpoint, edit_method: str = "PATCH") -> list[Route]:
    """The five routes of a collection resource: GET and POST on `path`, GET, `edit_method`
    and DELETE on `path` + `item` (e.g. "/{rule_id}")."""
    return [Route(path, list_, methods=["GET"]), Route(path, create, methods=["POST"]),
            Route(path + item, get, methods=["GET"]),
            Route(path + item, edit, methods=[edit_method]),
            Route(path + item, delete, methods=["DELETE"])]


# --- error handlers ------------------------------------------------------------------------


def install_error_handlers(app) -> None:
    """MtaError -> its REST row; unknown route or method under /client/v4 -> the envelope;
    the database unreachable -> 503 with Retry-After (the client's retry will do);
    anything else -> 500/10002 without internal text (the traceback goes to the log)."""

    async def on_mta_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MtaError)
        return error_response(exc, request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not request.url.path.startswith(API_PREFIX + "/"):
            return PlainTextResponse(str(exc.detail), status_code=exc.status_code,
                                     headers=exc.headers)
        if exc.status_code == 404:
            return error_response(api_error("E_NOT_FOUND", "no such API endpoint"),
                                  request.url.path)
        body = rest_error_body(api_error("E_VALIDATION_ERROR", str(exc.detail)),
                               api_area(request.url.path))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_database_error(request: Request, exc: Exception) -> Response:
        # A NUL (or an untranslatable character) in a query parameter reaches PostgreSQL
        # as text it refuses (SQLSTATE 22021 / 22P05): the client's error, not ours.
        if getattr(getattr(exc, "orig", None), "sqlstate", None) in ("22021", "22P05"):
            return error_response(api_error("E_VALIDATION_ERROR", "parameters must not "
                                            "contain NUL characters"), request.url.path)
        return await on_unexpected(request, exc)

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("database unavailable in %s %s: %s", request.method, request.url.path,
                    exc, extra={"event": "api.database_unavailable"})
        return error_response(api_error("E_TEMPORARILY_UNAVAILABLE"), request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        if is_unavailable(exc):
            return await on_unavailable(request, exc)
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc,
                  extra={"event": "api.error"})
        return error_response(api_error("E_INTERNAL_SERVER_ERROR"), request.url.path)

    app.add_exception_handler(MtaError, on_mta_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(DBAPIError, on_database_error)
    app.add_exception_handler(DatabaseUnavailable, on_unavailable)
    app.add_exception_handler(PoolTimeout, on_unavailable)
    app.add_exception_handler(Exception, on_unexpected)
