"""Fixtures for the MX listener tests: a real MxServer in the test's event loop, with
real PostgreSQL (the `db_url` fixture), the loopback DNS server and keys published in it.

Test world (client connects from 127.0.0.1):
- ours.test: our routing domain (rules: user@, first.last@, a catch-all off), plus
  other.test (enabled, with a catch-all) and off.test (routing domain disabled);
- good.test: SPF allows 127.0.0.1, DKIM key `sel`, DMARC p=reject;
- strict.test: SPF allows only 192.0.2.1, DKIM key `sel`, DMARC p=reject;
- forwarder.test: SPF allows 127.0.0.1, DKIM key `fwd` (a list/forwarder);
- sealer.test: ARC key `arc` (a trusted sealer when the test says so);
- 127.0.0.1 has PTR client.test, which resolves back.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate, make_msgid

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from mta.config import Nameserver, Settings
from mta.dnscache import DnsResolver
from mta.node import NodeContext
from mta.smtp.mx import MxServer
from mta.store.db import Database
from mta.store.models import (
    Account,
    DestinationAddress,
    Event,
    Message,
    RoutingDomain,
    RoutingRule,
    Zone,
)


@dataclass
class Key:
    private_pem: bytes
    dns: str  # the TXT record value


def _make_key() -> Key:
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    pub = k.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key(pem, f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}")


@pytest.fixture(scope="session")
def keys() -> dict[str, Key]:
    return {name: _make_key() for name in ("good", "strict", "forwarder", "sealer")}


def publish_world(dns, keys: dict[str, Key]) -> None:
    dns.add_zone("""
        1.0.0.127.in-addr.arpa. 300 IN PTR client.test.
        client.test. 300 IN A 127.0.0.1
        client.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
        good.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc.good.test. 300 IN TXT "v=DMARC1; p=reject"
        strict.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc.strict.test. 300 IN TXT "v=DMARC1; p=reject"
        forwarder.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
        quar.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc.quar.test. 300 IN TXT "v=DMARC1; p=quarantine"
        broken.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"
    """)
    dns.add_txt("sel._domainkey.good.test", keys["good"].dns)
    dns.add_txt("sel._domainkey.strict.test", keys["strict"].dns)
    dns.add_txt("fwd._domainkey.forwarder.test", keys["forwarder"].dns)
    dns.add_txt("arc._domainkey.sealer.test", keys["sealer"].dns)


def make_message(from_addr: str, to: str = "user@ours.test", subject: str = "hello",
                 body: str = "Hello there.\r\n", extra: str = "") -> bytes:
    return (f"From: Sender <{from_addr}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='test')}\r\n{extra}"
            f"\r\n{body}").encode()


def dkim_sign(raw: bytes, domain: str, selector: str, key: Key) -> bytes:
    sig = dkim.sign(raw, selector.encode(), domain.encode(), key.private_pem,
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + raw


def arc_seal(raw: bytes, sealer: str, selector: str, key: Key, auth_results: str) -> bytes:
    """What a forwarder does: record its Authentication-Results, then seal."""
    with_ar = f"Authentication-Results: {sealer}; {auth_results}\r\n".encode() + raw
    headers = dkim.arc_sign(with_ar, selector.encode(), sealer.encode(), key.private_pem,
                            sealer.encode())
    return b"".join(headers) + with_ar


async def seed(db: Database) -> None:
    """The routing data of the test world."""
    async with db.session() as s:
        acct = Account(id=uuid.uuid4().hex, name="test")
        s.add(acct)
        await s.flush()
        zone = Zone(account_id=acct.id, name="ours.test", routing_enabled=True,
                    support_subaddress=True)
        other = Zone(account_id=acct.id, name="other.test", routing_enabled=True)
        offz = Zone(account_id=acct.id, name="off.test", routing_enabled=True)
        s.add_all([zone, other, offz])
        await s.flush()
        s.add_all([
            RoutingDomain(zone_id=zone.id, name="ours.test"),
            RoutingDomain(zone_id=zone.id, name="xn--piata-pta.es"),
            RoutingDomain(zone_id=other.id, name="other.test"),
            RoutingDomain(zone_id=offz.id, name="off.test", enabled=False),
            DestinationAddress(account_id=acct.id, email="dest@inbox.test",
                               verified_at=datetime.now(UTC)),
        ])

        def rule(zone_id: str, to: str, **kw) -> RoutingRule:
            return RoutingRule(zone_id=zone_id, name=to, matchers=[
                {"type": "literal", "field": "to", "value": to}],
                actions=[{"type": "forward", "value": ["dest@inbox.test"]}], **kw)

        s.add_all([
            rule(zone.id, "user@ours.test"), rule(zone.id, "first.last@ours.test"),
            rule(zone.id, "info@xn--piata-pta.es"),
            RoutingRule(zone_id=zone.id, name="catch-all", is_catch_all=True, enabled=False,
                        matchers=[{"type": "all"}], actions=[{"type": "drop"}]),
            RoutingRule(zone_id=other.id, name="catch-all", is_catch_all=True,
                        matchers=[{"type": "all"}], actions=[{"type": "drop"}]),
        ])


@dataclass
class MxWorld:
    server: MxServer
    db: Database
    dns: object
    settings: Settings
    keys: dict[str, Key]
    host: str = "127.0.0.1"
    extra: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    async def messages(self) -> list[Message]:
        async with self.db.session() as s:
            return list((await s.execute(select(Message).order_by(Message.received_at)))
                        .scalars().all())

    async def count(self) -> int:
        async with self.db.session() as s:
            return (await s.execute(select(func.count()).select_from(Message))).scalar_one()

    async def events(self) -> list[Event]:
        async with self.db.session() as s:
            return list((await s.execute(select(Event).order_by(Event.id))).scalars().all())


def mx_settings(dns, db_url: str, tweak: Callable[[Settings], None] | None = None) -> Settings:
    s = Settings()
    s.node.hostname = "mx.ours.test"
    s.database.url = db_url
    s.listeners.mx.address = "127.0.0.1"
    s.listeners.mx.port = 0
    s.dns.nameservers = [Nameserver(**dns.nameserver)]
    s.dns.timeout = 2.0
    s.limits.inbound_message_size = 64 * 1024
    s.inbound.recipient_cache_ttl = 0
    if tweak is not None:
        tweak(s)
    return s


@pytest.fixture
async def make_mx(db_url, dns_server, keys):
    """`await make_mx(tweak)` -> a started MxWorld; stopped at the end of the test."""
    started: list[tuple[MxServer, Database]] = []
    seeded = False

    async def factory(tweak: Callable[[Settings], None] | None = None) -> MxWorld:
        nonlocal seeded
        settings = mx_settings(dns_server, db_url, tweak)
        db = Database(db_url, pool_size=5)
        if not seeded:
            publish_world(dns_server, keys)
            await seed(db)
            seeded = True
        ctx = NodeContext(settings=settings, db=db,
                          resolver=DnsResolver.from_settings(settings.dns), node_id="test")
        server = MxServer(ctx, shutdown_grace=2)
        await server.start()
        started.append((server, db))
        return MxWorld(server, db, dns_server, settings, keys)

    yield factory
    for server, db in started:
        await server.stop()
        await db.close()


@pytest.fixture
async def mx(make_mx) -> MxWorld:
    return await make_mx()


async def smtp_send(world, raw: bytes, mail_from: str, rcpts=("user@ours.test",),
                    helo: str = "client.test") -> tuple[int, str]:
    """Send one message with aiosmtplib; (code, text) of the final reply or refusal."""
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname=world.host, port=world.port, start_tls=False,
                             use_tls=False, timeout=10, local_hostname=helo)
    await client.connect()
    try:
        await client.ehlo()
        try:
            _, text = await client.sendmail(mail_from, list(rcpts), raw)
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code, exc.message
        except aiosmtplib.SMTPRecipientsRefused as exc:
            r = exc.recipients[0]
            return r.code, r.message
        return 250, text
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()


async def raw_session(world, data: bytes, *, wait: float = 3.0) -> str:
    """Write `data` as is on a fresh connection and return everything the server
    answered until it closed or went quiet for `wait` seconds."""
    import asyncio

    reader, writer = await asyncio.open_connection(world.host, world.port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out.decode("utf-8", "replace")


def codes(transcript: str) -> list[str]:
    """The reply lines of a transcript, last line of each multi-line reply only."""
    return [line for line in transcript.split("\r\n") if line[:3].isdigit()
            and line[3:4] == " "]
