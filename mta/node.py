"""One node: every listener and worker of `mta serve` in one asyncio event loop.

Start-up order: database (embedded cluster when no URL is configured) -> migrations
-> DNS resolver -> services (listeners and workers). Shutdown runs the other way:
stop accepting, let in-flight work finish, close the database, stop the embedded
cluster. SIGTERM/SIGINT shut down; SIGHUP reloads what is safe to change in place — log
level and format, the email handlers, the SMTP listeners' certificates and their
cached routing rules — without closing a connection. The service manager hears
READY=1 once every listener is up, RELOADING=1 / READY=1 around a reload, STOPPING=1
and watchdog pings (`mta.sdnotify`).

With `mta serve --workers N` (N > 1) this class runs in each of N worker processes
under `mta.supervisor` (`WorkerRole`): the supervisor owns the embedded cluster, the
migrations and the metrics listener; every worker binds the MX, submission and HTTP
listeners with SO_REUSEPORT; only worker 0 runs the once-per-node jobs (retention,
queue depth sampling); the node's limits are shared out between the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from mta.config import Settings
from mta.config_load import load_settings
from mta.dnscache import DnsResolver
from mta.handlers.loader import reload_handlers
from mta.logsetup import setup_logging
from mta.sdnotify import Notifier
from mta.store.cluster import ClusterLease, own_cluster, use_cluster
from mta.store.db import Database
from mta.store.embedded import EmbeddedPostgres
from mta.store.migrate import upgrade

if TYPE_CHECKING:
    from mta.routing.inbound import InboundRouter

log = logging.getLogger("mta.node")

__all__ = ["Node", "NodeContext", "Service", "WorkerRole", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class WorkerRole:
    """This process is worker `index` of `count` under the supervisor."""

    index: int
    count: int

    @property
    def runs_node_jobs(self) -> bool:
        """Jobs that must run once per node (retention, queue sampling) run here."""
        return self.index == 0


def share_limits(settings: Settings, role: WorkerRole) -> None:
    """A node's configured bounds hold for the node, not for each of its processes:
    give each worker its share (rounded up). Per-IP session limits stay per process,
    since the kernel spreads one client's connections over the workers unevenly. A 0
    stays 0 in every process: `delivery.workers: 0` is a node that does not deliver,
    `limits.max_sessions: 0` one without a session bound."""
    def share(n: int, floor: int = 1) -> int:
        if n <= 0:
            return n
        return max(floor, math.ceil(n / role.count))

    settings.delivery.workers = share(settings.delivery.workers)
    settings.delivery.per_domain_sessions = share(settings.delivery.per_domain_sessions)
    settings.limits.max_sessions = share(settings.limits.max_sessions)
    settings.database.pool_size = share(settings.database.pool_size, floor=2)


@dataclass
class NodeContext:
    """What every service of a node shares."""

    settings: Settings
    db: Database
    resolver: DnsResolver
    node_id: str
    clock: Callable[[], datetime] = field(default=utcnow)


def inbound_router(ctx: NodeContext, pool: Any = None) -> InboundRouter:
    """The MX's inbound pipeline with the handler runner wired in (the runner sits above
    routing: its forward() and reply() go through the router); `pool`: the node's outbound
    connections. Raises when a configured handler cannot be loaded, so a node fails at
    start."""
    from mta.handlers.runner import HandlerRunner
    from mta.routing.inbound import InboundRouter

    router = InboundRouter(ctx.settings, ctx.db, ctx.resolver, clock=ctx.clock, pool=pool)
    router.handlers = HandlerRunner(router, ctx.resolver)
    return router


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


def ready_summary(services: list[dict], database: dict) -> str:
    """The ready line's text, so a terminal (text logs) sees what JSON logs carry:
    every listener and the database."""
    listeners = [f"{d['listener']} {d['address']}:{d['port']}{' (tls)' if d.get('tls') else ''}"
                 for d in services if "listener" in d]
    where = database.get("data_dir") or database.get("url")
    return f"{', '.join(listeners) or 'no listeners'}; database {database['kind']} {where}"


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


def build_services(ctx: NodeContext, role: WorkerRole | None = None) -> list[Service]:
    """Every service this node (or this worker of it) runs, in start order (they stop
    in reverse)."""
    from mta.api.server import HttpListener, MetricsListener
    from mta.observe.dbhealth import DatabaseProbe
    from mta.observe.retention import RetentionJob
    from mta.queue.delivery import DeliveryWorkers
    from mta.queue.pool import ConnectionPool
    from mta.queue.remote import remote_delivery_from_settings

    listeners = ctx.settings.listeners
    node_jobs = role is None or role.runs_node_jobs
    services: list[Service] = []
    if listeners.metrics.enabled and role is None:  # else the supervisor serves them
        services.append(MetricsListener(ctx))
    services.append(DatabaseProbe(ctx))  # mta_database_up, and the log says when it changes
    if node_jobs:
        services.append(RetentionJob(ctx))  # activity/message retention (observe.*)
        # One webhook sender per node, a task of its own beside the mail paths.
        from mta.webhooks.sender import WebhookSender

        services.append(WebhookSender(ctx))
        if ctx.settings.tls_reports.send:
            from mta.reports.tlsrpt_job import TlsReportJob
            from mta.routing.forward import forwarding_signer

            # RFC 8460 daily reports, once across nodes
            services.append(TlsReportJob(ctx, sign=forwarding_signer(ctx.db, ctx.settings)))
    # One pool of outbound SMTP connections for the queue and in-session forwards.
    pool = ConnectionPool()
    workers = DeliveryWorkers(
        ctx, remote_delivery_from_settings(ctx.settings, ctx.resolver, pool=pool),
        sample_stats=node_jobs)
    sending = _SendingPipeline(ctx, workers)
    services += [workers, sending]
    if ctx.settings.tls_reports.enabled:
        # Every process counts its own outbound sessions (RFC 8460) and writes them.
        from mta.queue.tlsrpt import TlsSessionRecorder

        services.append(TlsSessionRecorder(ctx))
    if node_jobs and ctx.settings.dmarc_reports.enabled:
        # Daily DMARC aggregate reports, queued through the node's sending pipeline;
        # once per day across nodes (a claimed row), so every node may run it.
        from mta.reports.dmarc_send import DmarcReportJob

        services.append(DmarcReportJob(ctx, sending.service))
    if listeners.http.enabled:
        services.append(HttpListener(ctx, sending=sending.service))
    if listeners.mx.enabled:
        from mta.smtp.mx import MxServer

        services.append(MxServer(ctx, router=inbound_router(ctx, pool=pool)))
    if listeners.submission.enabled or listeners.submission_starttls.enabled:
        from mta.smtp.submission import submission_services

        services.extend(submission_services(ctx, sending=sending.service))
    return services


class Node:
    def __init__(self, settings: Settings, config_path: str | None = None,
                 role: WorkerRole | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.role = role
        self.node_id = settings.node.node_id or f"{settings.node.hostname}:{os.getpid()}"
        if role is not None:
            share_limits(settings, role)
            if settings.node.node_id:  # lease owners must differ between processes
                self.node_id = f"{settings.node.node_id}/{role.index}"
        # Under systemd: the unit's manager; under the supervisor: the supervisor.
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self.services: list[Service] = []
        self.embedded: ClusterLease | None = None
        self.db: Database | None = None

    @property
    def _prefix(self) -> str:
        return "node" if self.role is None else "worker"

    def _identity(self) -> dict:
        if self.role is None:
            return {"node_id": self.node_id}
        return {"node_id": self.node_id, "worker": self.role.index}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            await self._start()
            self.notifier.ready()
            async with self.notifier.keepalive():
                await self._stop.wait()
        finally:
            await self._shutdown()
            self.notifier.close()

    def _request_stop(self, sig: int) -> None:
        if not self._stop.is_set():
            self.notifier.stopping()
        log.info("shutdown requested", extra={"event": f"{self._prefix}.stopping",
                                              "signal": signal.Signals(sig).name,
                                              **self._identity()})
        self._stop.set()

    def _reload(self) -> None:
        if not self.config_path:
            return
        self.notifier.reloading()
        try:
            fresh = load_settings(self.config_path)
        except Exception as exc:  # a bad edit must not take the node down
            log.error("reload failed, keeping the running settings: %s", exc,
                      extra={"event": "node.reload_failed"})
            self.notifier.ready()
            return
        setup_logging(fresh.logging.level, fresh.logging.format)
        self.settings.logging = fresh.logging
        reload_handlers(self.settings, fresh)  # issue 7: re-import the email handlers
        for service in self.services:  # certificates, cached routing rules
            reload = getattr(service, "reload", None)
            if reload is not None:
                reload(fresh)
        log.info("settings reloaded", extra={"event": "node.reloaded", **self._identity()})
        self.notifier.ready()

    async def _forwarding_key(self) -> None:
        """The forwarding DKIM key exists from the start, not from the first forward."""
        from mta.routing.forward import ensure_forwarding_key

        try:
            await ensure_forwarding_key(self.db, self.settings)
        except Exception as exc:  # forwarding fails later with the same cause, not start
            log.error("no DKIM key for forwarded mail: %s", exc,
                      extra={"event": "node.forwarding_key_failed"})

    async def _start(self) -> None:
        s = self.settings
        # A worker gets the supervisor's URL ($MTA_DATABASE_URL): it owns no cluster.
        url, self.embedded = await asyncio.to_thread(database_url, s, owner=True)
        if self.role is None:  # the supervisor migrated before it started workers
            await asyncio.to_thread(upgrade, url)
        self.db = Database(url, pool_size=s.database.pool_size,
                           connect_timeout=s.database.connect_timeout)
        if self.role is None or self.role.index == 0:
            await self._forwarding_key()
        ctx = NodeContext(settings=s, db=self.db, resolver=DnsResolver.from_settings(s.dns),
                          node_id=self.node_id)
        for service in build_services(ctx, self.role):
            await service.start()
            self.services.append(service)
        database = describe_database(url, self.embedded)
        services = [svc.describe() for svc in self.services]
        log.info(f"{self._prefix} ready: %s", ready_summary(services, database), extra={
            "event": f"{self._prefix}.ready", **self._identity(),
            "hostname": s.node.hostname, "database": database, "services": services})

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
        log.info(f"{self._prefix} stopped", extra={"event": f"{self._prefix}.stopped",
                                                    **self._identity()})


def event_loop_runner():
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run


def run_node(settings: Settings, config_path: str | None = None,
             role: WorkerRole | None = None) -> None:
    setup_logging(settings.logging.level, settings.logging.format)
    socket.setdefaulttimeout(None)
    with contextlib.suppress(KeyboardInterrupt):
        event_loop_runner()(Node(settings, config_path, role).run())
