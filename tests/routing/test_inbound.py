"""The routing pipeline end to end: a real client -> our MX (router wired) -> real sinks.

Issue 5 acceptance: DKIM-signed forward with SRS0 + ARC cv=pass + our DKIM (dkimpy and
Perl Mail::DKIM), the second hop (SRS1, ARC i=2 cv=pass), upstream 550 returned
in-session, upstream 451 queued and delivered on a later attempt; plus drop, worker
seam, several destinations, loop protection.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta

import dkim
from sqlalchemy import select

from mta.signing.srs import Srs
from mta.store.models import Delivery, Event, Message
from tests.routing.world import (
    body,
    header,
    verify_all_dkim,
    world_fixture,  # noqa: F401 - the `world` fixture
)
from tests.signing.test_dkim_sign import mail_dkim_verify
from tests.smtp.conftest import dkim_sign, make_message, smtp_send


def signed(w, to: str = "user@ours.test", **kw) -> bytes:
    return dkim_sign(make_message("alice@sender.test", to=to, **kw), "sender.test", "sel",
                     w.sender_key)


async def events(w, status: str | None = None) -> list[Event]:
    async with w.db.session() as s:
        q = select(Event).order_by(Event.id)
        if status:
            q = q.where(Event.status == status)
        return list((await s.execute(q)).scalars())


async def test_dkim_signed_forward_arrives_with_srs_arc_and_our_signature(world, tmp_path):
    w = world
    raw = signed(w, body="Body line one.\r\nLine two.\r\n")
    code, text = await smtp_send(w.a, raw, "alice@sender.test")
    assert code == 250, text
    got = w.inbox.wait_for(1)[0]
    assert got.rcpt_tos == ["dest@inbox.test"]
    # SRS0 at our SRS domain that reverses to the original sender.
    assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith("@fwda.test")
    srs = Srs(w.a.settings.srs.secrets, "fwda.test")
    assert srs.reverse(got.mail_from) == "alice@sender.test"
    # From and body untouched.
    assert header(got.data, "From") == header(raw, "From")
    assert body(got.data) == body(raw)
    # Our DKIM signature and the original one both verify (dkimpy).
    txt = w.txt()
    assert verify_all_dkim(got.data, txt) == {"fwda.test": True, "sender.test": True}
    # The ARC chain validates (dkimpy) with our set as instance 1.
    cv, _results, reason = dkim.arc_verify(got.data, dnsfunc=txt)
    assert cv == b"pass", reason
    assert b"i=1" in header(got.data, "ARC-Seal")[0]
    assert b"cv=none" in header(got.data, "ARC-Seal")[0]
    aar = header(got.data, "ARC-Authentication-Results")[0]
    assert b"spf=pass" in aar and b"dkim=pass" in aar and b"dmarc=pass" in aar
    # Independent verifier: Perl Mail::DKIM.
    out = mail_dkim_verify(got.data, w.dns, tmp_path)
    assert "sig pass fwda.test" in out and "sig pass sender.test" in out, out
    arc_out = mail_dkim_verify(got.data, w.dns, tmp_path, mode="arc")
    assert "result pass" in arc_out, arc_out
    # Recorded: Forwarded, rule and action, auth results, delivered in-session.
    fwd = await events(w, "Forwarded")
    assert len(fwd) == 1 and fwd[0].rcpt_to == "user@ours.test"
    assert fwd[0].rule_id and fwd[0].action == "forward"
    assert (fwd[0].spf, fwd[0].dkim, fwd[0].dmarc) == ("pass", "pass", "pass")
    assert fwd[0].details["delivery"] == "delivered"
    assert fwd[0].details["destination"] == "dest@inbox.test"


async def test_subaddress_is_kept_in_events(world):
    w = world
    code, text = await smtp_send(w.a, signed(w, to="user+news@ours.test"), "alice@sender.test",
                                 rcpts=("User+News@ours.test",))
    assert code == 250, text
    assert w.inbox.wait_for(1)[0].rcpt_tos == ["dest@inbox.test"]
    fwd = await events(w, "Forwarded")
    assert fwd[0].rcpt_to == "user+news@ours.test"
    assert fwd[0].details["match"] == "subaddress"


async def test_second_hop_gives_srs1_and_arc_instance_2(world, tmp_path):
    w = world
    code, text = await smtp_send(w.a, signed(w, to="chain@ours.test"), "alice@sender.test",
                                 rcpts=("chain@ours.test",))
    assert code == 250, text
    got = w.inbox.wait_for(1)[0]
    # Node A forwarded to hop@second.test (node B), which forwarded to the sink.
    assert got.mail_from.startswith("SRS1=") and got.mail_from.endswith("@fwdb.test")
    assert "=fwda.test==" in got.mail_from
    first_hop = Srs(w.b.settings.srs.secrets, "fwdb.test").reverse(got.mail_from)
    assert first_hop.startswith("SRS0=") and first_hop.endswith("@fwda.test")
    assert Srs(w.a.settings.srs.secrets, "fwda.test").reverse(first_hop) == \
        "alice@sender.test"
    seals = header(got.data, "ARC-Seal")
    assert len(seals) == 2
    newest = next(s for s in seals if b"i=2" in s)
    assert b"cv=pass" in newest and b"d=fwdb.test" in newest
    cv, _results, reason = dkim.arc_verify(got.data, dnsfunc=w.txt())
    assert cv == b"pass", reason
    assert "result pass" in mail_dkim_verify(got.data, w.dns, tmp_path, mode="arc")
    assert verify_all_dkim(got.data, w.txt()) == {
        "fwdb.test": True, "fwda.test": True, "sender.test": True}


async def test_upstream_550_is_returned_in_session(world):
    w = world
    w.inbox.rcpt_replies["dest@inbox.test"] = "550 5.1.1 <dest@inbox.test>: mailbox gone"
    code, text = await smtp_send(w.a, signed(w), "alice@sender.test")
    assert code == 550
    assert "5.1.1" in text and "mailbox gone" in text
    assert w.inbox.messages == []
    async with w.db.session() as s:
        assert (await s.execute(select(Delivery))).scalars().all() == []  # nothing queued
        assert (await s.execute(select(Message))).scalars().all() == []
    failed = await events(w, "Delivery failed")
    assert failed and failed[0].rcpt_to == "user@ours.test"
    assert "mailbox gone" in failed[0].details["reply"]


async def test_upstream_451_is_queued_and_delivered_later(world):
    w = world
    w.inbox.rcpt_replies["dest@inbox.test"] = deque(["451 4.3.0 greylisted, try later"])
    code, text = await smtp_send(w.a, signed(w), "alice@sender.test")
    assert code == 250, text
    assert w.inbox.messages == []
    async with w.db.session() as s:
        d = (await s.execute(select(Delivery))).scalar_one()
    assert d.status == "queued" and d.attempts == 1 and "greylisted" in d.last_reply
    assert d.envelope_from.startswith("SRS0=")
    # Not due yet: a worker running now does nothing.
    assert await w.workers(w.a).run_once() == 0
    # Past the backoff (injected clock): the next attempt delivers it.
    assert await w.workers(w.a, later=timedelta(hours=1)).run_once() == 1
    got = w.inbox.wait_for(1)[0]
    assert got.mail_from == d.envelope_from and got.rcpt_tos == ["dest@inbox.test"]
    cv, _r, reason = dkim.arc_verify(got.data, dnsfunc=w.txt())
    assert cv == b"pass", reason
    assert verify_all_dkim(got.data, w.txt()) == {"fwda.test": True, "sender.test": True}
    async with w.db.session() as s:
        d = (await s.execute(select(Delivery))).scalar_one()
        [stored] = (await s.execute(select(Message))).scalars().all()
    assert d.status == "delivered" and d.attempts == 2
    # Stored once: the delivery points at the received message and keeps only what
    # forwarding put in front of it; on the wire that is prefix + message.
    assert d.message_id == stored.id and stored.source == "mx"
    assert got.data == d.prefix + stored.raw and len(d.prefix) < 2048


async def test_several_destinations_are_all_queued(world):
    w = world
    code, text = await smtp_send(w.a, signed(w, to="multi@ours.test"), "alice@sender.test",
                                 rcpts=("multi@ours.test",))
    assert code == 250, text
    async with w.db.session() as s:
        rows = (await s.execute(select(Delivery).order_by(Delivery.recipient))).scalars().all()
    assert [(r.recipient, r.status, r.attempts) for r in rows] == [
        ("dest@inbox.test", "queued", 0), ("other@inbox.test", "queued", 0)]
    assert w.inbox.messages == []
    assert await w.workers(w.a).run_once() == 2
    got = w.inbox.wait_for(1)
    assert sorted(r for m in got for r in m.rcpt_tos) == ["dest@inbox.test", "other@inbox.test"]


async def test_drop_and_worker_actions_are_recorded(world):
    w = world
    code, _ = await smtp_send(w.a, signed(w, to="drop@ours.test"), "alice@sender.test",
                              rcpts=("drop@ours.test",))
    assert code == 250
    code, _ = await smtp_send(w.a, signed(w, to="code@ours.test"), "alice@sender.test",
                              rcpts=("code@ours.test",))
    assert code == 250
    dropped = await events(w, "Dropped")
    assert [e.rcpt_to for e in dropped] == ["drop@ours.test"] and dropped[0].action == "drop"
    handled = await events(w, "Handled")
    assert handled[0].action == "worker" and handled[0].details["state"] == "pending"
    assert handled[0].details["handler"] == ["my-handler"]
    async with w.db.session() as s:
        statuses = sorted((await s.execute(select(Message.status))).scalars())
        assert (await s.execute(select(Delivery))).scalars().all() == []
    assert statuses == ["handler_pending", "routed"]
    assert w.inbox.messages == []


async def test_forwarding_loop_is_refused_with_554_546(world):
    w = world
    hops = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; "
                   f"Mon, 1 Jan 2024 00:00:{i % 60:02d} +0000\r\n" for i in range(60))
    raw = signed(w, extra=hops)
    code, text = await smtp_send(w.a, raw, "alice@sender.test")
    assert code == 554 and text.startswith("5.4.6"), text
    assert w.inbox.messages == []
    rejected = await events(w, "Rejected")
    assert rejected and rejected[0].details["reason"] == "routing_loop"


async def test_in_session_forward_off_queues_a_single_destination(world):
    w = world
    w.a.settings.routing.in_session_forward = False
    code, text = await smtp_send(w.a, signed(w), "alice@sender.test")
    assert code == 250, text
    assert w.inbox.messages == []  # not tried while the sender waited
    async with w.db.session() as s:
        d = (await s.execute(select(Delivery))).scalar_one()
    assert (d.recipient, d.status, d.attempts) == ("dest@inbox.test", "queued", 0)
    assert await w.workers(w.a).run_once() == 1
    got = w.inbox.wait_for(1)[0]
    assert got.rcpt_tos == ["dest@inbox.test"] and got.mail_from.startswith("SRS0=")
