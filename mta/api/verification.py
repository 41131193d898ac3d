"""The verification link: /email/routing/verify?token=... (no API token: the token in
the link is the credential).

GET only shows a page with a confirmation button: mail scanners and link previews fetch
links on their own, and must not verify an address for its owner. The button POSTs the
same URL, which verifies (`mta.routing.verification.verify`) and answers with a small
HTML page (200 verified, 404 invalid, 410 expired).
"""

from __future__ import annotations

import html
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from mta.routing.verification import VERIFY_PATH, VerificationError, VerificationExpired, verify

__all__ = ["routes"]


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (f"<!doctype html><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>")
    return HTMLResponse(body, status_code=status)


async def confirm_page(request: Request) -> HTMLResponse:
    token = request.query_params.get("token", "")
    if not token:
        return _page(400, "Missing token", "The link is incomplete.")
    action = f"{VERIFY_PATH}?{urlencode({'token': token})}"
    body = ("<!doctype html><title>Verify this address</title><h1>Verify this address</h1>"
            "<p>Confirm that Email Routing may forward mail to your address.</p>"
            f'<form method="post" action="{html.escape(action)}">'
            '<button type="submit">Verify my address</button></form>')
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


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
    return [Route(VERIFY_PATH, confirm_page, methods=["GET"]),
            Route(VERIFY_PATH, verify_link, methods=["POST"])]
