"""`env` and `ctx`, the second and third arguments of `email(message, env, ctx)`.

`env` ([Workers API > Parameters]: "Worker environment bindings (KV, EMAIL, etc.)"):
- `env.EMAIL`: the send binding (`mta.sending.binding.SendBinding` of the account that
  owns the receiving domain): `await env.EMAIL.send(EmailMessageBuilder(...))`;
- `env.<NAMESPACE>`: a key-value namespace (`mta.handlers.kv.KvNamespace`) for each name
  in `handlers.kv_namespaces` / the handler's own `kv_namespaces`;
- `env.<NAME>`: each configured variable (`handlers.vars`, "NAME=value"), a string;
- `env.suppressions`: the account's suppression list (the real one the sending path
  checks): `await env.suppressions.add(address, reason="hard_bounce", note=...)`,
  `await env.suppressions.is_suppressed(address)`.
`env["NAME"]` works as well as `env.NAME`.

`ctx.wait_until(awaitable)`: work that may finish after the handler returned (the SMTP
reply does not wait for it); it is still bounded by the handler's time limit and its
failures are logged, never turned into the message's outcome.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

from mta.handlers.kv import KvNamespace
from mta.store import suppression
from mta.store.db import Database

__all__ = ["Env", "ExecutionContext", "SuppressionBinding"]

log = logging.getLogger("mta.handlers")


class SuppressionBinding:
    def __init__(self, db: Database, account_id: str | None) -> None:
        self.db = db
        self.account_id = account_id

    def _account(self) -> str:
        if not self.account_id:
            raise RuntimeError("this message belongs to no account")
        return self.account_id

    async def add(self, address: str, reason: str = "hard_bounce", *,
                  note: str | None = None) -> None:
        from datetime import UTC, datetime

        async with self.db.session() as s:
            await suppression.add(s, self._account(), address, reason,
                                  now=datetime.now(UTC), note=note)

    async def is_suppressed(self, address: str) -> bool:
        from datetime import UTC, datetime

        async with self.db.session() as s:
            hits = await suppression.suppressed_among(s, self._account(), [address.lower()],
                                                      None, datetime.now(UTC))
        return bool(hits)


class Env:
    def __init__(self, bindings: dict[str, Any]) -> None:
        self._bindings = dict(bindings)

    @classmethod
    def build(cls, *, db: Database, account_id: str | None, send_binding: Any,
              kv_namespaces: tuple[str, ...], variables: dict[str, str]) -> Env:
        bindings: dict[str, Any] = dict(variables)
        for ns in kv_namespaces:
            bindings[ns] = KvNamespace(db, ns)
        bindings["EMAIL"] = send_binding
        bindings["suppressions"] = SuppressionBinding(db, account_id)
        return cls(bindings)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_bindings"][name]
        except KeyError:
            raise AttributeError(f"env has no binding {name!r} (configure it under "
                                 "handlers: vars / kv_namespaces)") from None

    def __getitem__(self, name: str) -> Any:
        return self._bindings[name]

    def __contains__(self, name: object) -> bool:
        return name in self._bindings

    def get(self, name: str, default: Any = None) -> Any:
        return self._bindings.get(name, default)

    def __repr__(self) -> str:
        return f"<Env {sorted(self._bindings)}>"


class ExecutionContext:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        if not inspect.isawaitable(awaitable):
            raise TypeError("wait_until takes an awaitable")
        task = asyncio.ensure_future(awaitable)
        task.add_done_callback(_log_failure)
        self.tasks.append(task)

    waitUntil = wait_until  # noqa: N815 - the reference's name

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) for the wait_until work; what is left is cancelled."""
        if not self.tasks:
            return
        _done, pending = await asyncio.wait(self.tasks, timeout=max(timeout, 0.01))
        for t in pending:
            t.cancel()


def _log_failure(task: asyncio.Task) -> None:
    if task.cancelled():
        log.warning("ctx.wait_until work cancelled at the time limit",
                    extra={"event": "handlers.wait_until_cancelled"})
    elif task.exception() is not None:
        log.warning("ctx.wait_until work failed: %r", task.exception(),
                    extra={"event": "handlers.wait_until_failed"})
