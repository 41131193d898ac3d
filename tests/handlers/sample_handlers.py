"""Handlers the tests register (the examples live in examples/handlers/)."""

from __future__ import annotations

import asyncio

from mta.handlers import EmailMessage, MimeMessage, MtaError


def _reply(sender: str, to: str, subject: str = "Re") -> EmailMessage:
    m = MimeMessage(sender=sender, recipient=to, subject=subject)
    m.add_message("text/plain", "auto reply")
    return EmailMessage(sender, to, m.as_raw())


async def reply_rules(message, env, ctx):
    """Breaks the reply rule named by the local part; stores the error code."""
    case = message.to.partition("@")[0].removeprefix("rr-")
    domain = message.to.rpartition("@")[2]
    ours = f"auto@{domain}"
    try:
        if case == "twice":
            await message.reply(_reply(ours, message.from_))
            await message.reply(_reply(ours, message.from_))
        elif case == "rcpt":
            await message.reply(_reply(ours, "someone-else@sender.test"))
        elif case == "domain":
            await message.reply(_reply("auto@second.test", message.from_))
        else:  # dmarc, refs: an otherwise valid reply
            await message.reply(_reply(ours, message.from_))
        code = "none"
    except MtaError as exc:
        code = exc.code
    await env.RESULTS.put(message.to, code)


async def raiser(message, env, ctx):
    raise RuntimeError("handler bug")


async def hanger(message, env, ctx):
    await asyncio.sleep(60)


async def forward_headers(message, env, ctx):
    await message.forward("dest@inbox.test", {"X-Tag": "tagged", "Subject": "replaced",
                                              "Reply-To": "evil@elsewhere.test"})


async def forward_unverified(message, env, ctx):
    try:
        await message.forward("pending@inbox.test")
    except MtaError as exc:
        await env.RESULTS.put(message.to, exc.code)
        message.set_reject(f"not forwarded: {exc.code}")


async def wait_until(message, env, ctx):
    async def later():
        await env.RESULTS.put(message.to, "later")

    ctx.wait_until(later())
    await message.forward("dest@inbox.test")
