"""Email Sending over HTTP: POST /accounts/{account_id}/email/sending/send and .../send_raw.

Request bodies as [REST API > Send an email] and sdk-contract.md: `send` takes
{from, to, cc, bcc, reply_to, subject, text, html, attachments, headers}; `send_raw` takes
{from, recipients, mime_message}. The answer is the reference's envelope with
`result: {delivered, permanent_bounces, queued, message_id, suppressed_recipients}`.
Errors are MtaErrors with their REST row (mta/errors.py); the token needs
`email_sending:send` on this account (mta/api/auth.py).

The handlers share one `SendingService` per app (`app.state.sending`), made on first use
unless the node (or a test) put one there.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.auth import require
from mta.api.envelope import API_PREFIX, api_error, json_body, ok
from mta.sending.service import SendingService

__all__ = ["routes", "sending_service"]

SEND = "email_sending:send"
_RAW_KEYS = {"from", "recipients", "mime_message"}


def sending_service(request: Request) -> SendingService:
    state = request.app.state
    service = getattr(state, "sending", None)
    if service is None:
        service = state.sending = SendingService(state.ctx)
    return service


async def _body(request: Request) -> dict:
    if request.headers.get("content-length") is None and \
            "chunked" not in request.headers.get("transfer-encoding", "").lower():
        raise api_error("E_NO_CONTENT_LENGTH", "the request needs a Content-Length header")
    body = await json_body(request)
    if not body:
        raise api_error("E_VALIDATION_ERROR", "the request body is empty")
    return body


async def send(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, SEND, account_id=account_id)
    body = await _body(request)
    result = await sending_service(request).send(account_id, body, source="api")
    return ok(result.to_api())


async def send_raw(request: Request) -> JSONResponse:
    account_id = request.path_params["account_id"]
    await require(request, SEND, account_id=account_id)
    body = await _body(request)
    unknown = sorted(set(body) - _RAW_KEYS)
    if unknown:
        raise api_error("E_VALIDATION_ERROR", f"Unknown field '{unknown[0]}'.", field=unknown[0])
    for key in sorted(_RAW_KEYS):
        if body.get(key) is None:
            raise api_error("E_FIELD_MISSING", f"'{key}' is required.", field=key)
    sender, recipients, mime = body["from"], body["recipients"], body["mime_message"]
    if isinstance(sender, dict):  # tolerate {address, name} as in send
        sender = sender.get("address") or sender.get("email")
    if not isinstance(sender, str):
        raise api_error("E_VALIDATION_ERROR", "'from' must be an address string.",
                        field="from")
    if isinstance(recipients, str):
        recipients = [recipients]
    if not isinstance(recipients, list):
        raise api_error("E_VALIDATION_ERROR", "'recipients' must be a list of addresses.",
                        field="recipients")
    if not isinstance(mime, str):
        raise api_error("E_VALIDATION_ERROR", "'mime_message' must be a string.",
                        field="mime_message")
    result = await sending_service(request).send_raw(account_id, sender, recipients,
                                                     mime.encode("utf-8"), source="api")
    return ok(result.to_api())


def routes() -> list[Route]:
    base = API_PREFIX + "/accounts/{account_id}/email/sending"
    return [Route(base + "/send", send, methods=["POST"]),
            Route(base + "/send_raw", send_raw, methods=["POST"])]
