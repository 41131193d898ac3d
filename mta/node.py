"""One node: every listener and worker of `mta serve` in one asyncio event loop.

Start-up order: database (embedded cluster when no URL is configured) -> migrations
-> DNS resolver -> services (listeners and workers). Shutdown runs the other way:
stop accepting, let in-flight work finish, close the database, stop the embedded
cluster. SIGTERM/SIGINT shut down; SIGHUP reloads the settings that are safe to
change in place (log level and format).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from mta.config import Settings, load_settings
from mta.dnscache import DnsResolver
from mta.handlers.loader import reload_handlers
from mta.logsetup import setup_logging
from mta.store.cluster import ClusterLease, own_cluster, use_cluster
from mta.store.db import Database
from mta.store.embedded import EmbeddedPostgres
from mta.store.migrate import upgrade

log = logging.getLogger("mta.node")

__all__ = ["Node", "NodeContext", "Service", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict: ...


@dataclass
class NodeContext:
    """What every service of a node shares."""

    settings: Settings
    db: Database
    resolver: DnsResolver
    node_id: str
    clock: Callable[[], datetime] = field(default=utcnow)


def embedded_cluster(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.state_path / "postgres", database="mta")


def database_url(settings: Settings, *, owner: bool = False
                 ) -> tuple[str, ClusterLease | None]:
    """The configured URL, or the embedded cluster's URL and our lease on it: the node
    (`owner`) owns the cluster; a command uses one that is running without touching its
    life, or runs its own. Call `release()` on the lease when done (mta/store/cluster.py)."""
    if settings.database.url:
        return settings.database.url, None
    cluster = embedded_cluster(settings)
    lease = own_cluster(cluster) if owner else use_cluster(cluster)
    return lease.url(), lease


def describe_database(url: str, embedded: ClusterLease | None) -> dict:
    if embedded is not None:
        return {"kind": "embedded", "data_dir": str(embedded.cluster.data_dir),
                "socket": embedded.cluster.socket_path}
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return {"kind": "external", "url": u.render_as_string(hide_password=True)}


class _SendingPipeline:
    """Holds the node's one SendingService so shutdown waits for its in-flight
    immediate delivery attempts (it stops after the front doors, before the workers)."""

    name = "sending"

    def __init__(self, ctx: NodeContext, workers) -> None:
        from mta.sending.service import SendingService

        self.service = SendingService(ctx, workers=workers)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.service.close()

    def describe(self) -> dict:
        return {"service": self.name}


def build_services(ctx: NodeContext) -> list[Service]:
    """Every service this node runs, in start order (they stop in reverse)."""
    from mta.api.server import HttpListener, MetricsListener
    from mta.observe.retention import RetentionJob
    from mta.queue.delivery import DeliveryWorkers

    listeners = ctx.settings.listeners
    services: list[Service] = []
    if listeners.metrics.enabled:
        services.append(MetricsListener(ctx))
    services.append(RetentionJob(ctx))  # activity/message retention (observe.*)
    workers = DeliveryWorkers(ctx)
    sending = _SendingPipeline(ctx, workers)
    services += [workers, sending]
    if listeners.http.enabled:
        services.append(HttpListener(ctx, sending=sending.service))
    if listeners.mx.enabled:
        from mta.routing.inbound import InboundRouter
        from mta.smtp.mx import MxServer

        router = InboundRouter(ctx.settings, ctx.db, ctx.resolver, clock=ctx.clock)
        services.append(MxServer(ctx, router=router))
    if listeners.submission.enabled or listeners.submission_starttls.enabled:
        from mta.smtp.submission import submission_services

        services.extend(submission_services(ctx, sending=sending.service))
    return services


class Node:
    def __init__(self, settings: Settings, config_path: str | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.node_id = settings.node.node_id or f"{settings.node.hostname}:{os.getpid()}"
        self._stop = asyncio.Event()
        self.services: list[Service] = []
        self.embedded: ClusterLease | None = None
        self.db: Database | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            await self._start()
            await self._stop.wait()
        finally:
            await self._shutdown()

    def _request_stop(self, sig: int) -> None:
        log.info("shutdown requested", extra={"event": "node.stopping",
                                              "signal": signal.Signals(sig).name})
        self._stop.set()

    def _reload(self) -> None:
        if not self.config_path:
            return
        try:
            fresh = load_settings(self.config_path)
        except Exception as exc:  # a bad edit must not take the node down
            log.error("reload failed, keeping the running settings: %s", exc,
                      extra={"event": "node.reload_failed"})
            return
        setup_logging(fresh.logging.level, fresh.logging.format)
        self.settings.logging = fresh.logging
        reload_handlers(self.settings, fresh)  # issue 7: re-import the email handlers
        log.info("settings reloaded", extra={"event": "node.reloaded"})

    async def _start(self) -> None:
        s = self.settings
        url, self.embedded = await asyncio.to_thread(database_url, s, owner=True)
        await asyncio.to_thread(upgrade, url)
        self.db = Database(url, pool_size=s.database.pool_size,
                           connect_timeout=s.database.connect_timeout)
        ctx = NodeContext(settings=s, db=self.db, resolver=DnsResolver.from_settings(s.dns),
                          node_id=self.node_id)
        for service in build_services(ctx):
            await service.start()
            self.services.append(service)
        log.info("node ready", extra={
            "event": "node.ready", "node_id": self.node_id, "hostname": s.node.hostname,
            "database": describe_database(url, self.embedded),
            "services": [svc.describe() for svc in self.services]})

    async def _shutdown(self) -> None:
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("error stopping %s", service.name)
        self.services.clear()
        if self.db is not None:
            await self.db.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.release)
        log.info("node stopped", extra={"event": "node.stopped", "node_id": self.node_id})


def run_node(settings: Settings, config_path: str | None = None) -> None:
    setup_logging(settings.logging.level, settings.logging.format)
    socket.setdefaulttimeout(None)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    runner(Node(settings, config_path).run())
