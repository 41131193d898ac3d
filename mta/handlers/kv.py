"""A key-value store for handlers, in PostgreSQL (the reference's KV namespaces, as the
[Email storage and processing] and [Handle hard bounce emails] examples use them).

    tickets = env.SUPPORT_TICKETS              # a configured namespace
    await tickets.put("TICKET-1", json.dumps(data), metadata={"status": "open"})
    value = await tickets.get("TICKET-1")               # str | None
    data = await tickets.get("TICKET-1", type="json")   # parsed
    value, meta = await tickets.get_with_metadata("TICKET-1")
    page = await tickets.list(prefix="TICKET-", limit=100)   # {"keys": [...], ...}
    await tickets.delete("TICKET-1")

Values are stored as bytes (str is UTF-8); metadata is JSON; `expiration_ttl` (seconds)
makes a key disappear after that long (expired keys read as absent and are removed by
the next write to the namespace). Every node shares the store through the database.

The table (`handler_kv`) is created by migration 0006_handlers; it is described here
with SQLAlchemy Core so this module does not depend on the ORM models.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB, insert

from mta.store.db import Database

__all__ = ["KvNamespace", "handler_kv"]

MAX_KEY_BYTES = 512  # as the reference's KV
MAX_VALUE_BYTES = 25 * 1024 * 1024
MAX_METADATA_BYTES = 1024

_metadata = MetaData()
handler_kv = Table(
    "handler_kv", _metadata,
    Column("namespace", String(64), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("metadata", JSONB),
    Column("expires_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def _now() -> datetime:
    return datetime.now(UTC)


class KvNamespace:
    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    def _live(self, now: datetime):
        t = handler_kv.c
        return and_(t.namespace == self.namespace,
                    or_(t.expires_at.is_(None), t.expires_at > now))

    async def get(self, key: str, type: str = "text") -> Any:  # noqa: A002 - KV's name
        value, _ = await self.get_with_metadata(key, type)
        return value

    async def get_with_metadata(self, key: str, type: str = "text"  # noqa: A002
                                ) -> tuple[Any, dict | None]:
        t = handler_kv.c
        async with self.db.session() as s:
            row = (await s.execute(select(t.value, t.metadata).where(
                self._live(_now()), t.key == key))).first()
        if row is None:
            return None, None
        raw = bytes(row.value)
        if type in ("bytes", "arrayBuffer"):
            value: Any = raw
        elif type == "json":
            value = json.loads(raw.decode("utf-8"))
        elif type == "text":
            value = raw.decode("utf-8")
        else:
            raise ValueError("type must be text, json or bytes")
        return value, row.metadata

    async def put(self, key: str, value: str | bytes | dict | list, *,
                  metadata: dict | None = None, expiration_ttl: float | None = None) -> None:
        if not key or len(key.encode()) > MAX_KEY_BYTES:
            raise ValueError(f"a key must be 1 to {MAX_KEY_BYTES} bytes")
        if isinstance(value, dict | list):
            value = json.dumps(value)
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(data) > MAX_VALUE_BYTES:
            raise ValueError("the value is larger than 25 MiB")
        if metadata is not None and len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise ValueError("metadata is larger than 1024 bytes of JSON")
        now = _now()
        expires = now + timedelta(seconds=expiration_ttl) if expiration_ttl else None
        t = handler_kv.c
        async with self.db.session() as s:
            await s.execute(delete(handler_kv).where(
                t.namespace == self.namespace, t.expires_at <= now))
            stmt = insert(handler_kv).values(namespace=self.namespace, key=key, value=data,
                                             metadata=metadata, expires_at=expires,
                                             updated_at=now)
            await s.execute(stmt.on_conflict_do_update(
                index_elements=["namespace", "key"],
                set_={"value": data, "metadata": metadata, "expires_at": expires,
                      "updated_at": now}))

    async def delete(self, key: str) -> None:
        t = handler_kv.c
        async with self.db.session() as s:
            await s.execute(delete(handler_kv).where(t.namespace == self.namespace,
                                                     t.key == key))

    async def list(self, prefix: str = "", limit: int = 1000,
                   cursor: str | None = None) -> dict[str, Any]:
        """{"keys": [{"name", "metadata", "expiration"}], "list_complete", "cursor"};
        keys in byte order, `cursor` is the last name of the previous page."""
        limit = max(1, min(int(limit), 1000))
        t = handler_kv.c
        q = select(t.key, t.metadata, t.expires_at).where(self._live(_now()))
        if prefix:
            q = q.where(t.key.startswith(prefix, autoescape=True))
        if cursor:
            q = q.where(t.key.collate("C") > cursor)
        async with self.db.session() as s:
            rows = (await s.execute(q.order_by(t.key.collate("C")).limit(limit + 1))).all()
        page = rows[:limit]
        keys = [{"name": r.key, "metadata": r.metadata,
                 "expiration": int(r.expires_at.timestamp()) if r.expires_at else None}
                for r in page]
        done = len(rows) <= limit
        return {"keys": keys, "list_complete": done,
                "cursor": None if done else page[-1].key}

    def __repr__(self) -> str:
        return f"<KvNamespace {self.namespace}>"
