"""The node's webhook sender: POSTs the outbox's due events to their endpoints.

It runs as its own task with its own HTTP client, timeouts and a bound on POSTs in
flight (`webhooks.*` settings). It never runs in an SMTP session or an API request and
holds no database connection while it waits for an endpoint, so a slow or dead endpoint
delays only its own events, never mail. Each POST's result is recorded in a short
transaction of its own; if the node dies first, the lease runs out and any node sends the
event again (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from mta.background import LoopService
from mta.dnscache import DnsResolver
from mta.observe import egress, metrics
from mta.webhooks import outbox
from mta.webhooks.payload import body, event_body, test_body
from mta.webhooks.signature import signed_headers

__all__ = ["PostResult", "WebhookSender", "post_event", "send_test"]

log = logging.getLogger("mta.webhooks")

STATS_INTERVAL = 10.0  # seconds between samples of the pending gauge
PRUNE_INTERVAL = 3600.0
USER_AGENT = "mta-webhooks/1"


@dataclass(frozen=True)
class PostResult:
    ok: bool
    status_code: int | None
    error: str | None
    seconds: float


async def post_event(client: httpx.AsyncClient, url: str, secret: str, event_id: str,
                     event_type: str, payload: dict[str, Any], *, resolver: DnsResolver,
                     allow_private: bool = False) -> PostResult:
    """One signed POST; any 2xx is success. Never raises for the endpoint's trouble.
    The client's timeout bounds the whole POST, not only each read, and the answer's
    body is never read (nothing in it matters): an endpoint that trickles its answer, or
    sends an endless one, cannot hold a slot or fill the node's memory. The URL is a
    tenant's: mta.observe.egress refuses our own network unless
    `webhooks.allow_private_targets`, before any connection."""
    data = body(payload)
    headers = signed_headers(secret, data, event_id, event_type)
    headers["User-Agent"] = USER_AGENT
    started = time.monotonic()
    try:
        status = await egress.post(client, url, content=data, headers=headers,
                                   resolver=resolver, allow_private=allow_private,
                                   timeout=client.timeout.read)
    except egress.Refused as exc:
        result = PostResult(False, None, f"refused: {exc}", time.monotonic() - started)
    except (httpx.HTTPError, TimeoutError) as exc:
        error = (f"{type(exc).__name__}: {exc}".rstrip(": ") if isinstance(exc, httpx.HTTPError)
                 else f"no answer within {client.timeout.read:g} s")
        result = PostResult(False, None, error, time.monotonic() - started)
    else:
        ok = 200 <= status < 300
        result = PostResult(ok, status, None if ok else f"HTTP {status}",
                            time.monotonic() - started)
    metrics.WEBHOOK_SECONDS.observe(result.seconds)
    metrics.WEBHOOK_ATTEMPTS.labels(
        "ok" if result.ok else "http_error" if result.status_code else "network_error").inc()
    return result


def http_client(timeout: float) -> httpx.AsyncClient:
    # No redirects: the signed request goes to the URL the account registered, only.
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False,
                             trust_env=False)


async def send_test(account_id: str, url: str, secret: str, settings: Any,
                    resolver: DnsResolver) -> PostResult:
    """POST a `test` event now (the admin API's and the CLI's `test`); nothing is stored.
    `settings`: the `webhooks` section."""
    event_id = f"test-{uuid.uuid4().hex}"
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    async with http_client(float(settings.timeout)) as client:
        return await post_event(client, url, secret, event_id, "test",
                                test_body(account_id, event_id, now), resolver=resolver,
                                allow_private=settings.allow_private_targets)


class WebhookSender(LoopService):
    """A node service (mta/node.py): one loop claiming due events while POSTs are in
    flight below `webhooks.concurrency`, and below `webhooks.per_endpoint` for each
    endpoint, so a slow endpoint delays its own events and no other endpoint's."""

    name = "webhooks"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.webhooks
        self.db = ctx.db
        self.node_id: str = ctx.node_id
        self.clock = getattr(ctx, "clock", None) or (lambda: datetime.now(UTC))
        self._wake = asyncio.Event()
        self._posts: set[asyncio.Task] = set()
        self._per_endpoint: defaultdict[str, int] = defaultdict(int)  # POSTs in flight
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if not self.settings.enabled:
            return
        self._client = http_client(float(self.settings.timeout))
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        # POSTs still out are abandoned: their leases run out and they are sent again.
        for t in list(self._posts):
            t.cancel()
        if self._posts:
            await asyncio.gather(*self._posts, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> dict:
        s = self.settings
        return {"worker": self.name, "enabled": s.enabled, "concurrency": s.concurrency,
                "per_endpoint": s.per_endpoint, "timeout_s": s.timeout, "max_attempts": s.max_attempts}

    async def _loop(self) -> None:
        last_stats = last_prune = 0.0
        failures = 0
        while True:
            try:
                now = time.monotonic()
                if now - last_stats >= STATS_INTERVAL:
                    last_stats = now
                    metrics.WEBHOOK_PENDING.set(await outbox.pending_count(self.db))
                if now - last_prune >= PRUNE_INTERVAL:
                    last_prune = now
                    await outbox.prune(self.db, self.clock() - timedelta(
                        seconds=float(self.settings.log_retention)))
                free = self.settings.concurrency - len(self._posts)
                claimed = await outbox.claim(
                    self.db, self.node_id, limit=free,
                    lease_seconds=float(self.settings.lease_seconds), now=self.clock(),
                    in_flight=dict(self._per_endpoint),
                    per_endpoint=self.settings.per_endpoint)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away: try again later
                failures += 1
                log.warning("webhook outbox unavailable: %s", exc,
                            extra={"event": "webhooks.claim_failed"})
                await asyncio.sleep(min(30.0, float(self.settings.poll_interval) * 2 ** failures))
                continue
            self._wake.clear()  # before the POSTs start, so no finish goes unseen
            for c in claimed:
                self._per_endpoint[c.endpoint_id] += 1
                task = asyncio.create_task(self._deliver(c), name=f"webhook-{c.id}")
                self._posts.add(task)
                task.add_done_callback(self._posts.discard)
            if claimed and len(claimed) == free:
                continue  # there may be more due: claim again once a slot is free
            # Nothing more due now, or no free slot: wait for a POST to finish (the next
            # event of its message may be due, and its slot is free) or the next poll.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), float(self.settings.poll_interval))

    async def _deliver(self, c: outbox.Claimed) -> None:
        try:
            assert self._client is not None
            result = await post_event(self._client, c.url, c.secret, str(c.event_id),
                                      c.event_type, event_body(c.event_type, c.event),
                                      resolver=self.ctx.resolver,
                                      allow_private=self.settings.allow_private_targets)
            await self._record(c, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # recorded by nobody: the lease brings it back
            log.warning("webhook %d: could not record its result: %s", c.id, exc,
                        extra={"event": "webhooks.record_failed"})
        finally:
            self._per_endpoint[c.endpoint_id] -= 1
            if not self._per_endpoint[c.endpoint_id]:
                del self._per_endpoint[c.endpoint_id]
            self._wake.set()

    async def _record(self, c: outbox.Claimed, result: PostResult) -> None:
        s = self.settings
        now = self.clock()
        if result.ok:
            assert result.status_code is not None
            if await outbox.record_success(self.db, self.node_id, c, result.status_code, now):
                metrics.WEBHOOK_EVENTS.labels("delivered").inc()
            return
        state = await outbox.record_failure(
            self.db, self.node_id, c, code=result.status_code, error=result.error or "",
            now=now, max_attempts=s.max_attempts, first=float(s.first_retry),
            cap=float(s.max_backoff))
        extra = {"event": "webhooks.attempt_failed", "endpoint_id": c.endpoint_id,
                 "webhook_delivery_id": c.id, "attempt": c.attempts, "error": result.error}
        if state == "failed":
            metrics.WEBHOOK_EVENTS.labels("failed").inc()
            log.warning("webhook %d to endpoint %s failed for good after %d attempts: %s",
                        c.id, c.endpoint_id, c.attempts, result.error, extra=extra)
        else:
            log.info("webhook %d to endpoint %s failed (attempt %d): %s", c.id,
                     c.endpoint_id, c.attempts, result.error, extra=extra)
