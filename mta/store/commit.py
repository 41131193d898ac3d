"""Group commit: the writes of several concurrent messages in one transaction.

Every accepted message (MX, submission, REST send) and every delivery outcome writes a few
rows and must be durable before anyone is told so. Committing each alone costs one WAL
flush (an fsync) and a handful of round trips per message. Here one committer task per
event loop takes every unit of work queued while the previous commit was in flight and
writes them together: one multi-row INSERT per table over all of them, then each unit's
own statements, then one COMMIT. `GroupCommit.run(unit)` returns only after the
transaction holding that unit has committed (or raises), so the caller's 250 / 200 still
follows its own durable commit — no `synchronous_commit=off`, nothing acknowledged from
memory.

If a shared transaction fails, its units are retried one by one, each in its own
transaction: one bad unit (a constraint, a statement that raises) fails alone and the
others are neither lost nor wrongly failed. A dead pooled connection is the same case:
the retry takes a fresh one.

A unit is plain data (rows as dicts, complete and with the same keys per table, as
`mta.store.rows` builds them) plus optional callables run on the connection after the
inserts, in the same transaction: its own (`then`) or one shared with the other units of
the transaction that name the same callable (`merge`: e.g. one UPDATE for many delivery
outcomes). Their return values come back from `run()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mta.store.models import Base

__all__ = ["GroupCommit", "Unit"]

log = logging.getLogger("mta.store")

Step = Callable[[AsyncConnection], Awaitable[Any]]
MergedStep = Callable[[AsyncConnection, list[Any]], Awaitable[Any]]

# Parents before children (messages before deliveries before attempts ...).
_ORDER = {t: i for i, t in enumerate(Base.metadata.sorted_tables)}


@dataclass
class Unit:
    """What one message (or one delivery outcome) writes."""

    rows: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    merged: list[tuple[MergedStep, Any]] = field(default_factory=list)

    def insert(self, table: Table, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
        self.rows.setdefault(table, []).extend([rows] if isinstance(rows, dict) else rows)

    def then(self, step: Step) -> None:
        self.steps.append(step)

    def merge(self, step: MergedStep, item: Any) -> None:
        """`step(conn, items)` runs once per shared transaction with the `item` of every
        unit that named the same step (one UPDATE for the outcomes of many deliveries
        instead of one each); its return value is this unit's result too."""
        self.merged.append((step, item))


class GroupCommit:
    def __init__(self, engine: AsyncEngine, max_units: int = 200) -> None:
        self.engine = engine
        self.max_units = max_units
        self._pending: list[tuple[Unit, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self.commits = 0  # transactions committed (a unit count / this = batching factor)
        self.units = 0

    async def run(self, unit: Unit) -> list[Any]:
        """Commit `unit` (possibly with others); the results of its steps."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((unit, future))
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain(), name="group-commit")
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:self.max_units]
            del self._pending[:len(batch)]
            # A caller that went away before we started (client gone) is not written.
            batch = [(u, f) for u, f in batch if not f.done()]
            if not batch:
                continue
            try:
                results = await self._write([u for u, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc=exc)
                    continue
                log.info("shared commit of %d units failed (%s); retrying each alone",
                         len(batch), exc)
                for unit, future in batch:
                    try:
                        result = (await self._write([unit]))[0]
                    except Exception as one:
                        _settle(future, exc=one)
                    else:
                        _settle(future, result=result)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                _settle(future, result=result)

    async def _write(self, units: list[Unit]) -> list[list[Any]]:
        try:
            return await self._write_once(units)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # A pooled connection the database had closed (a restart): the pool has
            # dropped it and its older siblings; once more on a fresh one.
            return await self._write_once(units)

    async def _write_once(self, units: list[Unit]) -> list[list[Any]]:
        tables = sorted({t for u in units for t in u.rows}, key=lambda t: _ORDER[t])
        async with self.engine.begin() as conn:
            for table in tables:
                rows = [r for u in units for r in u.rows.get(table, ())]
                if rows:
                    await conn.execute(table.insert(), rows)
            results = [[await step(conn) for step in u.steps] for u in units]
            items: dict[MergedStep, list[Any]] = {}
            for u in units:
                for step, item in u.merged:
                    items.setdefault(step, []).append(item)
            done = {step: await step(conn, batch) for step, batch in items.items()}
            for u, result in zip(units, results, strict=True):
                result.extend(done[step] for step, _ in u.merged)
        self.commits += 1
        self.units += len(units)
        return results


def _settle(future: asyncio.Future, *, result: Any = None,
            exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
