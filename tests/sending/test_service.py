"""The sending pipeline end to end: real PostgreSQL, the loopback DNS server holding the
sending domain's DKIM keys and the recipients' MX, real SMTP sinks, the real delivery
code, and Perl Mail::DKIM as the independent verifier.

The `world` fixture is shared by the other tests/sending/test_*.py of the send path."""

from __future__ import annotations

import asyncio
import base64
import email
import socket
import threading
import time
from dataclasses import dataclass
from email import policy

import dkim
import pytest
from sqlalchemy import select

from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.errors import MtaError
from mta.node import NodeContext
from mta.queue.remote import RemoteDelivery
from mta.sending.domains import domain_records, onboard_sending_domain
from mta.sending.limits import SendingLimits
from mta.sending.service import SendingService
from mta.store import suppression
from mta.store.models import (
    Account,
    Delivery,
    DestinationAddress,
    Event,
    Message,
    RoutingDomain,
    SendingDomain,
    Zone,
)
from tests.harness.smtp_sink import _free_port
from tests.signing.test_dkim_sign import dns_txt_func, mail_dkim_verify

SENDER = "noreply@sender.test"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class World:
    db: object
    ctx: NodeContext
    resolver: DnsResolver
    account: str
    zone: str
    port: int
    sink: object
    dns: object

    def service(self, *, sync_timeout: float = 5.0, rate: SendingLimits | None = None,
                db=None) -> SendingService:
        ctx = self.ctx if db is None else NodeContext(
            settings=self.ctx.settings, db=db, resolver=self.resolver,
            node_id=f"node-{id(db)}")
        transport = RemoteDelivery(self.resolver, "mta.sender.test", port=self.port,
                                   connect_timeout=3, command_timeout=5, data_timeout=5)
        return SendingService(ctx, transport=transport, sync_timeout=sync_timeout,
                              rate_limits=rate)


def make_settings() -> Settings:
    s = Settings()
    s.node.hostname = "mta.sender.test"
    s.secret_key = "test-secret-key"
    return s


async def add_account(db, name: str = "acme", zone: str = "sender.test") -> tuple[str, str]:
    async with db.session() as s:
        acct = Account(name=name)
        s.add(acct)
        await s.flush()
        z = Zone(account_id=acct.id, name=zone)
        s.add(z)
        await s.flush()
        return acct.id, z.id


async def publish(db, settings: Settings, dns, domain: str) -> None:
    """Put every record `mta dns` asks for into the test DNS server."""
    async with db.session() as s:
        _, records = await domain_records(s, settings, domain)
    for r in records:
        if r["type"] == "TXT":
            dns.add_txt(r["name"], r["content"])
        else:
            dns.add(r["name"], "MX", f"{r['priority']} {r['content']}.")


@pytest.fixture
async def world(db, dns_server, make_sink) -> World:
    settings = make_settings()
    resolver = DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)
    ctx = NodeContext(settings=settings, db=db, resolver=resolver, node_id="node-a")
    account, zone = await add_account(db)
    async with db.session() as s:
        await onboard_sending_domain(s, settings, "sender.test", ed25519=True)
    await publish(db, settings, dns_server, "sender.test")
    port = _free_port("127.0.0.2")
    dns_server.add_zone("""
        rcpt.test.     300 IN MX 10 mx.rcpt.test.
        mx.rcpt.test.  300 IN A 127.0.0.2
        slow.test.     300 IN MX 10 mx.slow.test.
        mx.slow.test.  300 IN A 127.0.0.4
    """)
    sink = make_sink("127.0.0.2", port=port)
    return World(db, ctx, resolver, account, zone, port, sink, dns_server)


async def rows(db, model, *where):
    async with db.session() as s:
        return (await s.execute(select(model).where(*where))).scalars().all()


def full_request(**over) -> dict:
    body = {
        "from": {"address": SENDER, "name": "Sender Ünïcode"},
        "to": ["bob@rcpt.test"], "subject": "Your invoice ✓",
        "text": "Hello Bob,\nyour invoice is attached.\n",
        "html": '<p>Hello Bob</p><img src="cid:logo">',
        "attachments": [
            {"content": b64(PNG), "filename": "logo.png", "type": "image/png",
             "disposition": "inline", "content_id": "logo"},
            {"content": b64(PDF), "filename": "invoice.pdf", "type": "application/pdf",
             "disposition": "attachment"}],
        "headers": {"List-Unsubscribe": "<https://sender.test/u/1>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                    "X-Campaign-ID": "c-42"},
    }
    body.update(over)
    return body


# --- the whole path ------------------------------------------------------------------------


async def test_text_html_inline_image_and_pdf_arrive_with_mime_structure_and_dkim(
        world, tmp_path):
    result = await world.service().send(world.account, full_request())
    assert result.delivered == ["bob@rcpt.test"] and result.queued == []
    assert result.message_id.endswith("@sender.test>")
    [got] = world.sink.wait_for(1)
    assert got.rcpt_tos == ["bob@rcpt.test"]
    assert got.mail_from.startswith("bounces+") and got.mail_from.endswith(
        "@mta-bounce.sender.test")

    msg = email.message_from_bytes(got.data, policy=policy.default)
    assert msg["Message-ID"] == result.message_id
    assert msg["Subject"] == "Your invoice ✓" and "Ünïcode" in str(msg["From"])
    assert msg["Feedback-ID"] and msg["Bcc"] is None
    assert msg.get_content_type() == "multipart/mixed"
    related, pdf = msg.get_payload()
    assert related.get_content_type() == "multipart/related"
    alternative, image = related.get_payload()
    assert [p.get_content_type() for p in alternative.get_payload()] == [
        "text/plain", "text/html"]
    assert image.get_content_type() == "image/png" and image["Content-ID"] == "<logo>"
    assert image.get_content() == PNG
    assert pdf.get_content_type() == "application/pdf" and pdf.get_filename() == "invoice.pdf"
    assert pdf.get_content() == PDF and pdf.get_content_disposition() == "attachment"

    sigs = msg.get_all("DKIM-Signature")
    assert len(sigs) == 2  # RSA and Ed25519 (RFC 8463 dual signature)
    assert all("list-unsubscribe:list-unsubscribe-post" in "".join(str(s).split())
               for s in sigs)
    # Perl Mail::DKIM (Debian's has no Ed25519) passes the RSA signature; dkimpy both.
    out = mail_dkim_verify(got.data, world.dns, tmp_path)
    assert "result pass" in out and "sig pass sender.test mta" in out, out
    d = dkim.DKIM(got.data)
    dnsfunc = dns_txt_func(world.dns)
    assert d.verify(idx=0, dnsfunc=dnsfunc) and d.verify(idx=1, dnsfunc=dnsfunc)
    assert {"rsa-sha256", "ed25519-sha256"} == {
        t.split("=")[1] for s in sigs for t in "".join(str(s).split()).split(";")
        if t.startswith("a=")}

    [stored] = await rows(world.db, Message, Message.message_id_header == result.message_id)
    assert (stored.direction, stored.source, stored.account_id) == ("outbound", "api",
                                                                   world.account)
    [d] = await rows(world.db, Delivery, Delivery.message_id == stored.id)
    assert (d.status, d.attempts, d.lease_owner) == ("delivered", 1, None)
    statuses = {e.status for e in await rows(world.db, Event, Event.message_id == stored.id)}
    assert statuses == {"Sent", "Delivered"}


async def test_permanent_refusal_and_temporary_refusal_are_reported_apart(world):
    world.sink.rcpt_replies["gone@rcpt.test"] = "550 5.1.1 no such user"
    world.sink.rcpt_replies["later@rcpt.test"] = "451 4.7.1 greylisted"
    result = await world.service().send(world.account, {
        "from": SENDER, "to": ["ok@rcpt.test", "gone@rcpt.test"], "cc": "later@rcpt.test",
        "subject": "s", "text": "t"})
    assert result.delivered == ["ok@rcpt.test"]
    assert result.permanent_bounces == ["gone@rcpt.test"]
    assert result.queued == ["later@rcpt.test"]
    [later] = await rows(world.db, Delivery, Delivery.recipient == "later@rcpt.test")
    # Deferred like any first attempt: retry scheduled, lease given back.
    assert (later.status, later.attempts, later.lease_owner) == ("queued", 1, None)
    assert later.next_attempt_at > later.created_at


async def test_a_slow_server_is_cut_off_by_the_bounded_attempt_and_nothing_is_lost(world):
    listener = socket.socket()
    listener.bind(("127.0.0.4", world.port))
    listener.listen(5)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    service = world.service(sync_timeout=0.5)
    t0 = time.monotonic()
    try:
        result = await service.send(world.account, {"from": SENDER, "to": "x@slow.test",
                                                    "subject": "s", "text": "t"})
        elapsed = time.monotonic() - t0
        assert result.queued == ["x@slow.test"] and elapsed < 3
        [d] = await rows(world.db, Delivery, Delivery.recipient == "x@slow.test")
        assert d.lease_owner == "node-a"  # the attempt is still ours, in the background
        await service.close()
    finally:
        for c in held:
            c.close()
        listener.close()
    [d] = await rows(world.db, Delivery, Delivery.recipient == "x@slow.test")
    assert (d.status, d.attempts, d.lease_owner) == ("queued", 1, None)


async def test_without_an_immediate_attempt_rows_are_due_now_for_the_workers(world):
    result = await world.service(sync_timeout=0).send(
        world.account, {"from": SENDER, "to": "a@rcpt.test", "subject": "s", "text": "t"})
    assert result.queued == ["a@rcpt.test"]
    [d] = await rows(world.db, Delivery, Delivery.recipient == "a@rcpt.test")
    assert (d.status, d.attempts, d.lease_owner) == ("queued", 0, None)
    assert world.sink.messages == []


# --- who may send what ------------------------------------------------------------------------


async def test_unknown_sender_domain_is_not_available(world):
    with pytest.raises(MtaError) as e:
        await world.service().send(world.account, {"from": "a@elsewhere.test", "to":
                                                   "b@rcpt.test", "subject": "s", "text": "t"})
    assert e.value.code == "E_SENDER_DOMAIN_NOT_AVAILABLE"


async def test_another_accounts_sending_domain_is_not_available(world):
    other, _ = await add_account(world.db, "other", "other.test")
    with pytest.raises(MtaError) as e:
        await world.service().send(other, {"from": SENDER, "to": "b@rcpt.test",
                                           "subject": "s", "text": "t"})
    assert e.value.code == "E_SENDER_DOMAIN_NOT_AVAILABLE"


async def test_a_disabled_sending_domain_is_not_verified(world):
    async with world.db.session() as s:
        row = (await s.execute(select(SendingDomain))).scalar_one()
        row.enabled = False
    with pytest.raises(MtaError) as e:
        await world.service().send(world.account, {"from": SENDER, "to": "b@rcpt.test",
                                                   "subject": "s", "text": "t"})
    assert e.value.code == "E_SENDER_NOT_VERIFIED"


async def test_before_onboarding_only_verified_destinations_from_a_routing_domain(world):
    account, zone = await add_account(world.db, "newbie", "newbie.test")
    async with world.db.session() as s:
        s.add(RoutingDomain(zone_id=zone, name="newbie.test"))
        s.add(DestinationAddress(account_id=account, email="Me@Rcpt.test",
                                 verified_at=world.ctx.clock()))
        s.add(DestinationAddress(account_id=account, email="pending@rcpt.test"))
    service = world.service(rate=SendingLimits(account_rate=1, account_daily=1))
    with pytest.raises(MtaError) as e:
        await service.send(account, {"from": "a@newbie.test", "to": "pending@rcpt.test",
                                     "subject": "s", "text": "t"})
    assert e.value.code == "E_RECIPIENT_NOT_ALLOWED"
    # Verified destinations: allowed, unsigned (no key), and free of the quota of 1.
    for _ in range(3):
        result = await service.send(account, {"from": "a@newbie.test", "to":
                                              "me@rcpt.test", "subject": "s", "text": "t"})
        assert result.delivered == ["me@rcpt.test"]
    assert len(world.sink.wait_for(3)) == 3


# --- suppression ---------------------------------------------------------------------------


async def test_suppressed_recipients_are_left_out_and_logged_as_rejected(world):
    async with world.db.session() as s:
        await suppression.add(s, world.account, "Gone@rcpt.test", "hard_bounce",
                               now=world.ctx.clock())
    result = await world.service().send(world.account, {
        "from": SENDER, "to": ["ok@rcpt.test", "gone@rcpt.test"], "subject": "s",
        "text": "t"})
    assert result.suppressed_recipients == ["gone@rcpt.test"]
    assert result.delivered == ["ok@rcpt.test"]
    [got] = world.sink.wait_for(1)
    assert got.rcpt_tos == ["ok@rcpt.test"]
    [ev] = await rows(world.db, Event, Event.status == "Rejected")
    assert ev.rcpt_to == "gone@rcpt.test" and ev.details["suppression"] == "hard_bounce"


async def test_all_recipients_suppressed_is_an_error_and_stores_nothing(world):
    async with world.db.session() as s:
        await suppression.add(s, world.account, "gone@rcpt.test", "complaint",
                              now=world.ctx.clock())
    with pytest.raises(MtaError) as e:
        await world.service().send(world.account, {"from": SENDER, "to": "gone@rcpt.test",
                                                   "subject": "s", "text": "t"})
    assert e.value.code == "E_RECIPIENT_SUPPRESSED"
    assert await rows(world.db, Message) == []
    assert [ev.status for ev in await rows(world.db, Event)] == ["Rejected"]


# --- send_raw -------------------------------------------------------------------------------


RAW = (b"From: Sender <noreply@sender.test>\r\nTo: bob@rcpt.test\r\n"
       b"Bcc: hidden@rcpt.test\r\nSubject: raw one\r\nMessage-ID: <client@x>\r\n"
       b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\nX-Mailer: tests\r\n\r\nbody line\r\n")


async def test_send_raw_replaces_message_id_drops_bcc_and_signs(world, tmp_path):
    result = await world.service().send_raw(world.account, SENDER, ["bob@rcpt.test"], RAW,
                                            source="submission")
    assert result.delivered == ["bob@rcpt.test"]
    [got] = world.sink.wait_for(1)
    msg = email.message_from_bytes(got.data, policy=policy.default)
    assert msg["Message-ID"] == result.message_id != "<client@x>"
    assert msg["Bcc"] is None and msg["X-Mailer"] == "tests"
    assert "result pass" in mail_dkim_verify(got.data, world.dns, tmp_path)


@pytest.mark.parametrize("raw, code", [
    (RAW.replace(b"X-Mailer: tests", b"Feedback-ID: a:b:c"), "E_HEADER_NOT_ALLOWED"),
    (RAW.replace(b"X-Mailer: tests", b"Bad Name: x"), "E_EMAIL_INVALID"),
    (b"no header section at all", "E_EMAIL_INVALID"),
    (RAW.replace(b"From: Sender <noreply@sender.test>", b"From: a@elsewhere.test"),
     "E_SENDER_DOMAIN_NOT_AVAILABLE"),
])
async def test_send_raw_refusals(world, raw, code):
    with pytest.raises(MtaError) as e:
        await world.service().send_raw(world.account, SENDER, ["bob@rcpt.test"], raw,
                                       source="api")
    assert e.value.code == code


async def test_size_limit_is_5_mib_but_25_mib_to_verified_destinations(world):
    async with world.db.session() as s:
        s.add(DestinationAddress(account_id=world.account, email="me@rcpt.test",
                                 verified_at=world.ctx.clock()))
    big = {"content": b64(b"\0" * (6 * 1024 * 1024)), "filename": "big.bin",
           "type": "application/octet-stream"}
    service = world.service(sync_timeout=0)
    with pytest.raises(MtaError) as e:
        await service.send(world.account, {"from": SENDER, "to": "x@rcpt.test",
                                           "subject": "s", "text": "t", "attachments": [big]})
    assert e.value.code == "E_CONTENT_TOO_LARGE"
    result = await service.send(world.account, {"from": SENDER, "to": "me@rcpt.test",
                                                "subject": "s", "text": "t",
                                                "attachments": [big]})
    assert result.queued == ["me@rcpt.test"]


async def test_unexpected_failures_become_internal_server_error_and_a_failed_event(world):
    world.ctx.settings.secret_key = "another-secret"  # the stored keys no longer decrypt
    try:
        with pytest.raises(MtaError) as e:
            await world.service().send(world.account, {"from": SENDER, "to": "b@rcpt.test",
                                                       "subject": "s", "text": "t"})
    finally:
        world.ctx.settings.secret_key = "test-secret-key"
    assert e.value.code == "E_INTERNAL_SERVER_ERROR"
    assert "another-secret" not in e.value.message
    assert [ev.status for ev in await rows(world.db, Event)] == ["Failed"]


async def test_concurrent_sends_all_commit(world):
    service = world.service(sync_timeout=0)
    results = await asyncio.gather(*(service.send(world.account, {
        "from": SENDER, "to": f"u{i}@rcpt.test", "subject": "s", "text": "t"})
        for i in range(20)))
    assert len({r.message_id for r in results}) == 20
    assert len(await rows(world.db, Delivery)) == 20
