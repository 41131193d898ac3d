"""The values of one routed message: the plan per recipient, its targets, the result.

`mta.routing.inbound.InboundRouter` builds a `Plan` from the recipients' rules, the
handler runner (`mta.handlers.runner`) adds to it, and `mta.routing.staging` turns it into
the rows of the message's transaction. `Routed` is what the MX listener gets back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mta.observe.events import event_rows
from mta.queue.dsnparams import (
    Dsn,
    RcptDsn,
    merge_notify,
    notify_wants,
    orcpt_for,
    without_success,
)
from mta.queue.outcome import RecipientOutcome
from mta.replies import Reply
from mta.store.db import Unit
from mta.store.models import Message

__all__ = ["Attempt", "EventContext", "Plan", "Routed", "Target", "WorkerCall"]


@dataclass
class Target:
    """One forwarding destination and who it is for."""

    destination: str
    recipients: list[str]  # the original recipients that lead here
    per_rcpt: dict[str, dict[str, Any]]  # event columns per recipient (rule, zone, action)
    routing_domain: str | None
    kind: str = "forward"  # forward | srs (a bounce sent on to the original sender)
    headers: tuple[tuple[str, str], ...] = ()  # issue 7: X- headers of a handler's forward()


@dataclass
class WorkerCall:
    """One recipient whose rule runs handlers (what the plan hands to the handlers)."""

    rcpt: str
    domain: str
    account_id: str | None
    verified: frozenset[str]
    cols: dict[str, Any]
    info: dict[str, Any]
    names: list[str]


@dataclass
class Routed:
    reply: Reply | None = None  # refuse with this; nothing to store
    _stage: Callable[[Unit, dict[str, Any]], Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    delivered: bool = False  # the in-session forward was accepted by the next hop

    async def stage(self, unit: Unit, message: dict[str, Any]) -> None:
        """Add the deliveries, events and final status of `message` (its row) to the
        unit that stores it."""
        if self._stage is not None:
            await self._stage(unit, message)


@dataclass
class Plan:
    targets: dict[str, Target] = field(default_factory=dict)
    events: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    handlers: bool = False
    unconfigured: bool = False
    # issue 7: recipients whose rule runs handlers, and what they add to the transaction
    workers: list[Any] = field(default_factory=list)
    stages: list[Callable[[AsyncSession, Message], Any]] = field(default_factory=list)
    bounces: list[str] = field(default_factory=list)  # issue 4: VERP/feedback recipients
    dsn: Dsn = field(default_factory=Dsn)  # RFC 3461: what the sender asked of DSNs

    def target_dsn(self, t: Target) -> RcptDsn:
        """NOTIFY and ORCPT of a forward. NOTIFY merges those of every recipient leading
        to it (`merge_notify`: one recipient's NEVER must not silence another's FAILURE).
        ORCPT is the first recipient's: the next hop takes one per RCPT, so its DSN
        names that recipient even when it stands for several — acceptable, since every
        DSN goes to the one envelope sender. The recipient is rewritten, so ORCPT names
        it when the sender gave none (RFC 3461 §4.2, §5.2.7.2). A recipient forwarded to
        several destinations is a multiple-recipient alias (§5.2.7.3): its SUCCESS
        request is answered by one `expanded` DSN (`expanded()`), not passed on to every
        destination."""
        expanded = set(self.expanded())
        notify = merge_notify([
            without_success(self.dsn.rcpt(r).notify) if r in expanded
            else self.dsn.rcpt(r).notify for r in t.recipients])
        first = t.recipients[0]
        return RcptDsn(notify, self.dsn.rcpt(first).orcpt or orcpt_for(first))

    def expanded(self) -> list[str]:
        """The recipients forwarded to more than one destination that asked
        NOTIFY=SUCCESS: each gets an `expanded` DSN when the message is accepted."""
        fanout: dict[str, int] = {}
        for t in self.targets.values():
            for rcpt in t.recipients:
                fanout[rcpt] = fanout.get(rcpt, 0) + 1
        return [r for r, n in fanout.items()
                if n > 1 and notify_wants(self.dsn.rcpt(r).notify, "SUCCESS")]

    def event(self, status: str, rcpt: str, cols: dict[str, Any], details: dict[str, Any]):
        self.events.append((status, rcpt, cols, details))


@dataclass(frozen=True)
class Attempt:
    outcome: RecipientOutcome
    started: datetime
    finished: datetime


@dataclass(frozen=True)
class EventContext:
    mail_from: str
    subject: str | None
    auth: dict[str, str]
    session_id: str | None

    def rows(self, status: str, rcpt: str, cols: dict[str, Any], details: dict[str, Any],
             message_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
        public = {k: v for k, v in cols.items() if not k.startswith("_")}
        return event_rows(direction="inbound", status=status, recipients=[rcpt],
                          mail_from=self.mail_from, message_id=message_id,
                          subject=self.subject, auth=self.auth,
                          per_recipient={rcpt: public},
                          details={**details, "session_id": self.session_id})
