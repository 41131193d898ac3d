"""Destination address verification: a rule to an unverified address is inactive (and
says why) until the token from the verification mail is used; then mail flows."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import yaml
from sqlalchemy import select
from starlette.applications import Starlette

from mta.api import verification as api_verification
from mta.api.server import _UvicornService
from mta.config import Listener
from mta.routing import verification
from mta.routing.rules import Rule
from mta.store.models import DestinationAddress, RoutingRule
from tests.routing.world import (
    free_port,
    verify_all_dkim,
    world_fixture,  # noqa: F401 - the `world` fixture
)
from tests.smtp.conftest import dkim_sign, make_message, smtp_send

TOKEN_RE = re.compile(rb"mta addresses verify (\S+)")


def signed(w) -> bytes:
    return dkim_sign(make_message("alice@sender.test", to="pending@ours.test"),
                     "sender.test", "sel", w.sender_key)


async def send_to_pending(w) -> tuple[int, str]:
    return await smtp_send(w.a, signed(w), "alice@sender.test", rcpts=("pending@ours.test",))


async def mail_token(w) -> tuple[str, bytes]:
    """Send the pending verification mails and deliver them; (token, mail)."""
    sent = await verification.send_pending_verifications(w.db, w.a.settings)
    assert sent == ["pending@inbox.test"]
    assert await w.workers(w.a).run_once() == 1
    mail = w.inbox.wait_for(1)[0]
    assert mail.rcpt_tos == ["pending@inbox.test"]
    match = TOKEN_RE.search(mail.data)
    assert match, mail.data
    return match.group(1).decode(), mail.data


async def test_unverified_destination_is_inactive_until_the_link_is_used(world):
    w = world
    code, text = await send_to_pending(w)
    assert code == 550 and text.startswith("5.1.1"), text
    async with w.db.session() as s:
        row = (await s.execute(select(RoutingRule).where(
            RoutingRule.name == "pending@ours.test"))).scalar_one()
    assert verification.inactive_reason(Rule.from_row(row), {"dest@inbox.test"}) == \
        "destination address not verified: pending@inbox.test"

    port = free_port("127.0.0.1")
    w.a.settings.routing.verification_base_url = f"http://127.0.0.1:{port}"
    token, mail = await mail_token(w)
    assert verify_all_dkim(mail, w.txt()) == {"fwda.test": True}
    link = re.search(rb"(http://127\.0\.0\.1:\d+/\S+)", mail).group(1).decode()

    app = Starlette(routes=api_verification.routes())
    app.state.ctx = w.a.ctx
    http = _UvicornService(Listener(address="127.0.0.1", port=port), app)
    await http.start()
    try:
        async with httpx.AsyncClient() as client:
            # A scanner or preview fetching the link verifies nothing: GET only shows
            # the confirmation button, which POSTs the same link.
            page = await client.get(link)
            assert page.status_code == 200 and 'method="post"' in page.text
            assert "Verify my address" in page.text and token in page.text
            code, text = await send_to_pending(w)
            assert code == 550 and text.startswith("5.1.1"), text
            bad = await client.post(link.replace(token, token[:-3] + "abc"))
            assert bad.status_code == 404
            ok = await client.post(link)
            assert ok.status_code == 200 and "pending@inbox.test" in ok.text
    finally:
        await http.stop()

    code, text = await send_to_pending(w)
    assert code == 250, text
    got = w.inbox.wait_for(2)[1]
    assert got.rcpt_tos == ["pending@inbox.test"] and got.mail_from.startswith("SRS0=")


async def test_cli_verifies_and_expired_tokens_are_refused(world, tmp_path):
    w = world
    token, _ = await mail_token(w)
    cfg = tmp_path / "mta.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": w.db_url},
                                   "secret_key": w.a.settings.secret_key,
                                   "routing": {"verification_ttl": "1h"}}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mta", "-c", str(cfg), "addresses",
                               *args], capture_output=True, text=True, timeout=60)

    async with w.db.session() as s:
        row = (await s.execute(select(DestinationAddress).where(
            DestinationAddress.email == "pending@inbox.test"))).scalar_one()
        row.verification_sent_at = datetime.now(UTC) - timedelta(hours=2)
    expired = cli("verify", token)
    assert expired.returncode == 1 and "expired" in expired.stderr
    code, _ = await send_to_pending(w)
    assert code == 550

    resent = cli("send-verification", "--id", row.id)  # renews the lifetime
    assert resent.returncode == 0, resent.stderr
    done = cli("verify", token)
    assert done.returncode == 0, done.stderr
    assert "verified pending@inbox.test" in done.stdout
    code, text = await send_to_pending(w)
    assert code == 250, text
