"""CPU-bound work on a message (hashing, signing, verifying), inline or in a thread.

A hop to the default thread pool costs a submit, a wake-up and the GIL changing hands
twice — more CPU than canonicalising and hashing an ordinary message, and under load
the thread also waits for the GIL the event loop holds. So small messages are worked
on inline (a few milliseconds at most, three RSA signatures included) and only large
ones go to a thread, where they would otherwise stall every other session on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["INLINE_BYTES", "run_cpu"]

T = TypeVar("T")

INLINE_BYTES = 128 * 1024


async def run_cpu(size: int, fn: Callable[..., T], /, *args, **kwargs) -> T:
    """`fn(*args, **kwargs)`, in a thread when the message is larger than INLINE_BYTES."""
    if size <= INLINE_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
