"""Bounces in over real SMTP (issue 4): mail sent through the sending path carries a VERP
Return-Path on the sending domain's return-path domain; DSNs and ARF reports sent there
to the node's real MX (router wired) mark the exact delivery bounced / complained and
suppress the recipient. Forged VERP addresses are refused at RCPT with 550 5.1.1.

World: tests/routing/world.py (node A's MX on 127.0.0.1, real DNS, real PostgreSQL, the
inbox.test sink). Reports come from 127.0.0.1 with HELO client.test, whose SPF passes."""

from __future__ import annotations

import asyncio
import smtplib
from datetime import UTC, datetime

from sqlalchemy import select

from mta.queue import dsn
from mta.queue.outcome import Reply
from mta.queue.remote import RemoteDelivery
from mta.sending.domains import RETURN_PATH_LABEL, onboard_sending_domain
from mta.sending.service import SendingService
from mta.store import suppression
from mta.store.models import Delivery, Event, Message, Suppression
from tests.queue.test_bounces import arf_report
from tests.routing.world import world_fixture  # noqa: F401 - the `world` fixture

SENDER = "news@ours.test"
RETURN_PATH = f"{RETURN_PATH_LABEL}.ours.test"
RCPTS = ("dest@inbox.test", "other@inbox.test")


def smtp(node, mail_from: str, rcpt: str, data: bytes) -> tuple[int, str]:
    """One transaction with the stdlib client; the RCPT refusal or the final reply."""
    with smtplib.SMTP(node.host, node.port, local_hostname="client.test", timeout=15) as c:
        c.ehlo()
        code, text = c.mail(mail_from)
        assert code == 250, text
        code, text = c.rcpt(rcpt)
        if code != 250:
            return code, text.decode()
        code, text = c.data(data)
        return code, text.decode()


async def send_over_smtp(node, mail_from: str, rcpt: str, data: bytes) -> tuple[int, str]:
    # The MX runs in this event loop: the blocking client runs in a thread.
    return await asyncio.to_thread(smtp, node, mail_from, rcpt, data)


async def sent(w) -> tuple[dict[str, str], bytes]:
    """Send one message to RCPTS through the sending path; ({rcpt: its VERP return
    path as the destination's MX saw it}, the message as delivered)."""
    async with w.db.session() as s:
        await onboard_sending_domain(s, w.a.settings, "ours.test")
    transport = RemoteDelivery(w.a.ctx.resolver, w.a.settings.node.hostname, port=w.port,
                               connect_timeout=3, command_timeout=5, data_timeout=5)
    service = SendingService(w.a.ctx, transport=transport)
    result = await service.send(w.account_id, {"from": SENDER, "to": list(RCPTS),
                                               "subject": "Newsletter", "text": "Hello.\n"})
    await service.close()
    assert sorted(result.delivered) == sorted(RCPTS)
    got = w.inbox.wait_for(2)
    paths = {m.rcpt_tos[0]: m.mail_from for m in got}
    assert all(p.startswith("bounces+") and p.endswith("@" + RETURN_PATH)
               for p in paths.values()), paths
    return paths, got[0].data


def remote_dsn(original: bytes, verp: str, recipient: str) -> bytes:
    return dsn.compose_dsn(
        "mx.inbox.test", original, verp,
        [dsn.DsnRecipient(recipient, "failed", "5.1.1", Reply(550, "5.1.1", "user unknown"),
                          "mx.inbox.test")],
        arrival_date=datetime.now(UTC), postmaster_address="MAILER-DAEMON@client.test")


async def rows(db, model, *where):
    async with db.session() as s:
        return (await s.execute(select(model).where(*where))).scalars().all()


async def delivery_of(db, rcpt: str) -> Delivery:
    [d] = await rows(db, Delivery, Delivery.recipient == rcpt)
    return d


async def test_dsn_and_arf_to_verp_addresses_mark_bounced_complained_and_suppress(world):
    w = world
    paths, original = await sent(w)

    # A DSN from the null sender (SPF by HELO) to dest's VERP address.
    verp = paths["dest@inbox.test"]
    code, text = await send_over_smtp(w.a, "", verp,
                                      remote_dsn(original, verp, "dest@inbox.test"))
    assert code == 250, text
    dest = await delivery_of(w.db, "dest@inbox.test")
    assert dest.status == "bounced"
    [stored] = await rows(w.db, Message, Message.rcpt_to.contains([verp]))
    assert (stored.direction, stored.mail_from, stored.status) == (
        "inbound", "", "bounce_processed")
    assert stored.auth_results["policy"]["reason"] == "accepted"
    [received] = await rows(w.db, Event, Event.message_id == stored.id)
    assert received.status == "Received" and received.spf == "pass"
    # bounces.py records the outcome once, on the message that was sent
    [failed] = await rows(w.db, Event, Event.status == "Delivery failed")
    assert (failed.message_id, failed.rcpt_to) == (dest.message_id, "dest@inbox.test")

    # An ARF complaint (a feedback loop with an SPF-passing sender) to other's address.
    verp = paths["other@inbox.test"]
    code, text = await send_over_smtp(w.a, "fbl@client.test", verp,
                                      arf_report("other@inbox.test", verp))
    assert code == 250, text
    other = await delivery_of(w.db, "other@inbox.test")
    assert other.status == "complained"
    assert len(await rows(w.db, Event, Event.status == "Complained")) == 1

    sups = {s.email: s for s in await rows(w.db, Suppression)}
    assert set(sups) == set(RCPTS)
    assert (sups["dest@inbox.test"].reason, sups["dest@inbox.test"].read_only) == (
        "hard_bounce", False)
    assert (sups["other@inbox.test"].reason, sups["other@inbox.test"].read_only) == (
        "complaint", True)
    async with w.db.session() as s:  # the sending path now refuses both
        for rcpt in RCPTS:
            assert await suppression.is_suppressed(s, w.account_id, rcpt, "ours.test",
                                                   datetime.now(UTC))


async def test_arf_to_the_fixed_feedback_address_maps_through_the_original_return_path(
        world):
    w = world
    paths, _ = await sent(w)
    report = arf_report("dest@inbox.test", paths["dest@inbox.test"])
    code, text = await send_over_smtp(w.a, "fbl@client.test", f"fbl@{RETURN_PATH}", report)
    assert code == 250, text
    assert (await delivery_of(w.db, "dest@inbox.test")).status == "complained"
    assert (await delivery_of(w.db, "other@inbox.test")).status == "delivered"
    [sup] = await rows(w.db, Suppression)
    assert (sup.email, sup.reason, sup.read_only) == ("dest@inbox.test", "complaint", True)


async def test_forged_verp_and_unknown_addresses_are_refused_550_511_at_rcpt(world):
    w = world
    paths, original = await sent(w)
    verp = paths["dest@inbox.test"]
    did = verp.split("+", 1)[1].split("-", 1)[0]
    other_id = paths["other@inbox.test"].split("+", 1)[1].split("-", 1)[0]
    forged = [verp.replace(f"+{did}-", f"+{other_id}-"),  # someone else's token
              f"nobody@{RETURN_PATH}"]
    for address in forged:
        code, text = await send_over_smtp(w.a, "", address,
                                          remote_dsn(original, address, "dest@inbox.test"))
        assert code == 550 and text.startswith("5.1.1"), (address, code, text)
    assert {d.status for d in await rows(w.db, Delivery)} == {"delivered"}
    assert await rows(w.db, Suppression) == []
    assert await rows(w.db, Message, Message.direction == "inbound") == []
