"""Running handlers in-session: the `worker` action of a routing rule (MISSION R7).

`InboundRouter.route()` hands the recipients whose rule says `worker` to
`HandlerRunner.run()` before anything is stored. For each recipient and handler name,
`execute()` builds the message object, `env` and `ctx`, and awaits
`email(message, env, ctx)` within the handler's time limit. The handler's actions are
collected, not yet carried out; then, for the whole message:

- a handler raised, ran past its limit or is not registered -> its fallback:
  `reject_4xx` (default): the message is stored (status `handler_failed`) with an `Error`
  event per recipient, nothing the handlers did is sent, and the client gets
  451 4.3.0 so it retries; `forward`: the message is forwarded unchanged to
  `forward_to` through the forwarding path, `Error` event, 250;
- a handler called `set_reject(reason)` -> 550 5.7.1 <reason>, `Rejected` events, the
  message is not stored and nothing is forwarded (a reply made before the rejection,
  e.g. to explain it, is still sent);
- otherwise each `forward()` becomes a forwarding target of the router (SRS, ARC, DKIM,
  loop and DMARC-safe checks, in-session attempt, Forwarded events: the very path of a
  forwarding rule), each `reply()` is staged in the message's transaction, and a
  `Handled` event lists the actions taken.

`Error` events carry `error_code`: E_HANDLER_EXCEPTION, E_HANDLER_TIMEOUT or
E_HANDLER_NOT_FOUND. These name an outcome in the activity log, never an MtaError
raised to a caller, so they are not rows of mta/errors.py (whose 4xx set is pinned by
tests/sending/test_errors.py); the SMTP reply is replies.HANDLER_FAILED.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mta import replies
from mta.checks.results import AuthResults
from mta.errors import MtaError
from mta.handlers.env import Env, ExecutionContext
from mta.handlers.loader import HandlerLoadError, LoadedHandler, Registry, registry_for
from mta.handlers.message import (
    EmailMessage,
    EmailSendResult,
    ForwardableEmailMessage,
    Headers,
    header_fields,
)
from mta.handlers.replies import PreparedReply, check_reply_rules, prepare_reply, stage_reply
from mta.observe.events import record_events, record_events_now
from mta.routing.plan import Routed, WorkerCall
from mta.routing.rules import normalize_address
from mta.store.models import Message

__all__ = ["Execution", "HandlerRunner", "execute"]

log = logging.getLogger("mta.handlers")

_X_NAME = re.compile(r"X-[A-Za-z0-9\-_]{1,98}", re.IGNORECASE)


@dataclass
class Execution:
    """What one handler did for one recipient."""

    handler: str
    rcpt: str
    actions: list[dict[str, Any]] = field(default_factory=list)
    forwards: list[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=list)
    replies: list[PreparedReply] = field(default_factory=list)
    rejected: str | None = None
    error: str | None = None  # E_HANDLER_EXCEPTION | E_HANDLER_TIMEOUT | E_HANDLER_NOT_FOUND
    error_detail: str | None = None
    duration_ms: int = 0
    fallback: str = "reject_4xx"
    forward_to: str | None = None


class _Actions:
    """forward()/reply() of one event: checked at once, carried out by the caller."""

    def __init__(self, run: Execution, call: WorkerCall, *, dmarc: str, db: Any,
                 keys: Any, clock: Callable[[], Any]) -> None:
        self.run, self.call, self.dmarc = run, call, dmarc
        self.db, self.keys, self.clock = db, keys, clock
        self.replied = False

    async def forward(self, message: ForwardableEmailMessage, rcpt_to: str,
                      headers: Headers) -> EmailSendResult:
        dest = normalize_address(rcpt_to.strip().strip("<>"))
        if dest not in self.call.verified:
            raise MtaError("E_FORWARD_DESTINATION_NOT_VERIFIED", f"{rcpt_to} is not a "
                           "verified destination address.", field="rcpt_to")
        added: list[tuple[str, str]] = []
        removed: list[str] = []
        for name, value in headers:
            if not name.lower().startswith("x-"):
                removed.append(name)  # [Forward with custom headers]: "Other headers
                continue              # are removed."
            if not _X_NAME.fullmatch(name):
                raise MtaError("E_HEADER_NAME_INVALID", f"Header name {name!r} is invalid.")
            if "\r" in value or "\n" in value or len(value.encode()) > 2048 or not value:
                raise MtaError("E_HEADER_VALUE_INVALID", f"Header {name!r} has an invalid "
                               "value.")
            added.append((name, value))
        if removed:
            log.info("forward(): non-X- headers removed: %s", ", ".join(removed),
                     extra={"event": "handlers.headers_removed"})
        self.run.forwards.append((dest, tuple(added)))
        self.run.actions.append({"type": "forward", "to": dest, "headers": added,
                                 **({"removed_headers": removed} if removed else {})})
        return EmailSendResult(message.headers.get("Message-ID") or "")

    async def reply(self, message: ForwardableEmailMessage,
                    reply: EmailMessage) -> EmailSendResult:
        if not isinstance(reply, EmailMessage):
            raise TypeError("reply() takes EmailMessage(from, to, raw)")
        check_reply_rules(message, reply, dmarc_result=self.dmarc,
                          already_replied=self.replied)
        prepared = await prepare_reply(message, reply, db=self.db, keys=self.keys,
                                       account_id=self.call.account_id, now=self.clock())
        self.replied = True
        self.run.replies.append(prepared)
        self.run.actions.append({"type": "reply", "to": prepared.rcpt_to,
                                 "from": prepared.mail_from,
                                 "message_id": prepared.message_id,
                                 "in_reply_to": prepared.in_reply_to,
                                 "signed_by": list(prepared.signed_by)})
        return EmailSendResult(prepared.message_id)


async def execute(handler: LoadedHandler | None, name: str, call: WorkerCall, *,
                  mail_from: str, raw: bytes, dmarc: str, env: Env | None, db: Any,
                  keys: Any, clock: Callable[[], Any], can_be_forwarded: bool,
                  background: set[asyncio.Task] | None = None) -> Execution:
    """Run one handler for one recipient; never raises."""
    run = Execution(name, call.rcpt)
    if handler is None:
        run.error, run.error_detail = "E_HANDLER_NOT_FOUND", f"no handler named {name!r}"
        return run
    run.fallback, run.forward_to = handler.fallback, handler.forward_to
    actions = _Actions(run, call, dmarc=dmarc, db=db, keys=keys, clock=clock)
    message = ForwardableEmailMessage(mail_from=mail_from, rcpt_to=call.rcpt, raw=raw,
                                      actions=actions, can_be_forwarded=can_be_forwarded)
    ctx = ExecutionContext()
    started = time.monotonic()
    try:
        await asyncio.wait_for(handler.function(message, env, ctx), handler.time_limit)
    except TimeoutError:
        run.error = "E_HANDLER_TIMEOUT"
        run.error_detail = f"no result within {handler.time_limit:g}s"
    except Exception as exc:  # the handler's bug must not lose the message
        run.error = "E_HANDLER_EXCEPTION"
        code = f"{exc.code}: " if isinstance(exc, MtaError) else ""
        run.error_detail = f"{type(exc).__name__}: {code}{exc}"[:2000]
        log.warning("handler %s raised for %s: %s", name, call.rcpt, run.error_detail,
                    extra={"event": "handlers.exception",
                           "traceback": traceback.format_exc(limit=8)})
    run.duration_ms = int((time.monotonic() - started) * 1000)
    remaining = handler.time_limit - (time.monotonic() - started)
    if ctx.tasks:
        if background is None:
            await ctx.settle(remaining)
        else:
            task = asyncio.create_task(ctx.settle(remaining))
            background.add(task)
            task.add_done_callback(background.discard)
    if run.error is None:
        run.rejected = message.rejected
        if run.rejected:
            run.actions.append({"type": "reject", "reason": run.rejected})
    return run


class _LazySendBinding:
    """env.EMAIL: the account's SendBinding, made on first use (most handlers never
    send, and the sending service is not free to build)."""

    def __init__(self, runner: HandlerRunner, account_id: str | None) -> None:
        self._runner, self._account_id = runner, account_id

    async def send(self, message: Any) -> str:
        from mta.sending.binding import SendBinding

        if not self._account_id:
            raise MtaError("E_SENDER_DOMAIN_NOT_AVAILABLE", "This message belongs to no "
                           "account.")
        return await SendBinding(self._runner.sending(), self._account_id).send(message)


class HandlerRunner:
    def __init__(self, router: Any, resolver: Any) -> None:
        self.router = router
        self.settings = router.settings
        self.db = router.db
        self.resolver = resolver
        self._registry = registry_for(self.settings.handlers)  # raises: fail at start
        self._sending: Any = None
        self.background: set[asyncio.Task] = set()

    @property
    def registry(self) -> Registry:
        hs = self.settings.handlers
        if self._registry.settings is not hs:  # reloaded (SIGHUP)
            try:
                self._registry = registry_for(hs)
            except HandlerLoadError as exc:
                log.error("handlers could not be loaded, keeping the previous ones: %s",
                          exc, extra={"event": "handlers.load_failed"})
                self._registry.settings = hs
        return self._registry

    @property
    def active(self) -> bool:
        return self.registry.active

    def sending(self) -> Any:
        if self._sending is None:
            from mta.sending.service import SendingService

            ctx = SimpleNamespace(settings=self.settings, db=self.db, resolver=self.resolver,
                                  node_id=self.settings.node.node_id or
                                  self.settings.node.hostname, clock=self.router.clock)
            self._sending = SendingService(ctx)
        return self._sending

    def env_for(self, handler: LoadedHandler | None, call: WorkerCall) -> Env | None:
        if handler is None:
            return None
        return Env.build(db=self.db, account_id=call.account_id,
                         send_binding=_LazySendBinding(self, call.account_id),
                         kv_namespaces=handler.kv_namespaces, variables=handler.vars)

    # -- one message ---------------------------------------------------------------------

    async def run(self, plan: Any, ctx: Any, *, mail_from: str, raw: bytes,
                  auth: AuthResults) -> Any:
        """Run every handler of `plan.workers`; returns a Routed refusal (events
        written) or None with the plan extended (targets, events, stages)."""
        reg = self.registry
        runs: list[tuple[WorkerCall, Execution]] = []
        can_forward = self.router.forwarder.srs is not None
        for call in plan.workers:
            for name in call.names or [""]:
                handler = reg.get(name)
                runs.append((call, await execute(
                    handler, name, call, mail_from=mail_from, raw=raw,
                    dmarc=auth.dmarc_result, env=self.env_for(handler, call), db=self.db,
                    keys=self.router.forwarder.keys, clock=self.router.clock,
                    can_be_forwarded=can_forward, background=self.background)))
        failed = [(c, r) for c, r in runs if r.error]
        if any(r.fallback != "forward" or not r.forward_to for _, r in failed):
            reply = replies.HANDLER_FAILED
            await self._store_failed(runs, ctx, mail_from, raw, auth, reply)
            return Routed(reply, None, {"refused": "handler_error"})
        rejecting = next((r for _, r in runs if r.rejected), None)
        if rejecting is not None and not failed:
            reply = replies.HANDLER_REJECTED.format(reason=rejecting.rejected)
            await self._rejected(runs, ctx, reply)
            return Routed(reply, None, {"refused": "handler_rejected"})
        for call, run in runs:
            details = self._details(call, run)
            if run.error:  # fallback forward: the message unchanged to forward_to
                assert run.forward_to is not None
                details.update(fallback="forward", forward_to=run.forward_to)
                self.router._add_target(plan, normalize_address(run.forward_to), call.rcpt,
                                        call.cols, call.domain, "forward",
                                        {**call.info, "handler_fallback": run.handler})
                plan.event("Error", call.rcpt, call.cols, details)
                continue
            for dest, headers in run.forwards:
                self.router._add_target(plan, dest, call.rcpt, call.cols, call.domain,
                                        "forward", {**call.info, "handler": run.handler},
                                        headers=headers)
            plan.event("Handled", call.rcpt, call.cols, details)
            if run.replies:
                plan.stages.append(self._stager(call, run))
        return None

    @staticmethod
    def _details(call: WorkerCall, run: Execution) -> dict[str, Any]:
        d: dict[str, Any] = {**call.info, "handler": run.handler, "actions": run.actions,
                             "duration_ms": run.duration_ms}
        if run.error:
            d.update(error_code=run.error, error=run.error_detail)
        return d

    def _stager(self, call: WorkerCall, run: Execution):
        async def stage(session: AsyncSession, message: Message) -> None:
            for prepared in run.replies:
                await stage_reply(session, prepared, account_id=call.account_id,
                                  incoming=message, now=self.router.clock(),
                                  details={"handler": run.handler, "rcpt": call.rcpt})
        return stage

    async def _store_failed(self, runs: list[tuple[WorkerCall, Execution]], ctx: Any,
                            mail_from: str, raw: bytes, auth: AuthResults,
                            reply: Any) -> None:
        """Fallback reject_4xx: keep the message (status handler_failed) and say why,
        in one transaction; the client is told 451 and retries."""
        first = runs[0][0]
        rows: list[dict[str, Any]] = []
        for call, run in runs:
            details = {**self._details(call, run), "reply": reply.line(),
                       "fallback": "reject_4xx"}
            if not run.error:
                details.update(reason="another handler of this message failed",
                               actions_discarded=True)
            rows += ctx.rows("Error", call.rcpt, call.cols, details)
        message = Message(
            direction="inbound", source="mx", account_id=first.account_id,
            message_id_header=next((v for n, v in header_fields(raw)
                                    if n.lower() == "message-id"), "")[:998] or None,
            mail_from=mail_from, rcpt_to=list(dict.fromkeys(c.rcpt for c, _ in runs)),
            raw=raw, size=len(raw), session_id=ctx.session_id,
            auth_results=auth.to_json(), status="handler_failed")
        try:
            async with self.db.session() as s:
                s.add(message)
                await s.flush()
                for row in rows:
                    row["message_id"] = message.id
                await record_events(s, rows)
        except Exception as exc:  # still 451: the client keeps the message
            log.error("could not keep a message whose handler failed: %s", exc,
                      extra={"event": "handlers.store_failed"})
            await record_events_now(self.db, rows)

    async def _rejected(self, runs: list[tuple[WorkerCall, Execution]], ctx: Any,
                        reply: Any) -> None:
        rows: list[dict[str, Any]] = []
        sends = [(c, r) for c, r in runs if r.replies]
        for call, run in runs:
            details = {**self._details(call, run), "reply": reply.line()}
            if run.forwards:
                details["forwards_discarded"] = True
            rows += ctx.rows("Rejected", call.rcpt, call.cols, details)
        await record_events_now(self.db, rows)
        if not sends:
            return
        try:  # a reply explaining the rejection still goes out
            async with self.db.session() as s:
                for call, run in sends:
                    for prepared in run.replies:
                        await stage_reply(s, prepared, account_id=call.account_id,
                                          incoming=None, now=self.router.clock(),
                                          details={"handler": run.handler,
                                                   "rcpt": call.rcpt})
        except Exception as exc:
            log.error("could not send the reply of a rejecting handler: %s", exc,
                      extra={"event": "handlers.reply_failed"})
