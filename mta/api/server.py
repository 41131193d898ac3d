"""HTTP listeners run inside the node's event loop through uvicorn: the API listener
and the separate Prometheus metrics listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys

import uvicorn
from prometheus_client import make_asgi_app

from mta.config import Listener

log = logging.getLogger("mta.api")

__all__ = ["HttpListener", "MetricsListener"]


def _shared_socket(address: str, port: int) -> socket.socket:
    """A listening socket other processes of this node may bind too (SO_REUSEPORT):
    the kernel spreads connections over the workers."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sys.platform.startswith("linux"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _UvicornService:
    name = "http"
    shared = False  # bind with SO_REUSEPORT (listeners every worker process serves)

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
        sockets = ([_shared_socket(self.listener.address, self.listener.port)]
                   if self.shared else None)
        self._task = asyncio.create_task(self.server.serve(sockets),
                                         name=f"{self.name}-listener")
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
    shared = True

    def __init__(self, ctx, sending=None) -> None:
        from mta.api.app import build_app

        super().__init__(ctx.settings.listeners.http, build_app(ctx, sending=sending))


class MetricsListener(_UvicornService):
    """Prometheus exposition on its own address, so it can stay private."""

    name = "metrics"

    def __init__(self, ctx, registry=None) -> None:
        from prometheus_client import REGISTRY

        super().__init__(ctx.settings.listeners.metrics, make_asgi_app(registry or REGISTRY))
