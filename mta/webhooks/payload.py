"""The JSON body of a webhook POST, built from the outbox row's copy of its event.

    {"id": "1234", "type": "bounced", "created_at": "2026-12-07T05:00:00.123456Z",
     "account_id": "...", "message_id": "<uuid: the queue id of the 250 / send reply>",
     "direction": "outbound", "sender": "a@example.com", "recipient": "b@example.net",
     "subject": "...", "zone_id": null, "rule_id": null,
     "bounce": {"type": "hard"},          # bounced only: hard | soft
     "details": {...}}                    # the activity event's details (reply, mx_host ...)

`id` is the activity event's id: the same for every endpoint and every retry, so a
receiver drops duplicates by it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["EVENT_TYPES", "body", "event_body", "test_body"]

# What `webhook_event_type()` (migration 0012) yields; an endpoint subscribes to some
# or (by default) all of them.
EVENT_TYPES = ("sent", "delivered", "deferred", "bounced", "complained", "suppressed",
               "inbound.forwarded", "inbound.rejected")


def _time(value: str | None) -> str | None:
    return value.replace("+00:00", "Z") if isinstance(value, str) else value


def bounce_type(event: dict[str, Any]) -> str:
    """soft: the queue gave up after temporary (4xx) replies; hard: a permanent refusal
    (5xx, or a bounce report of a permanent failure)."""
    details = event.get("details") or {}
    return "soft" if details.get("expired") else "hard"


def event_body(event_type: str, event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(event.get("id")), "type": event_type, "created_at": _time(event.get("ts")),
        "account_id": event.get("account_id"), "message_id": event.get("message_id"),
        "direction": event.get("direction"), "sender": event.get("mail_from"),
        "recipient": event.get("rcpt_to"), "subject": event.get("subject"),
        "zone_id": event.get("zone_id"), "rule_id": event.get("rule_id"),
    }
    if event_type == "bounced":
        out["bounce"] = {"type": bounce_type(event)}
    out["details"] = event.get("details") or {}
    return out


def body(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def test_body(account_id: str, event_id: str, now_iso: str) -> dict[str, Any]:
    """The `test` event an operator sends to check an endpoint and its secret."""
    return {"id": event_id, "type": "test", "created_at": now_iso, "account_id": account_id,
            "message_id": None, "direction": None, "sender": None, "recipient": None,
            "subject": None, "zone_id": None, "rule_id": None, "details": {}}
