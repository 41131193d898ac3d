"""Bounces to our SRS addresses reach the original sender; forged or expired ones are
refused at RCPT with 550 5.1.1."""

from __future__ import annotations

import time

from mta.signing.srs import Srs
from tests.routing.world import world_fixture  # noqa: F401 - the `world` fixture
from tests.smtp.conftest import dkim_sign, make_message, smtp_send

BOUNCE = (b"From: Mail Delivery System <MAILER-DAEMON@client.test>\r\n"
          b"To: {rcpt}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
          b"Auto-Submitted: auto-replied\r\n\r\nThe mail you sent could not be delivered.\r\n")


def bounce_to(address: str) -> bytes:
    return BOUNCE.replace(b"{rcpt}", address.encode())


async def test_bounce_to_srs0_reaches_the_original_sender(world):
    w = world
    raw = dkim_sign(make_message("alice@sender.test"), "sender.test", "sel", w.sender_key)
    code, _ = await smtp_send(w.a, raw, "alice@sender.test")
    assert code == 250
    srs_address = w.inbox.wait_for(1)[0].mail_from
    assert srs_address.startswith("SRS0=")
    # The destination's server bounces to the SRS address (null sender).
    code, text = await smtp_send(w.a, bounce_to(srs_address), "", rcpts=(srs_address,))
    assert code == 250, text
    got = w.sender_mx.wait_for(1)[0]
    assert got.rcpt_tos == ["alice@sender.test"]
    assert got.mail_from in ("", "<>")  # a bounce stays a bounce (the sink shows <>)
    assert b"could not be delivered" in got.data


async def test_tampered_hash_is_refused_550_511(world):
    w = world
    good = Srs(w.a.settings.srs.secrets, "fwda.test").forward("alice@sender.test")
    digest = good.split("=")[1]
    forged = good.replace(f"SRS0={digest}=", f"SRS0={'AAAA' if digest != 'AAAA' else 'BBBB'}=")
    code, text = await smtp_send(w.a, bounce_to(forged), "", rcpts=(forged,))
    assert code == 550 and text.startswith("5.1.1"), text
    assert w.sender_mx.messages == []


async def test_expired_srs_address_is_refused(world):
    w = world
    old = Srs(w.a.settings.srs.secrets, "fwda.test",
              clock=lambda: time.time() - 40 * 86400).forward("alice@sender.test")
    code, text = await smtp_send(w.a, bounce_to(old), "", rcpts=(old,))
    assert code == 550 and text.startswith("5.1.1"), text
