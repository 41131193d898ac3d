"""The service manager's notification protocol (systemd `Type=notify`), spoken directly.

Job: tell whoever started us how we are doing, as newline-separated `KEY=value` fields
in one datagram to the unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract
name written with a leading `@`): READY=1 when every listener is up, RELOADING=1 with
MONOTONIC_USEC while settings are re-read, then READY=1 again, STOPPING=1 when a
graceful stop begins, and WATCHDOG=1 at half of `$WATCHDOG_USEC` while the event loop
runs. Without `$NOTIFY_SOCKET` every call does nothing, so the same code runs under a
terminal, under systemd, and as a worker of our own supervisor (which listens on a
socket of its own and passes its name down the same way).

A lost notification must never take the node down: send errors are logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping

__all__ = ["Notifier", "parse_fields"]

log = logging.getLogger("mta.sdnotify")


def _address(name: str) -> str | bytes:
    # "@name" is Linux's abstract namespace: a leading NUL byte, no file.
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def parse_fields(datagram: bytes) -> dict[str, str]:
    """`KEY=value` lines of one notification (the receiving side: tests, supervisor)."""
    out: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        name = env.get("NOTIFY_SOCKET") or ""
        self.address = _address(name) if name.startswith(("/", "@")) else None
        self._sock: socket.socket | None = None
        self.watchdog_interval = self._watchdog_interval(env)

    @staticmethod
    def _watchdog_interval(env: Mapping[str, str]) -> float | None:
        """Half of $WATCHDOG_USEC (as sd_watchdog_enabled advises), or None when the
        manager asked for no watchdog or asked another process ($WATCHDOG_PID)."""
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return None
        pid = env.get("WATCHDOG_PID")
        if usec <= 0 or (pid and pid != str(os.getpid())):
            return None
        return usec / 2e6

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """One notification; True when it left. Field names are the protocol's."""
        if self.address is None:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
            return True
        except OSError as exc:
            log.warning("service manager notification failed: %s", exc,
                        extra={"event": "sdnotify.failed"})
            return False

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"READY": 1}
        if status:
            fields["STATUS"] = status
        return self.send(**fields)

    def reloading(self) -> bool:
        # systemd 253+ matches the reload to its request by this timestamp.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    @contextlib.asynccontextmanager
    async def keepalive(self) -> AsyncIterator[None]:
        """WATCHDOG=1 while the event loop turns, for as long as the block runs (when the
        manager asked for a watchdog): a loop stuck for a whole watchdog period gets the
        process restarted by its manager."""
        task = None
        if self.watchdog_interval:
            task = asyncio.create_task(self._keepalive(self.watchdog_interval),
                                       name="watchdog")
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    async def _keepalive(self, interval: float) -> None:
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
