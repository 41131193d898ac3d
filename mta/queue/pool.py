"""Outbound SMTP connections kept open between messages, per next hop.

Job: hold connections that just finished a transaction so the next message to the same
next hop skips the TCP handshake, greeting, EHLO, STARTTLS (and AUTH for a smart host).
A next hop is a `key` chosen by `remote.py`: host, port, the TLS levels the route
accepts and the relay login, so a connection is only reused where it meets the same
security requirements it was made for.

Bounds (Postfix keeps cached connections 2 s and reuses one at most 300 s; ours are the
same idea, a little more patient because in-session forwards arrive one by one):
- at most `max_idle_per_key` idle connections per next hop, `max_idle` in all (the
  oldest idle one is closed to make room);
- an idle connection is closed after `idle_timeout` seconds (a timer, no task);
- a connection is not reused once older than `max_age` or used `max_uses` times;
- a connection that is not `reusable` (it failed, it is out of sync, the server closed
  it or said something unasked, such as a 421 before its own idle timeout) is closed,
  never handed out.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["ConnectionPool"]


class ConnectionPool:
    # 20 per next hop: Postfix's default_destination_concurrency_limit. Idle connections
    # exist only because that many were busy a moment ago, so keeping them never raises
    # the peak a destination sees; it saves reconnecting when the next burst comes.
    def __init__(self, *, idle_timeout: float = 10.0, max_idle_per_key: int = 20,
                 max_idle: int = 256, max_age: float = 300.0, max_uses: int = 1000) -> None:
        self.idle_timeout = idle_timeout
        self.max_idle_per_key = max_idle_per_key
        self.max_idle = max_idle
        self.max_age = max_age
        self.max_uses = max_uses
        # key -> {connection: its idle timer}; insertion order = oldest idle first.
        self._idle: dict[Hashable, OrderedDict[Any, asyncio.TimerHandle]] = {}
        self.reused = 0  # connections handed out again (tests, metrics)

    def __len__(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def _fresh(self, conn: Any) -> bool:
        return (conn.client.reusable and conn.uses < self.max_uses
                and time.monotonic() - conn.created < self.max_age)

    def take(self, key: Hashable) -> Any | None:
        """The most recently used idle connection to `key` that is still good."""
        idle = self._idle.get(key)
        while idle:
            conn, timer = idle.popitem(last=True)
            timer.cancel()
            if self._fresh(conn):
                if not idle:
                    del self._idle[key]
                self.reused += 1
                return conn
            conn.client.close()
        self._idle.pop(key, None)
        return None

    def give(self, key: Hashable, conn: Any) -> None:
        """Keep `conn` for the next message to `key`, or close it."""
        if not conn.client.reusable:
            conn.client.close()  # failed or out of sync: not even a QUIT
            return
        if not self._fresh(conn):
            conn.client.quit_and_close()
            return
        idle = self._idle.setdefault(key, OrderedDict())
        if len(idle) >= self.max_idle_per_key:
            self._evict(key)
        if len(self) >= self.max_idle:
            oldest = min(self._idle, key=lambda k: min(
                (t.when() for t in self._idle[k].values()), default=float("inf")))
            self._evict(oldest)
        loop = asyncio.get_running_loop()
        idle = self._idle.setdefault(key, OrderedDict())
        idle[conn] = loop.call_later(self.idle_timeout, self._expire, key, conn)

    def _evict(self, key: Hashable) -> None:
        idle = self._idle.get(key)
        if idle:
            conn, timer = idle.popitem(last=False)
            timer.cancel()
            conn.client.quit_and_close()
            if not idle:
                del self._idle[key]

    def _expire(self, key: Hashable, conn: Any) -> None:
        idle = self._idle.get(key)
        if idle is not None and idle.pop(conn, None) is not None:
            conn.client.quit_and_close()
            if not idle:
                del self._idle[key]

    def close(self) -> None:
        """Say goodbye to every idle connection (node shutdown)."""
        for idle in self._idle.values():
            for conn, timer in idle.items():
                timer.cancel()
                conn.client.quit_and_close()
        self._idle.clear()
