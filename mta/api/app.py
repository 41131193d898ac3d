"""The HTTP API application. Resources register their routes here."""

from __future__ import annotations

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["build_app"]


def build_app(ctx) -> Starlette:
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
    return app
