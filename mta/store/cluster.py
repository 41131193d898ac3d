"""Who starts and stops the embedded PostgreSQL cluster.

A running cluster has exactly one owner: the process that started it (or adopted it, see
below), and only the owner stops it. Ownership is a `PidLock` on `<cluster>/owner.lock`,
held for as long as the owner keeps the cluster; the kernel drops it when the owner dies,
even by SIGKILL.

- The node (`mta serve`, or the supervisor of its workers) calls `own_cluster`: it waits
  while an `mta` command owns the cluster (commands are short), then starts it when it
  is not running, or adopts the postmaster a killed node left behind, and stops it at
  `release()`. Meanwhile a watcher thread restarts it if the postmaster dies (killed,
  OOM): the node's connections fail for those seconds (SMTP answers 4xx, the API 503)
  and recover by themselves.
- Every other command calls `use_cluster`: when the cluster has an owner it is used as it
  is, never started or stopped; when nobody owns it the command owns it for its own run,
  starting it if needed and stopping at `release()` only what it started.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from mta.pidlock import PidLock
from mta.store.embedded import EmbeddedPostgres, EmbeddedPostgresError

log = logging.getLogger("mta.store.cluster")

__all__ = ["ClusterLease", "own_cluster", "use_cluster"]

# How long a node waits for a command that owns the cluster to finish with it.
OWNER_WAIT = 120.0
# How often the owner checks that the postmaster is alive, and retries a failed restart.
WATCH_INTERVAL = 1.0
RETRY_INTERVAL = 2.0


@dataclass
class ClusterLease:
    """One process's hold on the cluster; `release()` exactly once when done."""

    cluster: EmbeddedPostgres
    lock: PidLock
    stop_on_release: bool
    _watcher: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def owned(self) -> bool:
        return self.lock.held

    def url(self) -> str:
        return self.cluster.url()

    def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Restart the cluster whenever its postmaster dies, until `release()`."""
        self._watcher = threading.Thread(target=self._watch, args=(interval,),
                                         name="embedded-postgres-watch", daemon=True)
        self._watcher.start()

    def _watch(self, interval: float) -> None:
        where = self.cluster.socket_path
        while not self._stopping.wait(interval):
            if self.cluster.alive():
                continue
            log.error("embedded PostgreSQL at %s is down; restarting it", where,
                      extra={"event": "database.down", "database": where})
            while not self._stopping.is_set():
                try:
                    self.cluster.start()
                except Exception as exc:  # keep trying: the node is useless without it
                    log.error("restarting embedded PostgreSQL at %s failed: %s", where, exc,
                              extra={"event": "database.restart_failed", "database": where})
                    self._stopping.wait(RETRY_INTERVAL)
                    continue
                log.info("embedded PostgreSQL at %s restarted", where,
                         extra={"event": "database.restarted", "database": where})
                break

    def release(self) -> None:
        """Stop the cluster if ours to stop, then let go. Safe to call again: a second
        call never stops a cluster that someone else may own by then."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()  # a restart in progress finishes before we stop
            self._watcher = None
        stop, self.stop_on_release = self.stop_on_release, False
        try:
            if stop:
                self.cluster.stop()
        finally:
            self.lock.release()


def _lock(cluster: EmbeddedPostgres, role: str) -> PidLock:
    cluster.prepare()
    owner = cluster.owner
    return PidLock(cluster.base_dir / "owner.lock", role, owner.pw_uid, owner.pw_gid)


def own_cluster(cluster: EmbeddedPostgres, timeout: float = OWNER_WAIT) -> ClusterLease:
    """Become the cluster's owner for the life of a node; running when this returns."""
    lock = _lock(cluster, "mta serve")

    def waiting(holder) -> None:
        log.info("waiting for the command that started the embedded database to finish "
                 "(%s)", lock.describe_holder(), extra={"event": "database.owner_wait"})

    if not lock.acquire(timeout, on_wait=waiting):
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL in {cluster.data_dir} is held by "
            f"{lock.describe_holder()}; it did not let go within {timeout:.0f}s")
    try:
        if cluster.running:
            log.info("adopting the embedded PostgreSQL left running by a previous owner",
                     extra={"event": "database.adopted"})
        cluster.start()
    except BaseException:
        lock.release()
        raise
    lease = ClusterLease(cluster, lock, stop_on_release=True)
    lease.watch()
    return lease


def use_cluster(cluster: EmbeddedPostgres, ready_timeout: float = 30.0) -> ClusterLease:
    """The cluster for one command: someone else's as it is, or our own for this run."""
    lock = _lock(cluster, "mta command")
    if not lock.try_acquire():
        # Owned (by a node, or another command): use it, never start or stop it. The
        # owner may be restarting it right now, hence the wait.
        try:
            cluster.wait_ready(ready_timeout)
        except EmbeddedPostgresError:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL at {cluster.socket_path} is not accepting "
                f"connections; it belongs to {lock.describe_holder()}") from None
        return ClusterLease(cluster, lock, stop_on_release=False)
    try:
        started = not cluster.running
        cluster.start()
    except BaseException:
        lock.release()
        raise
    return ClusterLease(cluster, lock, stop_on_release=started)
