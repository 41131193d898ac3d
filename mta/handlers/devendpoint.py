"""The local test endpoint of handlers, like the reference's
`POST /cdn-cgi/handler/email?from=A&to=B` ([Local development > Email routing]).

Registered only when `handlers.dev_endpoint.enabled` is true. The body is a raw RFC 5322
message, which must have a Message-ID (400 otherwise). The answer is the simulation
(`mta.handlers.simulate`): the rule matched, the actions (forwards with their headers,
replies with their MIME, rejection, errors and fallback) and the SMTP reply the sender
would get. Nothing is delivered. Optional `dmarc=` says which DMARC result to assume.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.config import Settings
from mta.handlers.simulate import SimulationError, simulate

__all__ = ["routes"]


async def _post(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    mail_from = request.query_params.get("from")
    rcpt_to = request.query_params.get("to")
    if not mail_from or not rcpt_to:
        return JSONResponse({"success": False, "error": "from and to are required "
                             "query parameters"}, status_code=400)
    raw = await request.body()
    try:
        result = await simulate(ctx.settings, ctx.db, mail_from=mail_from, rcpt_to=rcpt_to,
                                raw=raw, dmarc=request.query_params.get("dmarc", "pass"))
    except SimulationError as exc:
        return JSONResponse({"success": False, "error": str(exc)}, status_code=400)
    return JSONResponse({"success": True, "result": result})


def routes(settings: Settings) -> list[Route]:
    dev = settings.handlers.dev_endpoint
    if not dev.enabled:
        return []
    return [Route(dev.path, _post, methods=["POST"])]
