"""Graceful stop (SIGTERM) and reload (SIGHUP) of a real `mta serve` under load.

World: the MX test world (tests/smtp/conftest.py: ours.test forwards user@ to the
verified dest@inbox.test; good.test's SPF allows 127.0.0.1) on the test's database, and
account "acme" sending from sender.test over the HTTP API to rcpt.test. inbox.test and
rcpt.test have their MX on a sink at 127.0.0.2 (delivery.port points at it).
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import signal
import ssl
import time
from email.utils import formatdate, make_msgid

import httpx
import pytest

from mta.config import Settings
from mta.sending.domains import domain_records, onboard_sending_domain
from mta.store.models import Account, RoutingRule, Zone
from mta.tokens import create_token
from tests.harness.node import free_port
from tests.smtp.conftest import publish_world, seed

SECRET = "test-secret-key-not-for-production"  # the node harness's secret_key


class Smtp:
    """A plain SMTP client on asyncio streams: one command, one (last) reply line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext | None = None) -> Smtp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname="" if ctx else None)
        conn = cls(reader, writer)
        greeting = await conn.reply()
        assert greeting.startswith("220 "), greeting
        return conn

    async def reply(self) -> str:
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode()
            if not line:
                raise ConnectionResetError("closed")
            if line[3:4] != "-":
                return line.rstrip("\r\n")

    async def cmd(self, line: str | bytes) -> str:
        self.writer.write(line if isinstance(line, bytes) else f"{line}\r\n".encode())
        await self.writer.drain()
        return await self.reply()

    async def starttls(self, ctx: ssl.SSLContext) -> dict:
        assert (await self.cmd("STARTTLS")).startswith("220 ")
        await self.writer.start_tls(ctx, server_hostname="")
        return self.writer.get_extra_info("peercert")

    async def send(self, mail_from: str, rcpt: str, subject: str) -> str:
        """One transaction; the reply to the end of DATA (or the first refusal)."""
        for line in (f"MAIL FROM:<{mail_from}>", f"RCPT TO:<{rcpt}>", "DATA"):
            r = await self.cmd(line)
            if r[0] not in "23":
                if line != "DATA":
                    await self.cmd("RSET")
                return r
        raw = (f"From: <{mail_from}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
               f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='good.test')}\r\n"
               f"\r\nbody of {subject}\r\n.\r\n")
        return await self.cmd(raw.encode())

    def close(self) -> None:
        self.writer.close()


def no_verify(tls) -> ssl.SSLContext:
    ctx = tls.client_context()
    ctx.check_hostname = False  # we compare the certificate's names ourselves
    return ctx


def names(peercert: dict) -> set[str]:
    return {v for k, v in peercert.get("subjectAltName", ()) if k == "DNS"}


@pytest.fixture
async def world(db, db_url, dns_server, make_sink, keys):
    publish_world(dns_server, keys)
    await seed(db)
    settings = Settings()
    settings.secret_key = SECRET
    async with db.session() as s:
        acct = Account(name="acme")
        s.add(acct)
        await s.flush()
        s.add(Zone(account_id=acct.id, name="sender.test"))
        await s.flush()
        await onboard_sending_domain(s, settings, "sender.test")
        _, records = await domain_records(s, settings, "sender.test")
        _, token = await create_token(s, acct.id, "send", ["email_sending:send"])
        account_id = acct.id
    for r in records:
        if r["type"] == "TXT":
            dns_server.add_txt(r["name"], r["content"])
    sink = make_sink("127.0.0.2", port=free_port("127.0.0.2"))
    dns_server.add_zone("""
        inbox.test.    300 IN MX 10 mx.sink.test.
        rcpt.test.     300 IN MX 10 mx.sink.test.
        mx.sink.test.  300 IN A 127.0.0.2
    """)
    return {"db": db, "db_url": db_url, "sink": sink, "token": token,
            "account": account_id, "dns": dns_server}


def node_config(world, **over) -> dict:
    config = {"database": {"url": world["db_url"]},
              "delivery": {"port": world["sink"].port, "poll_interval": "0.2s"},
              "logging": {"level": "info"},
              "srs": {"domain": "srs.ours.test"}}
    config.update(over)
    return config


def delivered(sink) -> collections.Counter:
    """How many times each Subject reached the sink."""
    seen: collections.Counter = collections.Counter()
    for m in list(sink.messages):
        for line in m.data.split(b"\r\n"):
            if line.lower().startswith(b"subject: "):
                seen[line[9:].decode()] += 1
                break
    return seen


async def queue_state(db, subjects: list[str]) -> list[tuple]:
    """What the queue says about the messages with these subjects (for a failure)."""
    from sqlalchemy import select

    from mta.store.models import Delivery, Message

    out = []
    async with db.session() as s:
        for subject in subjects:
            rows = (await s.execute(
                select(Delivery.status, Delivery.attempts, Delivery.next_attempt_at,
                       Delivery.lease_owner, Delivery.last_reply)
                .join(Message, Message.id == Delivery.message_id)
                .where(Message.raw.contains(f"Subject: {subject}\r\n".encode())))).all()
            out.append((subject, [tuple(r) for r in rows]))
    return out


# --- SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_load_loses_nothing_acknowledged(world, make_node, workers):
    """`workers=2`: as the systemd unit runs it, a supervisor and its workers."""
    # A forward cut short by the stop is deferred on the normal retry schedule: make its
    # first retry come soon, so "delivered after the restart" is seen within the test.
    node = make_node(node_config(world, limits={"max_sessions_per_ip": 200},
                                 retry={"first_retry": "1s"}), workers=workers)
    mx_port, http = node.port("mx"), f"http://127.0.0.1:{node.port('http')}"
    acked: set[str] = set()  # 250 / 200: we took responsibility
    retry: set[str] = set()  # 4xx / 503: the sender keeps it
    started = asyncio.Event()
    connected: list[int] = []

    async def smtp_client(i: int) -> None:
        """Messages one after another on one session, until the node stops it."""
        try:
            conn = await Smtp.connect(mx_port)
            assert (await conn.cmd("EHLO client.test")).startswith("250 ")
        except (OSError, AssertionError, TimeoutError):
            return
        connected.append(i)
        for j in range(1000):
            subject = f"smtp-{i}-{j}"
            try:
                r = await conn.send("alice@good.test", "user@ours.test", subject)
            except (OSError, TimeoutError):
                return  # cut mid-transaction: never acknowledged
            if not r.startswith("250 "):
                assert r[0] == "4", r  # only ever 2xx or 4xx
                retry.add(subject)
                return
            acked.add(subject)
            if len(acked) >= 60 and len(connected) == 50:
                started.set()

    async def http_client(i: int, client: httpx.AsyncClient) -> None:
        for j in range(1000):
            subject = f"http-{i}-{j}"
            mime = (f"From: hello@sender.test\r\nTo: r@rcpt.test\r\nSubject: {subject}\r\n"
                    f"\r\nbody\r\n")
            try:
                resp = await client.post(
                    f"{http}/client/v4/accounts/{world['account']}/email/sending/send_raw",
                    json={"from": "hello@sender.test", "recipients": ["r@rcpt.test"],
                          "mime_message": mime},
                    headers={"Authorization": f"Bearer {world['token']}"})
            except httpx.HTTPError:
                return  # no answer: the client does not know, nothing claimed
            if resp.status_code == 200:
                acked.add(subject)
            else:
                assert resp.status_code == 503, (resp.status_code, resp.text)
                retry.add(subject)
                return

    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [asyncio.create_task(smtp_client(i)) for i in range(50)]
        tasks += [asyncio.create_task(http_client(i, client)) for i in range(10)]
        await asyncio.wait_for(started.wait(), 120)
        t0 = time.monotonic()
        node.signal(signal.SIGTERM)
        rc = await asyncio.to_thread(node.proc.wait, 90)
        took = time.monotonic() - t0
        await asyncio.gather(*tasks)
    assert rc == 0, node.output[-3000:]
    # mx/submission/http drain for at most their 30 s grace, then workers stop.
    assert took < 45, f"took {took:.1f}s to stop"
    kinds = collections.Counter(s.split("-")[0] for s in acked)
    assert kinds["smtp"] >= 50 and kinds["http"] >= 1, kinds

    node.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = delivered(world["sink"])
        if acked <= set(got):
            break
        await asyncio.sleep(0.5)
    got = delivered(world["sink"])
    missing = sorted(acked - set(got))
    assert not missing, (f"{len(missing)} acknowledged but never delivered: {missing[:10]}; "
                         f"their deliveries: {await queue_state(world['db'], missing[:5])}")
    told_to_retry = sorted(retry & set(got))
    assert not told_to_retry, f"answered 4xx/503 yet delivered: {told_to_retry[:10]}"
    print(f"SIGTERM after {dict(kinds)} acknowledged; stopped in {took:.1f}s; "
          f"{len(retry)} told to retry; duplicates: "
          f"{sum(1 for s in acked if got[s] > 1)}")


# --- SIGHUP ----------------------------------------------------------------------------------


HANDLER = """
async def email(message, env, ctx):
    message.set_reject("handler {version}")
"""


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_rules_handlers_and_certificates(world, make_node, tls, tmp_path,
                                                              workers):
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = tls.write_server_files(certs, "old.mx.test")
    handler = tmp_path / "handler.py"
    handler.write_text(HANDLER.format(version="one"))
    async with world["db"].session() as s:
        zone = (await s.execute(Zone.__table__.select().where(Zone.name == "ours.test"))).one()
        s.add(RoutingRule(zone_id=zone.id, name="h", matchers=[
            {"type": "literal", "field": "to", "value": "h@ours.test"}],
            actions=[{"type": "worker", "value": ["echo"]}]))
    node = make_node(node_config(
        world,
        listeners={"mx": {"tls_cert": str(cert), "tls_key": str(key)},
                   "submission": {"enabled": True, "tls_cert": str(cert),
                                  "tls_key": str(key)}},
        inbound={"recipient_cache_ttl": "1h"},
        handlers={"registry": [{"name": "echo", "target": str(handler)}]}), workers=workers)
    ctx = no_verify(tls)
    mx, sub = node.port("mx"), node.port("submission")

    # Connections open across the reload: one inside STARTTLS, one mid-transaction,
    # one on implicit TLS.
    tls_held = await Smtp.connect(mx)
    await tls_held.cmd("EHLO client.test")
    assert names(await tls_held.starttls(ctx)) == {"old.mx.test"}
    assert (await tls_held.cmd("EHLO client.test")).startswith("250 ")
    plain_held = await Smtp.connect(mx)
    await plain_held.cmd("EHLO client.test")
    assert (await plain_held.cmd("MAIL FROM:<alice@good.test>")).startswith("250 ")
    implicit_held = await Smtp.connect(sub, ctx)
    assert names(implicit_held.writer.get_extra_info("peercert")) == {"old.mx.test"}

    # Before: the new rule is not seen (routing cached for an hour), the handler says one.
    probe = await Smtp.connect(mx)
    await probe.cmd("EHLO client.test")
    assert (await probe.send("alice@good.test", "h@ours.test", "hup-1")).endswith("handler one")
    async with world["db"].session() as s:
        zone = (await s.execute(Zone.__table__.select().where(Zone.name == "ours.test"))).one()
        s.add(RoutingRule(zone_id=zone.id, name="late", matchers=[
            {"type": "literal", "field": "to", "value": "late@ours.test"}],
            actions=[{"type": "forward", "value": ["dest@inbox.test"]}]))
    assert (await probe.send("alice@good.test", "late@ours.test", "hup-2")).startswith("550 5.1.1")

    tmp_cert, tmp_key = tls.write_server_files(tmp_path, "new.mx.test")
    shutil.copy(tmp_cert, cert)
    shutil.copy(tmp_key, key)
    handler.write_text(HANDLER.format(version="two"))
    node.signal(signal.SIGHUP)
    # The node's own line (with workers: the supervisor's, once every worker confirmed).
    await asyncio.to_thread(node.wait_for_log, lambda e: e.get("event") == "node.reloaded"
                            and "worker" not in e)

    # Nothing dropped: each held connection carries on where it was.
    assert (await tls_held.send("alice@good.test", "user@ours.test", "hup-tls")).startswith("250 ")
    assert (await plain_held.cmd("RCPT TO:<user@ours.test>")).startswith("250 ")
    assert (await plain_held.cmd("RSET")).startswith("250 ")
    assert (await implicit_held.cmd("EHLO client.test")).startswith("250 ")
    # After: new certificate on both kinds of TLS, the new rule, the new handler.
    fresh = await Smtp.connect(mx)
    await fresh.cmd("EHLO client.test")
    assert names(await fresh.starttls(ctx)) == {"new.mx.test"}
    fresh_implicit = await Smtp.connect(sub, ctx)
    assert names(fresh_implicit.writer.get_extra_info("peercert")) == {"new.mx.test"}
    assert (await probe.send("alice@good.test", "late@ours.test", "hup-3")).startswith("250 ")
    assert (await probe.send("alice@good.test", "h@ours.test", "hup-4")).endswith("handler two")
    for conn in (tls_held, plain_held, implicit_held, probe, fresh, fresh_implicit):
        await conn.cmd("QUIT")
        conn.close()
    await asyncio.to_thread(world["sink"].wait_for, 2, 30)
    assert {"hup-tls", "hup-3"} <= set(delivered(world["sink"]))
    assert node.stop() == 0



# --- PROXY protocol on the real node (uvloop, supervisor and workers) ---------------------


async def test_proxy_protocol_on_a_real_node(world, make_node, tls, tmp_path):
    from tests.smtp.test_proxy_protocol import v1, v2

    cert, key = tls.write_server_files(tmp_path, "mx.node.test")
    lb = {"trusted": ["127.0.0.1/32"], "required": True, "timeout": "2s"}
    node = make_node(node_config(world, listeners={
        "mx": {"proxy_protocol": lb},
        "submission": {"enabled": True, "tls_cert": str(cert), "tls_key": str(key),
                       "proxy_protocol": lb}}), workers=2)

    async def proxied(port: int, header: bytes, local: str = "127.0.0.1",
                      ctx: ssl.SSLContext | None = None) -> Smtp | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(local, 0))
        writer.write(header)
        await writer.drain()
        try:
            if ctx is not None:
                await writer.start_tls(ctx, server_hostname="")
            conn = Smtp(reader, writer)
            greeting = await conn.reply()
        except (ConnectionError, ssl.SSLError):
            return None
        assert greeting.startswith("220 "), greeting
        return conn

    conn = await proxied(node.port("mx"), v2("192.0.2.1"))
    assert conn is not None
    await conn.cmd("EHLO lb-client.test")
    # strict.test's SPF allows only 192.0.2.1 (DMARC p=reject): accepted, so judged as it.
    assert (await conn.send("alice@strict.test", "user@ours.test", "via-lb")).startswith("250 ")
    await conn.cmd("QUIT")
    await asyncio.to_thread(world["sink"].wait_for, 1, 30)
    assert "via-lb" in delivered(world["sink"])
    assert await proxied(node.port("mx"), v1("192.0.2.1"), local="127.0.0.2") is None
    sub = await proxied(node.port("submission"), v2("2001:db8::1"), ctx=no_verify(tls))
    assert sub is not None and (await sub.cmd("EHLO c.test")).startswith("250 ")
    await sub.cmd("QUIT")
    assert node.stop() == 0
