"""The background task of a node service (a worker loop started by `start`, ended by
`stop`): at the bottom so that every layer's services may share it."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel TASK (if any) and wait until it has finished, so that `stop` returns only
    when the loop no longer runs; the cancellation itself is not an error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
