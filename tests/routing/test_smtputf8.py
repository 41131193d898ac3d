"""SMTPUTF8 (RFC 6531/6532) through the MX (issue 13): an internationalised sender and
recipient are accepted when the transaction asks for SMTPUTF8, matched by the rules,
forwarded with SMTPUTF8 to a next hop that offers it, and refused with 5.6.7 — never
downgraded — when the next hop does not."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from mta.store.models import DestinationAddress, RoutingRule, Zone
from tests.harness.postfix import PostfixPeer, postfix_available
from tests.routing.world import world_fixture  # noqa: F401 - the `world` fixture
from tests.smtp.conftest import codes, dkim_sign, make_message, raw_session

SENDER = "josé@sender.test"


async def add_rule(w, to: str) -> None:
    async with w.db.session() as s:
        zone = (await s.execute(select(Zone).where(Zone.name == "ours.test"))).scalar_one()
        s.add(RoutingRule(zone_id=zone.id, name=to, matchers=[
            {"type": "literal", "field": "to", "value": to}],
            actions=[{"type": "forward", "value": ["dest@inbox.test"]}]))


def utf8_session(rcpt: str, raw: bytes, smtputf8: bool = True) -> bytes:
    param = " SMTPUTF8" if smtputf8 else ""
    return (f"EHLO client.test\r\nMAIL FROM:<{SENDER}>{param}\r\nRCPT TO:<{rcpt}>\r\n"
            f"DATA\r\n").encode() + raw + b".\r\nQUIT\r\n"


def signed_utf8(w) -> bytes:
    raw = make_message(SENDER, to="pedro.ñúñez@ours.test", subject="¡hola!",
                       body="Grüße\r\n")
    return dkim_sign(raw, "sender.test", "sel", w.sender_key)


async def test_utf8_addresses_are_accepted_matched_and_forwarded_with_smtputf8(world):
    w = world
    await add_rule(w, "pedro.ñúñez@ours.test")
    out = await raw_session(w.a, utf8_session("Pedro.Ñúñez@ours.test", signed_utf8(w)))
    c = codes(out)
    assert any(line == "250 SMTPUTF8" for line in out.split("\r\n")), out  # offered
    assert c[2].startswith("250 2.1.0") and c[3].startswith("250 2.1.5"), c
    assert c[5].startswith("250 2.0.0"), c
    [got] = w.inbox.wait_for(1)
    assert got.rcpt_tos == ["dest@inbox.test"]
    assert got.mail_from.startswith("SRS0=") and "=josé@fwda.test" in got.mail_from
    assert got.smtputf8
    assert "¡hola!".encode() in got.data and b"with UTF8SMTP id" in got.data


async def test_utf8_local_part_without_smtputf8_is_553(world):
    w = world
    out = await raw_session(w.a, utf8_session("user@ours.test", signed_utf8(w),
                                              smtputf8=False))
    c = codes(out)
    assert c[2].startswith("553 5.6.7") and "SMTPUTF8" in c[2], c
    assert w.inbox.messages == []


async def test_next_hop_without_smtputf8_gets_nothing_and_the_sender_hears_567(world):
    w = world
    w.inbox.smtputf8 = False
    out = await raw_session(w.a, utf8_session("user@ours.test", signed_utf8(w)))
    c = codes(out)
    assert c[5].startswith("553 5.6.7"), c  # refused in-session, not downgraded
    # Our own verdict, not quoted as if the next hop had said it.
    assert "does not offer SMTPUTF8" in c[5] and "its server said" not in c[5], c
    assert w.inbox.messages == []


async def test_we_forward_smtputf8_to_postfix(world):
    """Postfix from Debian as the forwarding destination's MX (pf.test on 127.0.0.5),
    relaying on to the inbox sink: it must take our SMTPUTF8 transaction."""
    if not postfix_available():
        pytest.skip("postfix not installed")
    w = world
    w.dns.add_zone("""
        pf.test. 300 IN MX 10 mx.pf.test.
        mx.pf.test. 300 IN A 127.0.0.5
    """)
    async with w.db.session() as s:
        zone = (await s.execute(select(Zone).where(Zone.name == "ours.test"))).scalar_one()
        s.add(DestinationAddress(account_id=w.account_id, email="ana@pf.test",
                                 verified_at=datetime.now(UTC)))
        s.add(RoutingRule(zone_id=zone.id, name="intl", matchers=[
            {"type": "literal", "field": "to", "value": "intl@ours.test"}],
            actions=[{"type": "forward", "value": ["ana@pf.test"]}]))
    directory = Path(tempfile.mkdtemp(prefix="mta-test-postfix-"))
    directory.chmod(0o755)
    peer = PostfixPeer(directory, ("127.0.0.2", w.port), hostname="mx.pf.test",
                       listen=("127.0.0.5", w.port)).start()
    try:
        out = await raw_session(w.a, utf8_session("intl@ours.test", signed_utf8(w)))
        c = codes(out)
        assert c[5].startswith("250 2.0.0"), (c, peer.log_text()[-2000:])
        [got] = await asyncio.to_thread(w.inbox.wait_for, 1, 30)
        assert got.rcpt_tos == ["ana@pf.test"] and "=josé@fwda.test" in got.mail_from
        assert b"by mx.pf.test" in got.data and "¡hola!".encode() in got.data
        # Postfix relays with SMTPUTF8 only mail it received with SMTPUTF8 (it does not
        # autodetect for SMTP clients): the sink seeing it shows we declared it.
        assert got.smtputf8
        assert "status=sent" in peer.log_text()
    finally:
        peer.stop()
        shutil.rmtree(directory, ignore_errors=True)



def ascii_envelope_utf8_header(w) -> bytes:
    raw = dkim_sign(make_message("jose@sender.test", subject="¡hola!", body="hola\r\n"),
                    "sender.test", "sel", w.sender_key)
    return (b"EHLO client.test\r\nMAIL FROM:<jose@sender.test> SMTPUTF8\r\n"
            b"RCPT TO:<user@ours.test>\r\nDATA\r\n" + raw + b".\r\nQUIT\r\n")


async def test_utf8_header_alone_needs_smtputf8_at_the_next_hop(world):
    """An ASCII envelope, but UTF-8 in the header section (RFC 6532): the next hop must
    offer SMTPUTF8 too, or the forward is refused with 5.6.7 (not sent as 8-bit)."""
    w = world
    w.inbox.smtputf8 = False
    c = codes(await raw_session(w.a, ascii_envelope_utf8_header(w)))
    assert c[5].startswith("553 5.6.7"), c
    assert w.inbox.messages == []


async def test_utf8_header_alone_is_forwarded_with_smtputf8(world):
    w = world
    c = codes(await raw_session(w.a, ascii_envelope_utf8_header(w)))
    assert c[5].startswith("250 2.0.0"), c
    [got] = w.inbox.wait_for(1)
    assert got.smtputf8 and "¡hola!".encode() in got.data
