"""The webhook outbox (`webhook_deliveries`): claim, record, back off, prune.

Rows are written by the trigger on `events` (migration 0012). A sender claims due rows
with FOR UPDATE SKIP LOCKED and leases them by moving `next_attempt_at` past the lease:
a node that dies mid-POST leaves its rows due again when the lease runs out, and any
node takes them (at least once; receivers drop duplicates by event id).

Ordered per message: a row is claimable only when no earlier row of the same endpoint
and message is still pending, so an endpoint sees `sent` before `delivered` even when
the first POST had to be retried. A row that finally fails (max attempts) stops
blocking the ones after it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from mta.store.db import Database

__all__ = ["Claimed", "backoff", "claim", "pending_count", "prune", "record_failure",
           "record_success"]

# `candidates` (unlocked) picks due rows that no earlier event of their message holds
# back, of endpoints below their share (:busy are at it), at most :per of each counting
# the POSTs it has in flight on this node (:in_flight, JSON: endpoint id -> count);
# `due` locks them, re-checking their state under the lock (another node may have just
# taken one).
_CLAIM = text("""
WITH candidates AS (
  SELECT d.id, row_number() OVER (PARTITION BY d.endpoint_id
                                  ORDER BY d.next_attempt_at, d.id)
               + COALESCE(CAST(CAST(:in_flight AS jsonb) ->> d.endpoint_id AS int), 0) AS n
  FROM webhook_deliveries d
  JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.enabled
  WHERE d.status = 'pending' AND d.next_attempt_at <= :now
    AND NOT (d.endpoint_id = ANY (CAST(:busy AS text[])))
    AND (d.message_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM webhook_deliveries p
      WHERE p.status = 'pending' AND p.endpoint_id = d.endpoint_id
        AND p.message_id = d.message_id AND p.id < d.id))
  ORDER BY d.next_attempt_at, d.id
  LIMIT :scan),
due AS (
  SELECT d.id FROM webhook_deliveries d JOIN candidates c ON c.id = d.id
  WHERE c.n <= :per AND d.status = 'pending' AND d.next_attempt_at <= :now
  ORDER BY d.next_attempt_at, d.id
  LIMIT :limit
  FOR UPDATE OF d SKIP LOCKED)
UPDATE webhook_deliveries o
SET attempts = o.attempts + 1, next_attempt_at = :until, lease_owner = :node,
    lease_expires_at = :until
FROM due, webhook_endpoints w
WHERE o.id = due.id AND w.id = o.endpoint_id
RETURNING o.id, o.endpoint_id, o.event_id, o.message_id, o.event_type, o.event,
          o.attempts, w.url, w.secret
""")

_SUCCESS = text("""
UPDATE webhook_deliveries
SET status = 'delivered', finished_at = :now, last_status_code = :code, last_error = NULL,
    last_attempt_at = :now, lease_owner = NULL, lease_expires_at = NULL
WHERE id = :id AND lease_owner = :node AND attempts = :attempts AND status = 'pending'
""")

_FAILURE = text("""
UPDATE webhook_deliveries
SET status = CASE WHEN :final THEN 'failed' ELSE 'pending' END,
    finished_at = CASE WHEN :final THEN CAST(:now AS timestamptz) END,
    next_attempt_at = :next, last_status_code = :code, last_error = :error,
    last_attempt_at = :now, lease_owner = NULL, lease_expires_at = NULL
WHERE id = :id AND lease_owner = :node AND attempts = :attempts AND status = 'pending'
""")


@dataclass(frozen=True)
class Claimed:
    id: int
    endpoint_id: str
    event_id: int
    message_id: uuid.UUID | None
    event_type: str
    event: dict[str, Any]
    attempts: int  # including this one
    url: str
    secret: str


def backoff(attempts: int, first: float, cap: float) -> float:
    """Seconds before the next try after `attempts` failed ones: first, 2x, 4x ... cap."""
    return min(cap, first * 2 ** max(attempts - 1, 0))


async def claim(db: Database, node_id: str, *, limit: int, lease_seconds: float,
                now: datetime, in_flight: dict[str, int] | None = None,
                per_endpoint: int | None = None) -> list[Claimed]:
    """Lease up to `limit` due events, at most `per_endpoint` of any one endpoint
    counting the `in_flight` POSTs it already has, so one slow endpoint cannot take
    every slot."""
    if limit <= 0:
        return []
    per = per_endpoint or limit
    in_flight = in_flight or {}
    busy = [e for e, n in in_flight.items() if n >= per]
    until = now + timedelta(seconds=lease_seconds)
    async with db.connection() as conn:
        rows = (await conn.execute(_CLAIM, {
            "now": now, "limit": limit, "until": until, "node": node_id, "per": per,
            "in_flight": json.dumps(in_flight), "busy": busy,
            "scan": max(limit * 4, 100)})).all()
    return sorted((Claimed(*r) for r in rows), key=lambda c: c.id)


async def record_success(db: Database, node_id: str, c: Claimed, code: int,
                         now: datetime) -> bool:
    """False when our lease was lost (another node took the row over)."""
    async with db.connection() as conn:
        res = await conn.execute(_SUCCESS, {"id": c.id, "node": node_id, "now": now,
                                            "code": code, "attempts": c.attempts})
    return bool(res.rowcount)


async def record_failure(db: Database, node_id: str, c: Claimed, *, code: int | None,
                         error: str, now: datetime, max_attempts: int, first: float,
                         cap: float) -> str | None:
    """`failed` when this was the last attempt, `pending` when it will be retried, None
    when our lease was lost."""
    final = c.attempts >= max_attempts
    nxt = now + timedelta(seconds=backoff(c.attempts, first, cap))
    async with db.connection() as conn:
        res = await conn.execute(_FAILURE, {
            "id": c.id, "node": node_id, "now": now, "final": final, "next": nxt,
            "code": code, "error": error[:1000], "attempts": c.attempts})
    if not res.rowcount:
        return None
    return "failed" if final else "pending"


async def pending_count(db: Database) -> int:
    async with db.connection() as conn:
        return (await conn.execute(text(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"))).scalar_one()


async def prune(db: Database, cutoff: datetime, batch: int = 1000) -> int:
    """Delete finished rows older than `cutoff` (the endpoints' logs keep the rest)."""
    deleted = 0
    while True:
        async with db.connection() as conn:
            res = await conn.execute(text("""
                DELETE FROM webhook_deliveries WHERE id IN (
                  SELECT id FROM webhook_deliveries
                  WHERE status <> 'pending' AND finished_at < :cutoff
                  LIMIT :batch FOR UPDATE SKIP LOCKED)"""), {"cutoff": cutoff, "batch": batch})
        n = res.rowcount or 0
        deleted += n
        if n < batch:
            return deleted
