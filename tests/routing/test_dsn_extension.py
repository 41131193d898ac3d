"""The DSN extension end to end (RFC 3461), over real sockets: a sender asks at our MX
(RET, ENVID, NOTIFY, ORCPT); we pass the request on with the forward to a next hop
that offers DSN, and honour it in the DSNs we send ourselves to the sender's MX
(sender.test -> the `sender_mx` sink) when the next hop does not, or when delivery
fails later from the queue."""

from __future__ import annotations

import asyncio
import email
from collections import deque
from datetime import timedelta

import aiosmtplib
import pytest
from sqlalchemy import select

from mta.store.models import Delivery, Message
from tests.routing.world import world_fixture  # noqa: F401 - the `world` fixture
from tests.smtp.conftest import dkim_sign, make_message

BODY_MARK = "The body the sender wrote."


async def send(node, raw: bytes, mail_options=(), rcpt_options=(),
               rcpts=("user@ours.test",)) -> str:
    client = aiosmtplib.SMTP(hostname=node.host, port=node.port, timeout=15,
                             start_tls=False, local_hostname="client.test")
    await client.connect()
    try:
        _, text = await client.sendmail("alice@sender.test", list(rcpts), raw,
                                        mail_options=list(mail_options),
                                        rcpt_options=list(rcpt_options))
    finally:
        await client.quit()
    return text


def signed(w) -> bytes:
    return dkim_sign(make_message("alice@sender.test", body=BODY_MARK + "\r\n"),
                     "sender.test", "sel", w.sender_key)


def report(data: bytes) -> tuple[dict[str, str], dict[str, str], email.message.Message]:
    """(per-message fields, the recipient's fields, the whole DSN) of a DSN we sent."""
    msg = email.message_from_bytes(data)
    status = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    blocks = [{k: str(v) for k, v in b.items()} for b in status.get_payload()]
    return blocks[0], blocks[1], msg


async def dsn_rows(w) -> list[Message]:
    async with w.db.session() as s:
        return list((await s.execute(select(Message).where(Message.source == "dsn")))
                    .scalars())


async def test_request_passed_on_to_a_next_hop_that_offers_dsn(world):
    w = world
    w.inbox.dsn = True
    await send(w.a, signed(w), ["RET=HDRS", "ENVID=track+2B1"], ["NOTIFY=SUCCESS,FAILURE"])
    got = w.inbox.wait_for(1)[0]
    assert got.mail_command.endswith(" RET=HDRS ENVID=track+2B1"), got.mail_command
    # The recipient was rewritten by forwarding: ORCPT names the address it was sent to.
    assert got.rcpt_commands == [
        "TO:<dest@inbox.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user@ours.test"]
    # The next hop took the success DSN on: none from us.
    await w.workers(w.a).run_once()
    assert await dsn_rows(w) == [] and w.sender_mx.messages == []


async def test_no_parameters_to_a_next_hop_without_dsn_and_a_relayed_dsn(world):
    w = world
    await send(w.a, signed(w), ["RET=HDRS", "ENVID=track-2"],
               ["NOTIFY=SUCCESS", "ORCPT=rfc822;alias+2Bx@ours.test"])
    got = w.inbox.wait_for(1)[0]
    assert "RET=" not in got.mail_command and got.rcpt_commands == ["TO:<dest@inbox.test>"]
    await w.workers(w.a).run_once()  # the DSN goes out through the queue
    dsn = (await asyncio.to_thread(w.sender_mx.wait_for, 1))[0]
    assert dsn.rcpt_tos == ["alice@sender.test"] and dsn.mail_from in ("", "<>")
    head, rcpt, msg = report(dsn.data)
    assert head["Original-Envelope-Id"] == "track-2"
    assert rcpt["Action"] == "relayed" and rcpt["Status"].startswith("2.")
    assert rcpt["Original-Recipient"] == "rfc822; alias+x@ours.test"
    assert rcpt["Final-Recipient"] == "rfc822; dest@inbox.test"
    types = [p.get_content_type() for p in msg.walk()]
    assert "text/rfc822-headers" in types and "message/rfc822" not in types  # RET=HDRS
    assert BODY_MARK.encode() not in dsn.data


async def test_without_notify_no_success_dsn(world):
    w = world
    await send(w.a, signed(w))
    w.inbox.wait_for(1)
    await w.workers(w.a).run_once()
    assert await dsn_rows(w) == []


@pytest.mark.parametrize("notify", ["NEVER", "FAILURE"])
async def test_failure_from_the_queue_honours_notify_and_ret(world, notify):
    w = world
    # In-session: 451 (queued); from the queue an hour later: 550.
    w.inbox.rcpt_replies["dest@inbox.test"] = deque(["451 4.3.0 try later",
                                                     "550 5.1.1 no such user"])
    await send(w.a, signed(w), ["RET=FULL", "ENVID=E9"], [f"NOTIFY={notify}"])
    async with w.db.session() as s:
        [delivery] = (await s.execute(select(Delivery))).scalars().all()
    assert (delivery.dsn_notify, delivery.dsn_orcpt) == (notify, "rfc822;user@ours.test")
    await w.workers(w.a, later=timedelta(hours=1)).run_once()
    async with w.db.session() as s:
        assert (await s.get(Delivery, delivery.id)).status == "failed"
    if notify == "NEVER":
        assert await dsn_rows(w) == [] and w.sender_mx.messages == []
        return
    dsn = (await asyncio.to_thread(w.sender_mx.wait_for, 1))[0]
    head, rcpt, msg = report(dsn.data)
    assert head["Original-Envelope-Id"] == "E9"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert rcpt["Original-Recipient"] == "rfc822; user@ours.test"
    [returned] = [p for p in msg.walk() if p.get_content_type() == "message/rfc822"]
    assert BODY_MARK.encode() in dsn.data  # RET=FULL: the whole message comes back


@pytest.mark.parametrize("notify, expect_delay_dsn", [
    (None, True), ("FAILURE", False), ("DELAY", True), ("SUCCESS,DELAY", True)])
async def test_delay_notices_only_when_asked(world, notify, expect_delay_dsn):
    w = world
    w.a.settings.retry.delay_warning = 60
    w.inbox.rcpt_replies["dest@inbox.test"] = "451 4.3.0 try later"
    await send(w.a, signed(w), [], [f"NOTIFY={notify}"] if notify else [])
    await w.workers(w.a, later=timedelta(hours=1)).run_once()
    rows = await dsn_rows(w)
    assert len(rows) == (1 if expect_delay_dsn else 0)
    if expect_delay_dsn:
        _, rcpt, _ = report(rows[0].raw)
        assert rcpt["Action"] == "delayed"


async def test_forward_to_several_destinations_is_an_expanded_alias(world):
    """RFC 3461 §5.2.7.3: one `expanded` DSN from us; the destinations get the request
    without SUCCESS, so the sender is not sent a success DSN by each of them."""
    w = world
    w.inbox.dsn = True
    await send(w.a, signed(w), ["ENVID=many"], ["NOTIFY=SUCCESS,FAILURE"],
               rcpts=("multi@ours.test",))
    await w.workers(w.a).run_once()  # the forwards and our DSN go through the queue
    got = w.inbox.wait_for(1)  # one transaction carries both (same copy, same domain)
    assert sorted(c for m in got for c in m.rcpt_commands) == [
        "TO:<dest@inbox.test> NOTIFY=FAILURE ORCPT=rfc822;multi@ours.test",
        "TO:<other@inbox.test> NOTIFY=FAILURE ORCPT=rfc822;multi@ours.test"]
    [dsn] = await asyncio.to_thread(w.sender_mx.wait_for, 1)
    head, rcpt, _ = report(dsn.data)
    assert head["Original-Envelope-Id"] == "many"
    assert (rcpt["Action"], rcpt["Final-Recipient"]) == ("expanded", "rfc822; multi@ours.test")
    assert len(await dsn_rows(w)) == 1


async def test_recipients_sharing_a_forward_keep_each_others_failure_dsn(world):
    """multi@ (NOTIFY=NEVER) and user@ (NOTIFY=FAILURE) both forward to dest@inbox.test:
    the one forward carries both requests merged, so NEVER does not silence FAILURE."""
    w = world
    w.inbox.rcpt_replies["dest@inbox.test"] = "550 5.1.1 no such user"
    client = aiosmtplib.SMTP(hostname=w.a.host, port=w.a.port, timeout=15,
                             start_tls=False, local_hostname="client.test")
    await client.connect()
    try:
        await client.mail("alice@sender.test", options=["RET=HDRS"])
        await client.rcpt("multi@ours.test", options=["NOTIFY=NEVER"])  # first: its ORCPT
        await client.rcpt("user@ours.test", options=["NOTIFY=FAILURE"])
        await client.data(signed(w))
    finally:
        await client.quit()
    async with w.db.session() as s:
        rows = (await s.execute(select(Delivery))).scalars().all()
    assert sorted((d.recipient, d.dsn_notify) for d in rows) == [
        ("dest@inbox.test", "FAILURE"), ("other@inbox.test", "NEVER")]
    await w.workers(w.a).run_once()  # two destinations: the forwards are queued
    dsn = (await asyncio.to_thread(w.sender_mx.wait_for, 1))[0]
    _, rcpt, _ = report(dsn.data)
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert rcpt["Final-Recipient"] == "rfc822; dest@inbox.test"
