"""Engine and sessions for the one PostgreSQL database every node shares.

Two ways to write:
- `session()`: an ORM unit of work (admin API, CLI, rare paths) that commits on success
  and rolls back on error;
- `commit(unit)`: the hot paths (a received or sent message, a delivery outcome), plain
  Core inserts and statements on prepared statements, committed together with other
  concurrent units (`mta.store.commit`).

No `pool_pre_ping`: with asyncpg it costs three round trips (BEGIN, SELECT, ROLLBACK) per
checkout. A connection that sat idle in the pool longer than IDLE_PING_SECONDS is pinged
when taken out (after a database restart those are the dead ones); a busy pool never
pings, and a connection that dies anyway fails its transaction, is invalidated by the
pool, and the caller's retry (or 4xx) takes a new one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mta.store.commit import GroupCommit, Unit
from mta.store.rows import NEXT_DELIVERY_IDS

__all__ = ["Database", "DatabaseUnavailable", "Unit", "describe_target", "is_unavailable"]

IDLE_PING_SECONDS = 1.0
ID_BLOCK = 64

# SQLSTATEs of a server that is going away or not yet there: class 08 (connection
# exception), 57P01-57P03 (admin/crash shutdown, cannot connect now), 53300 (too many
# connections).
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "53300")


class DatabaseUnavailable(ConnectionError):
    """PostgreSQL cannot be reached; the message names it (socket path or host:port).
    A ConnectionError, so code that treats an unreachable peer as temporary still does."""


def describe_target(url: str) -> str:
    """Where a database URL points, without credentials: `/run/x/.s.PGSQL.5432 (database
    mta)` for a unix socket, `db.example:5432 (database mta)` over TCP."""
    u = make_url(url)
    host = u.query.get("host") or u.host or "/var/run/postgresql"
    if isinstance(host, tuple):
        host = host[0]
    port = u.port or 5432
    where = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else f"{host}:{port}"
    return f"{where} (database {u.database})"


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database is unreachable (as opposed to a bad query)."""
    if isinstance(exc, DatabaseUnavailable | PoolTimeout):
        return True
    # asyncpg's errors carry the SQLSTATE; SQLAlchemy's wrappers carry them as .orig.
    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith("08") or state in _UNAVAILABLE_STATES:
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return exc.orig is not None and is_unavailable(exc.orig)
    cause = exc.__cause__  # the driver's error under SQLAlchemy's adapter
    return cause is not None and cause is not exc and is_unavailable(cause)


class Database:
    """An async engine, a session factory and the group committer."""

    def __init__(self, url: str, pool_size: int = 10, connect_timeout: float = 10) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size,
            connect_args={"timeout": connect_timeout})
        self.target = describe_target(url)

        @event.listens_for(self.engine.sync_engine, "do_connect")
        def _connect(dialect, _record, cargs, cparams):
            # The driver's own errors ("[Errno 2] No such file or directory") do not say
            # which database; every connection failure names it.
            try:
                return dialect.connect(*cargs, **cparams)
            except Exception as exc:
                raise DatabaseUnavailable(
                    f"cannot connect to PostgreSQL at {self.target}: {exc}") from exc

        _ping_idle_connections(self.engine)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.committer = GroupCommit(self.engine)
        self._ids: list[int] = []

    async def delivery_ids(self, n: int) -> list[int]:
        """`n` fresh `deliveries.id` values, taken from the sequence in blocks so a
        message's rows are known before its INSERT without a round trip each time."""
        while len(self._ids) < n:
            async with self.engine.connect() as conn:
                got = (await conn.execute(NEXT_DELIVERY_IDS,
                                          {"n": max(n, ID_BLOCK)})).scalars().all()
            self._ids.extend(got)
        out, self._ids = self._ids[:n], self._ids[n:]
        return out

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as s, s.begin():
            yield s

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a transaction of its own (commits on success)."""
        async with self.engine.begin() as conn:
            yield conn

    async def commit(self, unit: Unit) -> list[Any]:
        """Write `unit` durably (possibly sharing a transaction with concurrent units);
        returns the results of its steps once committed."""
        return await self.committer.run(unit)

    async def close(self) -> None:
        await self.engine.dispose()


def _ping_idle_connections(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            # The pool discards this connection and checks out another one.
            raise exc.DisconnectionError(str(error)) from error
