"""Storing mail and tickets: the reference's "Email storage and processing > Store
emails in KV" in Python.

Every message is stored in the EMAILS namespace; mail to support@ also creates a ticket
in SUPPORT_TICKETS, gets a threaded auto-reply with the ticket number and is forwarded
to SUPPORT_TEAM; other mail is forwarded to GENERAL.

    handlers:
      kv_namespaces: [EMAILS, SUPPORT_TICKETS]
      registry:
        - name: storage
          target: examples/handlers/storage.py
          vars: ["SUPPORT_TEAM=support-team@example.com", "GENERAL=general@example.com"]
"""

import json
import secrets
import time
from datetime import UTC, datetime

from mta.handlers import EmailMessage, MimeMessage


async def email(message, env, ctx):
    email_id = f"email-{int(time.time() * 1000)}-{secrets.token_hex(5)}"
    raw = await message.raw.read()
    await env.EMAILS.put(email_id, json.dumps({
        "id": email_id, "from": message.from_, "to": message.to,
        "subject": message.headers.get("subject"),
        "timestamp": datetime.now(UTC).isoformat(), "size": message.raw_size,
        "rawContent": raw.decode("utf-8", "replace"), "processed": False}),
        metadata={"from": message.from_, "to": message.to})
    if message.to.startswith("support@"):
        await handle_support(message, env, email_id)
    else:
        await message.forward(env.GENERAL)


async def handle_support(message, env, email_id):
    ticket_id = f"TICKET-{int(time.time() * 1000)}"
    now = datetime.now(UTC).isoformat()
    subject = message.headers.get("subject")
    await env.SUPPORT_TICKETS.put(ticket_id, json.dumps({
        "id": ticket_id, "emailId": email_id, "from": message.from_, "subject": subject,
        "status": "open", "priority": "normal", "createdAt": now, "updatedAt": now}),
        metadata={"status": "open"})
    reply = MimeMessage(sender=message.to, recipient=message.from_,
                        subject=f"Support Ticket Created: {ticket_id}")
    message_id = message.headers.get("Message-ID")
    if message_id:
        reply.set_header("In-Reply-To", message_id)
        reply.set_header("References", message_id)
    reply.add_message("text/html", f"<h1>Support Ticket Created</h1><p>Your support "
                      f"request has been received and assigned ticket number: "
                      f"<strong>{ticket_id}</strong></p><hr><p><em>Original subject: "
                      f"{subject}</em></p>")
    await message.reply(EmailMessage(message.to, message.from_, reply.as_raw()))
    await message.forward(env.SUPPORT_TEAM)
