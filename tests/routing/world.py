"""The routing test world: two real MX nodes (routers wired), real sinks, real DNS, real
PostgreSQL. Shared by the tests of this package (not a test module itself).

- node A: MX on 127.0.0.1 (free port), routing domain ours.test, SRS/forwarding domain
  fwda.test; node B: MX on 127.0.0.4:P, routing domain second.test, SRS domain
  fwdb.test. P is also `delivery.port`, so every remote MX below is reached on P.
- inbox.test MX -> 127.0.0.2:P (the destinations' sink); sender.test MX -> 127.0.0.3:P
  (the original sender's server, where bounces end up); second.test MX -> node B.
- sender.test: SPF allows 127.0.0.1, DKIM key `sel`, DMARC p=reject.
- fwda.test / fwdb.test: SPF allows 127.0.0.0/8, DMARC p=reject, DKIM keys made by the
  nodes' own key store (generated on first use) and published here.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dkim
import pytest

from mta.config import Nameserver, Settings
from mta.dnscache import DnsResolver
from mta.node import NodeContext, inbound_router
from mta.queue.delivery import DeliveryWorkers
from mta.queue.mtasts import MtaSts
from mta.queue.remote import RemoteDelivery
from mta.routing.forward import KeyStore
from mta.routing.inbound import InboundRouter
from mta.smtp.mx import MxServer
from mta.store.db import Database
from mta.store.models import Account, DestinationAddress, RoutingDomain, RoutingRule, Zone
from tests.signing.test_dkim_sign import dns_txt_func
from tests.smtp.conftest import Key, _make_key

SECRET_KEY = "routing-test-secret-key-0123456789"


def free_port(*addresses: str) -> int:
    """A port free on every one of `addresses`."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        ok = True
        for a in addresses[1:]:
            with socket.socket() as t:
                try:
                    t.bind((a, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


@dataclass
class Node:
    server: MxServer
    router: InboundRouter
    settings: Settings
    db: Database
    ctx: NodeContext

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def host(self) -> str:
        return self.settings.listeners.mx.address


@dataclass
class World:
    dns: object
    db: Database
    db_url: str
    port: int  # delivery port P
    inbox: object  # sink 127.0.0.2 (inbox.test)
    sender_mx: object  # sink 127.0.0.3 (sender.test)
    sender_key: Key
    account_id: str = ""
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def a(self) -> Node:
        return self.nodes["a"]

    @property
    def b(self) -> Node:
        return self.nodes["b"]

    def txt(self):
        return dns_txt_func(self.dns)

    def workers(self, node: Node, later: timedelta = timedelta(0)) -> DeliveryWorkers:
        """The delivery workers of `node`, with a clock `later` ahead of now."""
        transport = RemoteDelivery(node.ctx.resolver, node.settings.node.hostname,
                                   port=self.port, mtasts=MtaSts(node.ctx.resolver))
        return DeliveryWorkers(node.ctx, transport,
                               clock=lambda: datetime.now(UTC) + later)


def settings_for(world: World, hostname: str, srs_domain: str, address: str,
                 port: int) -> Settings:
    s = Settings()
    s.node.hostname = hostname
    s.database.url = world.db_url
    s.listeners.mx.address = address
    s.listeners.mx.port = port
    s.listeners.http.address = "127.0.0.1"
    s.dns.nameservers = [Nameserver(**world.dns.nameserver)]
    s.dns.timeout = 2.0
    s.inbound.recipient_cache_ttl = 0
    s.srs.domain = srs_domain
    s.srs.secrets = [f"srs-secret-{srs_domain}"]
    s.secret_key = SECRET_KEY
    s.delivery.port = world.port
    s.routing.in_session_timeout = 10
    s.retry.jitter = 0
    return s


def publish(dns, sender_key: Key, port_b_host: str = "127.0.0.4") -> None:
    dns.add_zone(f"""
        1.0.0.127.in-addr.arpa. 300 IN PTR client.test.
        client.test. 300 IN A 127.0.0.1
        client.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
        inbox.test. 300 IN MX 10 mx.inbox.test.
        mx.inbox.test. 300 IN A 127.0.0.2
        sender.test. 300 IN MX 10 mx.sender.test.
        mx.sender.test. 300 IN A 127.0.0.3
        sender.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc.sender.test. 300 IN TXT "v=DMARC1; p=reject"
        second.test. 300 IN MX 10 mx.second.test.
        mx.second.test. 300 IN A {port_b_host}
        fwda.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
        _dmarc.fwda.test. 300 IN TXT "v=DMARC1; p=reject"
        fwdb.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
        _dmarc.fwdb.test. 300 IN TXT "v=DMARC1; p=reject"
    """)
    dns.add_txt("sel._domainkey.sender.test", sender_key.dns)


async def seed(db: Database) -> str:
    now = datetime.now(UTC)
    async with db.session() as s:
        acct = Account(id=uuid.uuid4().hex, name="routing")
        s.add(acct)
        await s.flush()
        ours = Zone(account_id=acct.id, name="ours.test", routing_enabled=True,
                    support_subaddress=True)
        second = Zone(account_id=acct.id, name="second.test", routing_enabled=True)
        s.add_all([ours, second])
        await s.flush()
        s.add_all([
            RoutingDomain(zone_id=ours.id, name="ours.test"),
            RoutingDomain(zone_id=second.id, name="second.test"),
            DestinationAddress(account_id=acct.id, email="dest@inbox.test", verified_at=now),
            DestinationAddress(account_id=acct.id, email="other@inbox.test", verified_at=now),
            DestinationAddress(account_id=acct.id, email="hop@second.test", verified_at=now),
            DestinationAddress(account_id=acct.id, email="pending@inbox.test"),
        ])

        def rule(zone: Zone, to: str, action: str, *values: str) -> RoutingRule:
            return RoutingRule(zone_id=zone.id, name=to, matchers=[
                {"type": "literal", "field": "to", "value": to}],
                actions=[{"type": action, "value": list(values)}])

        s.add_all([
            rule(ours, "user@ours.test", "forward", "dest@inbox.test"),
            rule(ours, "chain@ours.test", "forward", "hop@second.test"),
            rule(ours, "multi@ours.test", "forward", "dest@inbox.test", "other@inbox.test"),
            rule(ours, "drop@ours.test", "drop"),
            rule(ours, "code@ours.test", "worker", "my-handler"),
            rule(ours, "pending@ours.test", "forward", "pending@inbox.test"),
            rule(second, "hop@second.test", "forward", "dest@inbox.test"),
        ])
        return acct.id


async def start_node(world: World, name: str, hostname: str, srs_domain: str,
                     address: str, port: int, tweak=None) -> Node:
    settings = settings_for(world, hostname, srs_domain, address, port)
    if tweak is not None:
        tweak(settings)
    db = Database(world.db_url, pool_size=5)
    ctx = NodeContext(settings=settings, db=db,
                      resolver=DnsResolver.from_settings(settings.dns), node_id=f"node-{name}")
    # The forwarding key: made by the node's own key store, published in test DNS.
    key = await KeyStore(db, settings).key_for(srs_domain, generate=True)
    assert key is not None
    world.dns.add_txt(key.dns_name, key.dns_txt_value())
    router = inbound_router(ctx)
    server = MxServer(ctx, shutdown_grace=2, router=router)
    await server.start()
    node = Node(server, router, settings, db, ctx)
    world.nodes[name] = node
    return node


def verify_all_dkim(data: bytes, txt) -> dict[str, bool]:
    """{d=: verified} for every DKIM-Signature, by dkimpy."""
    d = dkim.DKIM(data)
    count = sum(1 for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")
                if line.lower().startswith(b"dkim-signature:"))
    out: dict[str, bool] = {}
    for i in range(count):
        ok = d.verify(idx=i, dnsfunc=txt)
        out[d.domain.decode()] = bool(ok)
    return out


def header(data: bytes, name: str) -> list[bytes]:
    """Raw values (unfolded) of every `name` field of the header section."""
    head = data.split(b"\r\n\r\n", 1)[0]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    want = name.lower().encode() + b":"
    return [f.split(b":", 1)[1].strip() for f in fields if f.lower().startswith(want)]


def body(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]



@pytest.fixture(name="world")
async def world_fixture(db_url, dns_server, make_sink):
    port = free_port("127.0.0.2", "127.0.0.3", "127.0.0.4")
    inbox = make_sink("127.0.0.2", port=port, hostname="mx.inbox.test")
    sender_mx = make_sink("127.0.0.3", port=port, hostname="mx.sender.test")
    key = _make_key()
    publish(dns_server, key)
    db = Database(db_url, pool_size=5)
    w = World(dns_server, db, db_url, port, inbox, sender_mx, key)
    w.account_id = await seed(db)
    await start_node(w, "a", "mx.ours.test", "fwda.test", "127.0.0.1", 0)
    await start_node(w, "b", "mx.second.test", "fwdb.test", "127.0.0.4", port)
    yield w
    for node in w.nodes.values():
        await node.server.stop()
        await node.db.close()
    await db.close()
