"""Local development: what would happen to one message, without delivering anything
([Local development > Email routing]; `mta simulate` and the optional dev endpoint).

`simulate()` runs the real rule matching (the routing data in the database) and, for a
`worker` rule, the real handler with the real `env` — except that nothing leaves:
forward() and reply() are checked exactly as in production (verified destination, X-
headers only, every reply rule) and recorded; env.EMAIL.send() is recorded; replies are
shown with their final MIME (threading headers added) but are not DKIM-signed. Key-value
writes do happen (they are the handler's own storage, not delivery).

The message must carry a Message-ID, as the reference's local endpoint requires. Without
authentication checks there is no DMARC result: `dmarc` says which one to assume
(default pass, so reply() can be tried).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mta import replies
from mta.config import Settings
from mta.handlers.env import Env
from mta.handlers.loader import registry_for
from mta.handlers.message import header_fields
from mta.handlers.runner import Execution, execute
from mta.routing.plan import WorkerCall
from mta.routing.recipients import RecipientDirectory
from mta.routing.rules import normalize_address
from mta.store.db import Database

__all__ = ["SimulationError", "format_text", "simulate"]


class SimulationError(ValueError):
    pass


class _DrySendBinding:
    def __init__(self, sent: list[dict[str, Any]]) -> None:
        self.sent = sent

    async def send(self, message: Any) -> str:
        from mta.sending.binding import EmailMessage, EmailMessageBuilder

        if isinstance(message, EmailMessage):
            entry: dict[str, Any] = {"from": message.from_, "to": message.to}
        elif isinstance(message, EmailMessageBuilder):
            entry = message.to_dict()
        else:
            entry = dict(message)
        self.sent.append(entry)
        return "<simulated@localhost>"


def _now() -> datetime:
    return datetime.now(UTC)


async def simulate(settings: Settings, db: Database, *, mail_from: str, rcpt_to: str,
                   raw: bytes, dmarc: str = "pass") -> dict[str, Any]:
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    fields = header_fields(raw)
    if not any(n.lower() == "message-id" for n, _ in fields):
        raise SimulationError("the message must have a Message-ID header")
    verdict = await RecipientDirectory(db, 0).lookup(rcpt_to)
    out: dict[str, Any] = {"from": mail_from, "to": verdict.address,
                           "message_id": next(v for n, v in fields
                                              if n.lower() == "message-id"),
                           "subject": next((v for n, v in fields
                                            if n.lower() == "subject"), None),
                           "dmarc_assumed": dmarc, "rule": None, "actions": [],
                           "replies": [], "sent": [], "delivered": False}
    if verdict.kind == "relay_denied":
        out["smtp_reply"] = replies.RELAY_DENIED.format(domain=verdict.domain).line()
        return out
    if verdict.kind != "accepted" or verdict.match is None or verdict.routing is None:
        out["smtp_reply"] = replies.UNKNOWN_RECIPIENT.format(address=verdict.address).line()
        return out
    rule, routing = verdict.match.rule, verdict.routing
    out["rule"] = {"id": rule.id, "name": rule.name, "match": verdict.match.kind}
    registry = registry_for(settings.handlers)
    reply_line = replies.QUEUED.format(queue_id="(simulated)").line()
    for action in rule.actions:
        if action.type == "forward":
            for dest in action.value:
                ok = normalize_address(dest) in routing.verified
                out["actions"].append({"type": "forward", "to": dest, "source": "rule",
                                       **({} if ok else {"skipped": "not verified"})})
        elif action.type == "drop":
            out["actions"].append({"type": "drop", "source": "rule"})
        elif action.type == "worker":
            call = WorkerCall(verdict.address, verdict.domain, routing.account_id,
                              routing.verified, {}, {}, list(action.value))
            for name in call.names or [""]:
                handler = registry.get(name)
                sent: list[dict[str, Any]] = []
                env = None if handler is None else Env.build(
                    db=db, account_id=routing.account_id, send_binding=_DrySendBinding(sent),
                    kv_namespaces=handler.kv_namespaces, variables=handler.vars)
                run = await execute(handler, name, call, mail_from=mail_from, raw=raw,
                                    dmarc=dmarc, env=env, db=db, keys=None, clock=_now,
                                    can_be_forwarded=bool(settings.srs.domain))
                reply_line = _record(out, run, sent) or reply_line
    out["smtp_reply"] = reply_line
    return out


def _record(out: dict[str, Any], run: Execution, sent: list[dict[str, Any]]) -> str | None:
    """Add one handler run to the result; the SMTP reply it forces, if any."""
    for a in run.actions:
        out["actions"].append({**a, "source": f"handler {run.handler}"})
    for p in run.replies:
        out["replies"].append({"from": p.mail_from, "to": p.rcpt_to,
                               "message_id": p.message_id, "in_reply_to": p.in_reply_to,
                               "mime": p.raw.decode("utf-8", "replace")})
    out["sent"] += sent
    if run.error:
        out["actions"].append({"type": "error", "handler": run.handler,
                               "error_code": run.error, "error": run.error_detail,
                               "fallback": run.fallback, "forward_to": run.forward_to})
        if run.fallback == "forward" and run.forward_to:
            out["actions"].append({"type": "forward", "to": run.forward_to,
                                   "source": "fallback"})
            return None
        return replies.HANDLER_FAILED.line()
    if run.rejected:
        return replies.HANDLER_REJECTED.format(reason=run.rejected).line()
    return None


def format_text(result: dict[str, Any]) -> str:
    """What `mta simulate` prints."""
    lines = [f"message {result['message_id']} from <{result['from']}> to <{result['to']}>"]
    rule = result.get("rule")
    lines.append(f"rule: {rule['name'] or rule['id']} ({rule['match']})" if rule
                 else "rule: none")
    if not result["actions"]:
        lines.append("actions: none")
    for a in result["actions"]:
        rest = {k: v for k, v in a.items() if k not in ("type", "source")}
        lines.append(f"- {a['type']} [{a.get('source', '')}] "
                     + json.dumps(rest, ensure_ascii=False))
    for s in result["sent"]:
        lines.append("- send (env.EMAIL) " + json.dumps(s, ensure_ascii=False, default=str))
    for r in result["replies"]:
        lines.append(f"reply from <{r['from']}> to <{r['to']}> (not DKIM-signed here):")
        lines += ["  | " + line for line in r["mime"].rstrip("\r\n").split("\r\n")]
    lines.append(f"SMTP reply: {result['smtp_reply']}")
    lines.append("nothing was delivered (simulation)")
    return "\n".join(lines)
