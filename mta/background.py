"""The background task of a node service (a worker loop started by `start`, ended by
`stop`): at the bottom so that every layer's services may share it."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

__all__ = ["LoopService", "cancel_and_wait", "run_every"]


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel TASK (if any) and wait until it has finished, so that `stop` returns only
    when the loop no longer runs; the cancellation itself is not an error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class LoopService:
    """A node service whose work is one task running `_loop`, named after the service,
    from `start` until `stop`."""

    name: str
    _task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        raise NotImplementedError


async def run_every(run: Callable[[], Awaitable[object]], interval: float, *, spread: float,
                    failed: Callable[[Exception], None]) -> None:
    """Await `run()` every INTERVAL seconds until cancelled. The first run comes after a
    random 1 to min(SPREAD, INTERVAL) seconds, so that nodes started together spread
    their runs; a run that fails is handed to FAILED (to log it) and the next one tries
    again, the node staying up."""
    await asyncio.sleep(random.uniform(1.0, min(spread, interval)))
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed(exc)
        await asyncio.sleep(interval)
