"""The HTTP API application. Resources register their routes here."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mta.api.wellknown import routes as wellknown_routes
from mta.handlers.devendpoint import routes as handler_dev_routes
from mta.observe.dbhealth import check_database

__all__ = ["build_app"]


def build_app(ctx, sending=None) -> Starlette:
    """`sending`: the node's SendingService; without it the send routes make their own
    on first use (tests that run the app alone)."""
    async def healthz(request: Request) -> JSONResponse:
        """Liveness plus each dependency's state, for load balancers and operators: 503
        naming what is down (only the database today) and why."""
        problem = await check_database(ctx.db)
        if problem:
            return JSONResponse({"status": "unavailable", "node": ctx.node_id,
                                 "down": ["database"], "database": problem},
                                status_code=503)
        return JSONResponse({"status": "ok", "node": ctx.node_id, "down": [],
                             "database": "up"})

    app = Starlette(routes=[Route("/healthz", healthz)])
    app.state.ctx = ctx
    if sending is not None:
        app.state.sending = sending
    from mta.api import admin, sending, verification

    admin.install(app)
    app.router.routes.extend(sending.routes())  # POST .../email/sending/send, send_raw
    app.router.routes.extend(verification.routes())  # /email/routing/verify?token= (POST verifies)
    app.router.routes.extend(wellknown_routes())  # GET /.well-known/mta-sts.txt
    app.router.routes.extend(handler_dev_routes(ctx.settings))  # issue 7, only when enabled
    return app
