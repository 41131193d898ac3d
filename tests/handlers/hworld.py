"""The handlers test world: the routing world (tests/routing/world.py: node A on
127.0.0.1 with its router, sinks for inbox.test and sender.test, real DNS, real
PostgreSQL) plus rules whose action is `worker`, the handlers registered on node A, and
DKIM keys of the receiving domains published (replies are signed with them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from mta.config import HandlerEntry, HandlersSettings
from mta.routing.forward import KeyStore
from mta.store.models import Event, Message, RoutingRule, Zone
from tests.routing.world import world_fixture  # noqa: F401 - the `world` fixture

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "handlers"
SAMPLE = "tests.handlers.sample_handlers"

RULES = {
    "support@ours.test": "support", "spam@ours.test": "spam",
    "bounces@ours.test": "bounces", "support@second.test": "storage",
    "rr-dmarc@ours.test": "replyrules", "rr-twice@ours.test": "replyrules",
    "rr-rcpt@ours.test": "replyrules", "rr-domain@ours.test": "replyrules",
    "rr-refs@ours.test": "replyrules", "fail@ours.test": "raiser",
    "hang@ours.test": "hanger", "fwdh@ours.test": "fwdheaders",
    "fwdu@ours.test": "fwdunverified", "fallback@ours.test": "raiser-fallback",
    "later@ours.test": "waituntil",
}


def handler_settings() -> HandlersSettings:
    def e(name: str, target: str, **kw) -> HandlerEntry:
        return HandlerEntry(name=name, target=target, **kw)

    return HandlersSettings(kv_namespaces=["RESULTS"], registry=[
        e("support", str(EXAMPLES / "support.py"), vars=["FORWARD_TO=dest@inbox.test"]),
        e("spam", str(EXAMPLES / "spam_filter.py"), vars=["INBOX=dest@inbox.test"]),
        e("bounces", str(EXAMPLES / "bounces.py"), vars=["ADMIN=dest@inbox.test"],
          kv_namespaces=["SUPPRESSION_LIST"]),
        e("storage", str(EXAMPLES / "storage.py"),
          vars=["SUPPORT_TEAM=dest@inbox.test", "GENERAL=other@inbox.test"],
          kv_namespaces=["EMAILS", "SUPPORT_TICKETS"]),
        e("replyrules", f"{SAMPLE}:reply_rules"),
        e("raiser", f"{SAMPLE}:raiser"),
        e("hanger", f"{SAMPLE}:hanger", time_limit=1.0),
        e("fwdheaders", f"{SAMPLE}:forward_headers"),
        e("fwdunverified", f"{SAMPLE}:forward_unverified"),
        e("raiser-fallback", f"{SAMPLE}:raiser", fallback="forward",
          forward_to="other@inbox.test"),
        e("waituntil", f"{SAMPLE}:wait_until"),
    ])


@pytest.fixture(name="hworld")
async def hworld_fixture(world):
    w = world
    async with w.db.session() as s:
        zones = {z.name: z for z in (await s.execute(select(Zone))).scalars()}
        for to, name in RULES.items():
            zone = zones[to.rpartition("@")[2]]
            s.add(RoutingRule(zone_id=zone.id, name=to, matchers=[
                {"type": "literal", "field": "to", "value": to}],
                actions=[{"type": "worker", "value": [name]}]))
    keys = KeyStore(w.db, w.a.settings)
    for domain in ("ours.test", "second.test"):
        key = await keys.key_for(domain, generate=True)
        assert key is not None
        w.dns.add_txt(key.dns_name, key.dns_txt_value())
    # Registered the way SIGHUP does it: the running settings get a new section.
    w.a.settings.handlers = handler_settings()
    yield w


async def events(w, status: str | None = None) -> list[Event]:
    async with w.db.session() as s:
        q = select(Event).order_by(Event.id)
        if status:
            q = q.where(Event.status == status)
        return list((await s.execute(q)).scalars())


async def messages(w, source: str | None = None) -> list[Message]:
    async with w.db.session() as s:
        q = select(Message).order_by(Message.received_at)
        if source:
            q = q.where(Message.source == source)
        return list((await s.execute(q)).scalars())
