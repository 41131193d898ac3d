"""Hard bounce handling: the reference's "Handle hard bounce emails" in Python.

A bounce notification (by subject or sender) whose text shows a permanent failure puts
the original recipient on the account's suppression list (env.suppressions: the list
the sending path checks) and, when a SUPPRESSION_LIST namespace is configured, records
it there with metadata as the reference does. Other mail is forwarded to ADMIN.

    handlers:
      kv_namespaces: [SUPPRESSION_LIST]
      registry:
        - name: bounces
          target: examples/handlers/bounces.py
          vars: ["ADMIN=admin@example.com"]
"""

import json
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy

BOUNCE_SUBJECTS = ["mail delivery failed", "undelivered mail returned to sender",
                   "delivery status notification", "returned mail", "mail system error"]
BOUNCE_SENDERS = ["mailer-daemon", "mail-daemon", "postmaster", "noreply", "bounce"]
HARD = ["user unknown", "no such user", "invalid recipient", "recipient address rejected",
        "mailbox unavailable", "domain not found", "5.1.1", "5.1.2", "5.4.1"]


def text_of(raw: bytes) -> str:
    # (`email` below is the handler, so the stdlib module is imported by name)
    parsed = message_from_bytes(raw, policy=policy.default)
    parts = []
    for part in parsed.walk():
        if part.get_content_maintype() == "text":
            try:
                parts.append(part.get_content())
            except (LookupError, UnicodeError):
                continue
    return "\n".join(parts)


def is_bounce(message) -> bool:
    subject = (message.headers.get("subject") or "").lower()
    sender = (message.headers.get("from") or message.from_).lower()
    return any(s in subject for s in BOUNCE_SUBJECTS) or \
        any(p in sender for p in BOUNCE_SENDERS)


def bounce_info(content: str) -> dict:
    m = re.search(r"(?:to|for|recipient):\s*<?([^\s<>]+@[^\s<>]+?)>?[:\s]", content, re.I) \
        or re.search(r"^\s+([^\s<>@]+@[^\s<>]+)\s*$", content, re.M)
    reason = "Unknown bounce reason"
    for pattern in (r"diagnostic[- ]code:\s*(.+)", r"reason:\s*(.+)", r"error:\s*(.+)",
                    r"(5\.\d+\.\d+[^.\n]*)"):
        found = re.search(pattern, content, re.I)
        if found:
            reason = found.group(1).strip().split("\n")[0]
            break
    lowered = content.lower()
    return {"type": "hard" if any(i in lowered for i in HARD) else "soft",
            "original_recipient": m.group(1).rstrip(".:") if m else None,
            "reason": reason, "timestamp": datetime.now(UTC).isoformat()}


async def email(message, env, ctx):
    if is_bounce(message):
        info = bounce_info(text_of(bytes(message.raw)))
        if info["type"] == "hard" and info["original_recipient"]:
            address = info["original_recipient"]
            await env.suppressions.add(address, "hard_bounce", note=info["reason"][:200])
            if "SUPPRESSION_LIST" in env:
                await env.SUPPRESSION_LIST.put(address, json.dumps({
                    "type": "hard_bounce", "reason": info["reason"],
                    "timestamp": info["timestamp"], "status": "suppressed"}),
                    metadata={"bounceType": "hard", "addedDate": info["timestamp"]})
            return
    await message.forward(env.ADMIN)
