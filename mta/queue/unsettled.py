"""What a node still owes the queue after the database went away under a delivery batch.

A claimed delivery is leased to this node for `delivery.lease_seconds` (300 s). Every
path through a batch ends by writing something for each claim: the outcome of the
attempt, or a release of the claim it never tried (`queue.release`). When the database
is gone at that moment, the write fails; before, the claim then stayed leased until the
lease expired, so a message acknowledged just before an outage waited minutes after the
database was back. Now the node keeps what it could not write here and writes it as
soon as the database answers again:

- an outcome (the next hop has answered): recorded later, exactly as it would have been
  at once (`record` is the workers' own recording). A delivered message is therefore
  not sent again; if this process dies first, the lease expires and the message goes
  once more (at least once: the one message in flight, as after any crash);
- a claim never tried: released, so it is due at once for any node (its attempt count
  and due time restored), never delivered by us in between.

Nothing here decides anything; it only retries writes, with a short backoff (the first
retry is quick, the longest wait is MAX_BACKOFF), in one task per node process that
exists only while something is owed. `on_settled` runs after each successful round (the
workers use it to claim released work at once rather than at their next poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mta.queue.queue import Claimed, release
from mta.store.db import Database, is_unavailable

__all__ = ["Unsettled"]

log = logging.getLogger("mta.delivery")

FIRST_BACKOFF = 0.25
MAX_BACKOFF = 5.0

Record = Callable[[list, dict], Awaitable[None]]


class Unsettled:
    def __init__(self, db: Database, node_id: str, record: Record,
                 on_settled: Callable[[], None] | None = None) -> None:
        self.db = db
        self.node_id = node_id
        self.record = record
        self.on_settled = on_settled
        self._outcomes: list[tuple[list, dict]] = []  # (results, messages) as for `record`
        self._releases: list[Claimed] = []
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one flush at a time (the task's, the stop's)

    def __len__(self) -> int:
        """Deliveries owed: outcomes not yet recorded plus claims not yet released."""
        return sum(len(r) for r, _ in self._outcomes) + len(self._releases)

    async def record_now(self, results: list, messages: dict) -> bool:
        """Record one attempt's outcomes; False when the database did not take them
        (then they are owed, written once it is back)."""
        if not results:
            return True
        try:
            await self.record(results, messages)
            return True
        except Exception as exc:
            log.warning("recording %d outcomes failed, kept until the database is back: "
                        "%s", len(results), exc, extra={"event": "delivery.record_failed"})
            self._outcomes.append((results, messages))
            self._ensure_task()
            return False

    async def release_now(self, claimed: list[Claimed]) -> None:
        """Release claims never tried (due at once for any node), or owe the release."""
        try:
            await release(self.db, self.node_id, claimed)
        except Exception as exc:
            log.warning("releasing %d untried claims failed, kept until the database is "
                        "back: %s", len(claimed), exc,
                        extra={"event": "delivery.release_failed"})
            self._releases.extend(claimed)
            self._ensure_task()

    async def flush(self) -> bool:
        """Write what is owed, once; True when nothing is owed any more. While the
        database is unavailable, what fails stays owed (in order) for the next round;
        any other error drops that item (logged): its lease expires and a later attempt
        follows, as before this existed. An item leaves the list only once written, so
        a flush cancelled half-way (a stop) loses nothing."""
        async with self._lock:
            down: Exception | None = None
            recorded = released = 0
            while self._outcomes:
                results, messages = self._outcomes[0]
                try:
                    await self.record(results, messages)
                    recorded += len(results)
                except Exception as exc:
                    if is_unavailable(exc):
                        down = exc
                        break
                    log.exception("could not record %d outcomes; their leases expire",
                                  len(results), extra={"event": "delivery.record_gave_up"})
                del self._outcomes[0]
            releases = list(self._releases)
            if releases and down is None:
                try:
                    await release(self.db, self.node_id, releases)
                    released = len(releases)
                except Exception as exc:
                    if is_unavailable(exc):
                        down = exc
                    else:
                        log.exception("could not release %d claims; their leases expire",
                                      len(releases),
                                      extra={"event": "delivery.release_failed"})
                if down is None:
                    del self._releases[:len(releases)]
        if recorded or released:
            log.info("settled %d outcomes and %d untried claims after a database outage",
                     recorded, released, extra={"event": "delivery.settled"})
            if self.on_settled is not None:
                self.on_settled()
        if down is not None:
            log.info("%d deliveries still to settle: %s", len(self), down,
                     extra={"event": "delivery.settle_waiting"})
        return not len(self)

    async def close(self, timeout: float = 10.0) -> None:
        """Graceful stop: one last try within `timeout`; what is still owed then waits
        for its lease to expire (logged)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if len(self):
            with contextlib.suppress(Exception):  # still down, or the timeout
                async with asyncio.timeout(timeout):
                    await self.flush()
        if len(self):
            log.error("stopping with %d deliveries unsettled: their leases expire and "
                      "another attempt follows", len(self),
                      extra={"event": "delivery.unsettled_at_stop"})

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="delivery-settle")

    async def _run(self) -> None:
        delay = FIRST_BACKOFF
        while len(self):
            await asyncio.sleep(delay)
            if await self.flush():
                return
            delay = min(delay * 2, MAX_BACKOFF)

