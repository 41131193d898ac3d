"""`mta serve --workers N`: one supervisor process and N worker processes.

Job: run one node as several processes so it uses every core. The supervisor
- owns what exists once per node: the embedded PostgreSQL cluster (`own_cluster`, see
  mta/store/cluster.py: started, adopted and stopped here only; workers get its URL and
  never touch its life), the migrations (run once,
  before any worker starts), and the metrics listener (it serves the sum of the
  workers' samples, prometheus_client's multiprocess mode);
- starts N workers (`mta serve --worker-index I`), each a `mta.node.Node` with its own
  event loop binding the MX, submission and HTTP listeners with SO_REUSEPORT; worker 0
  also runs the once-per-node jobs;
- replaces a worker that dies (with a growing delay if it keeps dying at start-up);
- forwards SIGTERM/SIGINT/SIGHUP to the workers and exits 0 after a graceful stop;
- speaks to systemd (`mta.sdnotify`): READY=1 once every worker has said READY=1 (all
  listeners up), RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1, watchdog pings.

Workers report to the supervisor with the same notification protocol, over a datagram
socket in a private directory; the kernel tells us which process sent each datagram
(SO_PASSCRED), so only our own workers are heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mta.config import Settings
from mta.config_load import load_settings
from mta.logsetup import setup_logging
from mta.node import database_url, describe_database, event_loop_runner, ready_summary
from mta.sdnotify import Notifier, parse_fields
from mta.store.cluster import ClusterLease
from mta.store.migrate import upgrade

__all__ = ["Supervisor", "bind_to_supervisor", "default_workers", "run_supervisor"]

log = logging.getLogger("mta.supervisor")

STOP_TIMEOUT = 60.0  # a worker still running this long after SIGTERM is killed
READY_TIMEOUT = 120.0  # for every worker's READY=1 at start-up
RELOAD_TIMEOUT = 30.0
RESTART_DELAY = (0.5, 30.0)  # first and longest delay before replacing a dead worker
QUICK_DEATH = 10.0  # a worker dying sooner than this after its start counts as a crash loop


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def bind_to_supervisor() -> None:
    """In a worker: get SIGTERM when the supervisor dies, even by SIGKILL
    (PR_SET_PDEATHSIG), so no orphan keeps serving on the shared ports."""
    parent = os.getppid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent or parent == 1:  # it died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    def __init__(self, settings: Settings, config_path: str, workers: int) -> None:
        self.settings = settings
        self.config_path = config_path
        self.count = workers
        self.notifier = Notifier()
        self.workers = [_Worker(i) for i in range(workers)]
        self.embedded: ClusterLease | None = None
        self.url: str | None = None
        self.run_dir: Path | None = None
        self._inbox: socket.socket | None = None
        self._stopping = False
        self._serving = False  # every worker was ready once: from now on, replace the dead
        self._stop = asyncio.Event()
        self._watchers: list[asyncio.Task] = []
        self._metrics = None
        self.exit_code = 0

    # -- life -------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload()))
        try:
            if await self._start():
                self.notifier.ready(f"{self.count} workers")
                async with self.notifier.keepalive():
                    await self._stop.wait()
        finally:
            await self._shutdown()
        return self.exit_code

    async def _start(self) -> bool:
        s = self.settings
        self.url, self.embedded = await asyncio.to_thread(database_url, s, owner=True)
        await asyncio.to_thread(upgrade, self.url)
        self.run_dir = Path(tempfile.mkdtemp(prefix="mta-supervisor-"))
        (self.run_dir / "metrics").mkdir()
        self._open_inbox()
        if s.listeners.metrics.enabled:
            from mta.api.server import MetricsListener
            from mta.observe.metrics import exposition_registry

            self._metrics = MetricsListener(
                self, exposition_registry(str(self.run_dir / "metrics")))
            await self._metrics.start()
        for w in self.workers:
            await self._spawn(w)
        self._watchers = [asyncio.create_task(self._watch(w), name=f"watch-{w.index}")
                          for w in self.workers]
        if not await self._all_ready(READY_TIMEOUT, start_up=True):
            log.error("workers did not start; stopping", extra={"event": "node.start_failed"})
            self.exit_code = 1
            return False
        database, services = describe_database(self.url, self.embedded), self._describe()
        log.info("node ready: %s; %d workers", ready_summary(services, database),
                 len(self.workers), extra={
                     "event": "node.ready", "hostname": s.node.hostname,
                     "supervisor": os.getpid(), "workers": [w.pid for w in self.workers],
                     "database": database, "services": services})
        self._serving = True
        return True

    def _describe(self) -> list[dict]:
        """The listeners the workers share (their own start-up lines say more)."""
        out = []
        for name in ("mx", "submission", "submission_starttls", "http", "metrics"):
            listener = getattr(self.settings.listeners, name)
            if listener.enabled:
                out.append({"listener": name, "address": listener.address,
                            "port": listener.port, "tls": bool(listener.tls_cert),
                            "process": "supervisor" if name == "metrics" else "workers"})
        return out

    def describe(self) -> dict:  # MetricsListener wants a ctx with settings
        return {}

    async def _all_ready(self, timeout: float, start_up: bool = False) -> bool:
        """Wait for READY=1 from every worker. At start-up a worker that exits first
        (a port in use, a bad setting) fails the whole start."""
        deadline = time.monotonic() + timeout
        while not all(w.ready.is_set() for w in self.workers):
            if self._stopping:
                return False
            if start_up and any(w.proc is not None and w.proc.returncode is not None
                                for w in self.workers):
                return False
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _request_stop(self, sig: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.notifier.stopping()
        log.info("shutdown requested", extra={"event": "node.stopping",
                                              "signal": signal.Signals(sig).name})
        self._signal_workers(sig)
        self._stop.set()

    async def _reload(self) -> None:
        if self._stopping:
            return
        self.notifier.reloading()
        try:
            fresh = load_settings(self.config_path)
            setup_logging(fresh.logging.level, fresh.logging.format)
            self.settings.logging = fresh.logging
        except Exception as exc:  # the workers say the same; keep running as we are
            log.error("reload failed, keeping the running settings: %s", exc,
                      extra={"event": "node.reload_failed"})
        for w in self.workers:
            w.ready.clear()
        self._signal_workers(signal.SIGHUP)
        if not await self._all_ready(RELOAD_TIMEOUT):
            log.warning("not every worker confirmed the reload",
                        extra={"event": "node.reload_incomplete"})
        if not self._stopping:
            log.info("settings reloaded", extra={"event": "node.reloaded"})
            self.notifier.ready(f"{self.count} workers")

    async def _shutdown(self) -> None:
        self._stopping = True
        self._signal_workers(signal.SIGTERM)
        live = [w.proc for w in self.workers if w.proc is not None]
        if live:
            done, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in live], timeout=STOP_TIMEOUT)
            if pending:
                log.error("killing %d worker(s) still running after %gs", len(pending),
                          STOP_TIMEOUT, extra={"event": "node.kill_workers"})
                for p in live:
                    if p.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            p.kill()
                await asyncio.wait(pending)
                self.exit_code = 1
        for t in self._watchers:
            t.cancel()
        if self._metrics is not None:
            await self._metrics.stop()
        if self._inbox is not None:
            asyncio.get_running_loop().remove_reader(self._inbox.fileno())
            self._inbox.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.release)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.notifier.close()
        log.info("node stopped", extra={"event": "node.stopped"})

    # -- workers ------------------------------------------------------------------------

    def _signal_workers(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def _worker_env(self) -> dict[str, str]:
        assert self.run_dir is not None and self.url is not None
        env = dict(os.environ)
        # The watchdog is ours to feed; the workers report to us instead.
        for var in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(var, None)
        env.update(NOTIFY_SOCKET=str(self.run_dir / "notify"),
                   PROMETHEUS_MULTIPROC_DIR=str(self.run_dir / "metrics"),
                   MTA_DATABASE_URL=self.url)
        return env

    async def _spawn(self, w: _Worker) -> None:
        w.ready.clear()
        w.started = time.monotonic()
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mta", "serve", "--config", self.config_path,
            "--workers", str(self.count), "--worker-index", str(w.index),
            env=self._worker_env())
        log.info("worker %d started (pid %d)", w.index, w.proc.pid,
                 extra={"event": "worker.started", "worker": w.index, "worker_pid": w.proc.pid})

    async def _watch(self, w: _Worker) -> None:
        """Replace the worker whenever it dies while the node is not stopping."""
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            pid = w.proc.pid
            self._forget_metrics(pid)
            if self._stopping or not self._serving:
                return  # during start-up a dying worker fails the start instead
            quick = time.monotonic() - w.started < QUICK_DEATH
            w.failures = w.failures + 1 if quick else 0
            delay = min(RESTART_DELAY[1], RESTART_DELAY[0] * 2 ** max(w.failures - 1, 0))
            log.error("worker %d (pid %d) exited with %s; replacing it in %.1fs", w.index,
                      pid, code, delay, extra={"event": "worker.exited", "worker": w.index,
                                               "worker_pid": pid, "returncode": code})
            w.ready.clear()
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn(w)

    def _forget_metrics(self, pid: int) -> None:
        """A dead worker's gauges (sessions open, queue depth) no longer count."""
        if self.run_dir is None:
            return
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, str(self.run_dir / "metrics"))

    # -- notifications from workers ------------------------------------------------------

    def _open_inbox(self) -> None:
        assert self.run_dir is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(str(self.run_dir / "notify"))
        sock.setblocking(False)
        self._inbox = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_notification)

    def _on_notification(self) -> None:
        assert self._inbox is not None
        ucred = struct.calcsize("iII")
        while True:
            try:
                data, ancdata, _flags, _addr = self._inbox.recvmsg(
                    4096, socket.CMSG_SPACE(ucred))
            except (BlockingIOError, InterruptedError):
                return
            pid = next((struct.unpack("iII", cdata[:ucred])[0]
                        for level, kind, cdata in ancdata
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS),
                       None)
            worker = next((w for w in self.workers if pid is not None and w.pid == pid),
                          None)
            if worker is None:
                continue  # not one of ours
            fields = parse_fields(data)
            if fields.get("READY") == "1":
                worker.ready.set()
            elif fields.get("RELOADING") == "1" or fields.get("STOPPING") == "1":
                worker.ready.clear()


def run_supervisor(settings: Settings, config_path: str, workers: int) -> int:
    setup_logging(settings.logging.level, settings.logging.format)
    return event_loop_runner()(Supervisor(settings, config_path, workers).run())
