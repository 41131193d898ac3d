"""The verification link: GET /email/routing/verify?token=... (no API token: the token in
the link is the credential). What it does is `mta.routing.verification.verify`; this
module only answers with a small HTML page (200 verified, 404 invalid, 410 expired).
"""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from mta.routing.verification import VERIFY_PATH, VerificationError, VerificationExpired, verify

__all__ = ["routes"]


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (f"<!doctype html><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>")
    return HTMLResponse(body, status_code=status)


async def verify_link(request: Request) -> HTMLResponse:
    ctx = request.app.state.ctx
    token = request.query_params.get("token", "")
    if not token:
        return _page(400, "Missing token", "The link is incomplete.")
    try:
        async with ctx.db.session() as s:
            row = await verify(s, ctx.settings, token, ctx.clock(), "link")
            email = row.email
    except VerificationExpired as exc:
        return _page(410, "Link expired", str(exc))
    except VerificationError:
        return _page(404, "Invalid link", "This verification link is not valid.")
    return _page(200, "Address verified",
                 f"Email Routing may now forward mail to {email}.")


def routes() -> list[Route]:
    return [Route(VERIFY_PATH, verify_link, methods=["GET"])]
