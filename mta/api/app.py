"""The HTTP API application. Resources register their routes here."""

from __future__ import annotations

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.wellknown import routes as wellknown_routes
from mta.handlers.devendpoint import routes as handler_dev_routes

__all__ = ["build_app"]


def build_app(ctx, sending=None) -> Starlette:
    """`sending`: the node's SendingService; without it the send routes make their own
    on first use (tests that run the app alone)."""
    async def healthz(request: Request) -> JSONResponse:
        """Liveness plus database reachability, for load balancers and systemd checks."""
        try:
            async with ctx.db.session() as s:
                await s.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)[:200]},
                                status_code=503)
        return JSONResponse({"status": "ok", "node": ctx.node_id})

    app = Starlette(routes=[Route("/healthz", healthz)])
    app.state.ctx = ctx
    if sending is not None:
        app.state.sending = sending
    from mta.api import admin, sending, verification

    admin.install(app)
    app.router.routes.extend(sending.routes())  # POST .../email/sending/send, send_raw
    app.router.routes.extend(verification.routes())  # GET /email/routing/verify?token=
    app.router.routes.extend(wellknown_routes())  # GET /.well-known/mta-sts.txt
    app.router.routes.extend(handler_dev_routes(ctx.settings))  # issue 7, only when enabled
    return app
