"""The background task of a node service (a worker loop started by `start`, ended by
`stop`): at the bottom so that every layer's services may share it."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["LoopService", "cancel_and_wait"]


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
