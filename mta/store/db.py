"""Engine and sessions for the one PostgreSQL database every node shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = ["Database", "DatabaseUnavailable", "describe_target", "is_unavailable"]

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
    """An async engine plus a session factory. `session()` is a unit of work that
    commits on success and rolls back on error."""

    def __init__(self, url: str, pool_size: int = 10, connect_timeout: float = 10) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
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

        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as s, s.begin():
            yield s

    async def close(self) -> None:
        await self.engine.dispose()
