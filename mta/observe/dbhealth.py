"""Is the database reachable? For /healthz, the `mta_database_up` gauge and the log.

`check_database` pings with a short timeout (a load balancer's health check must not
hang for the connect timeout). `DatabaseProbe` is a node service that checks every few
seconds, so the gauge is current without a scrape or a health check driving it, and logs
each change (down with the reason naming the database, up again).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from mta.observe import metrics
from mta.store.db import Database

log = logging.getLogger("mta.observe.dbhealth")

__all__ = ["DatabaseProbe", "check_database"]

CHECK_TIMEOUT = 3.0
PROBE_INTERVAL = 5.0


async def check_database(db: Database, timeout: float = CHECK_TIMEOUT) -> str | None:
    """None when the database answers, else why not (naming it); sets the gauge."""
    try:
        async with asyncio.timeout(timeout):
            async with db.session() as s:
                await s.execute(text("SELECT 1"))
    except TimeoutError:
        reason = f"PostgreSQL at {db.target} did not answer within {timeout:g}s"
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if db.target not in reason:
            reason = f"PostgreSQL at {db.target}: {reason}"
    else:
        metrics.DATABASE_UP.set(1)
        return None
    metrics.DATABASE_UP.set(0)
    return reason[:300]


class DatabaseProbe:
    name = "database-probe"

    def __init__(self, ctx, interval: float = PROBE_INTERVAL) -> None:
        self.db: Database = ctx.db
        self.interval = interval
        self._task: asyncio.Task | None = None
        self._down: str | None = None

    async def start(self) -> None:
        await self._check()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._check()

    async def _check(self) -> None:
        reason = await check_database(self.db)
        if reason and not self._down:
            log.error("database unreachable: %s", reason,
                      extra={"event": "database.unreachable", "database": self.db.target})
        elif not reason and self._down:
            log.info("database reachable again", extra={
                "event": "database.reachable", "database": self.db.target})
        self._down = reason

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def describe(self) -> dict:
        return {"service": self.name, "interval": self.interval}
