"""HTTP listeners run inside the node's event loop through uvicorn: the API listener
and the separate Prometheus metrics listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from prometheus_client import make_asgi_app

from mta.config import Listener

log = logging.getLogger("mta.api")

__all__ = ["HttpListener", "MetricsListener"]


class _UvicornService:
    name = "http"

    def __init__(self, listener: Listener, app) -> None:
        self.listener = listener
        ssl = {}
        if listener.tls_cert:
            ssl = {"ssl_certfile": listener.tls_cert, "ssl_keyfile": listener.tls_key}
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=listener.address, port=listener.port, log_config=None,
            access_log=False, lifespan="off", server_header=False, **ssl))
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        # uvicorn captures SIGINT/SIGTERM inside serve() and re-raises them when it
        # exits; the node owns signals and stops listeners itself, in order.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task = asyncio.create_task(self.server.serve(), name=f"{self.name}-listener")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # re-raise the bind error
                raise RuntimeError(f"{self.name} listener stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        await self._task
        self._task = None

    def describe(self) -> dict:
        return {"listener": self.name, "address": self.listener.address,
                "port": self.listener.port, "tls": bool(self.listener.tls_cert)}


class HttpListener(_UvicornService):
    """The HTTP API (admin, sending, well-known)."""

    name = "http"

    def __init__(self, ctx, sending=None) -> None:
        from mta.api.app import build_app

        super().__init__(ctx.settings.listeners.http, build_app(ctx, sending=sending))


class MetricsListener(_UvicornService):
    """Prometheus exposition on its own address, so it can stay private."""

    name = "metrics"

    def __init__(self, ctx) -> None:
        super().__init__(ctx.settings.listeners.metrics, make_asgi_app())
