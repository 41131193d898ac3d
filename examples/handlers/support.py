"""Auto-reply + forward: the reference's "Route emails > Create an email processing
Worker" example in Python.

Mail to support@<your domain> gets a threaded auto-reply (text + html) from
support@<the receiving domain> and is forwarded to the team; anything else is only
forwarded. Configuration:

    handlers:
      registry:
        - name: support
          target: examples/handlers/support.py
          vars: ["FORWARD_TO=team@example.com"]
"""

from mta.handlers import EmailMessage, MimeMessage


async def email(message, env, ctx):
    forward_to = env.FORWARD_TO
    subject = message.headers.get("subject") or ""
    if message.to.startswith("support@") or message.to.startswith("support+"):
        domain = message.to.rpartition("@")[2]
        reply = MimeMessage(sender=("Support Team", f"support@{domain}"),
                            recipient=message.from_, subject=f"Re: {subject}")
        message_id = message.headers.get("Message-ID")
        if message_id:
            reply.set_header("In-Reply-To", message_id)
            reply.set_header("References", message_id)
        reply.add_message("text/plain", "Thank you for contacting support. Your ticket "
                          "number is 123.\n\nA member of our support team will get back "
                          "to you shortly.")
        reply.add_message("text/html", "<p>Thank you for contacting support. Your ticket "
                          "number is <strong>123</strong>.</p><p>A member of our support "
                          "team will get back to you shortly.</p>")
        await message.reply(EmailMessage(f"support@{domain}", message.from_,
                                         reply.as_raw()))
    await message.forward(forward_to)
