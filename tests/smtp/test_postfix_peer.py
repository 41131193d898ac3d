"""Postfix from Debian as a real peer of the MX listener (issue 13): a private Postfix
instance on loopback relays to our MX. What it hands us is stored byte for byte, our
refusals reach it as permanent, and one BDAT transcript gets the same answers from
Postfix's smtpd and from us. (Postfix's SMTP client never sends BDAT — its smtp binary
has no BDAT command — so it reaches us with DATA even though we offer CHUNKING.)"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.harness.postfix import PostfixPeer, postfix_available
from tests.smtp.conftest import make_message

pytestmark = pytest.mark.skipif(not postfix_available(), reason="postfix not installed")


@pytest.fixture
async def postfix(mx):
    # Not under pytest's tmp_path: its directories are private to root, and Postfix's
    # daemons run as the postfix user.
    directory = Path(tempfile.mkdtemp(prefix="mta-test-postfix-"))
    directory.chmod(0o755)
    peer = PostfixPeer(directory, (mx.host, mx.port)).start()
    yield peer
    peer.stop()
    shutil.rmtree(directory, ignore_errors=True)


def chunks() -> float:
    return REGISTRY.get_sample_value("mta_smtp_bdat_chunks_total") or 0.0


def submit(peer: PostfixPeer, mail_from: str, rcpt: str, raw: bytes,
           options: tuple[str, ...] = ()) -> None:
    with smtplib.SMTP("127.0.0.1", peer.port, timeout=20) as s:
        s.sendmail(mail_from, [rcpt], raw, mail_options=list(options))


async def wait_for_messages(world, count: int, timeout: float = 30.0) -> list:
    for _ in range(int(timeout * 10)):
        messages = await world.messages()
        if len(messages) >= count:
            return messages
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(await world.messages())} message(s) stored, expected {count}")


async def test_postfix_relays_to_us_byte_for_byte(mx, postfix) -> None:
    body = "".join(f"line {i}\r\n" for i in range(3000)) + ".\r\n..dots stay\r\nend\r\n"
    raw = make_message("alice@good.test", body=body)
    await asyncio.to_thread(submit, postfix, "alice@good.test", "user@ours.test", raw)
    [stored] = await wait_for_messages(mx, 1)
    assert stored.rcpt_to == ["user@ours.test"] and stored.mail_from == "alice@good.test"
    assert stored.raw.endswith(raw.split(b"\r\n\r\n", 1)[1])  # the body, byte for byte
    assert b"from pf.peer.test" in stored.raw  # Postfix's own Received is kept
    await asyncio.to_thread(postfix.wait_log, "status=sent")


async def bdat_session(port: int, message: bytes) -> list[str]:
    """MAIL, RCPT, the message in two BDAT chunks, then DATA (not allowed after BDAT
    LAST ended the transaction), QUIT: the final line of each reply."""
    half = len(message) // 2
    script = (b"EHLO client.test\r\nMAIL FROM:<alice@good.test>\r\n"
              b"RCPT TO:<user@ours.test>\r\n"
              + b"BDAT %d\r\n" % half + message[:half]
              + b"BDAT %d LAST\r\n" % (len(message) - half) + message[half:]
              + b"DATA\r\nQUIT\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(script)
    await writer.drain()
    lines = (await asyncio.wait_for(reader.read(), 20)).decode().split("\r\n")
    writer.close()
    return [ln for ln in lines if ln[:3].isdigit() and ln[3:4] == " "]


async def test_one_bdat_transcript_same_answers_from_postfix_and_us(mx, postfix) -> None:
    message = make_message("alice@good.test", body="chunked\r\n.\r\nstill chunked\r\n")
    before = chunks()
    ours = await bdat_session(mx.port, message)
    theirs = await bdat_session(postfix.port, message)
    assert chunks() == before + 2
    codes_ours = [line[:3] for line in ours]
    assert codes_ours == [line[:3] for line in theirs], (ours, theirs)
    assert codes_ours == ["220", "250", "250", "250", "250", "250", "503", "221"], ours
    # What Postfix took in BDAT it relays to us (with DATA): the same message twice.
    stored = await wait_for_messages(mx, 2)
    assert all(m.raw.endswith(message.split(b"\r\n\r\n", 1)[1]) for m in stored)


async def test_our_refusal_reaches_postfix_as_permanent(mx, postfix) -> None:
    # strict.test's SPF allows only 192.0.2.1 and nothing is DKIM-signed: 550 5.7.26.
    raw = make_message("bob@strict.test")
    await asyncio.to_thread(submit, postfix, "bob@strict.test", "user@ours.test", raw)
    log = await asyncio.to_thread(postfix.wait_log, "status=bounced")
    assert "550 5.7.26" in log
    assert await mx.count() == 0


async def test_postfix_relays_smtputf8_to_us(mx, postfix) -> None:
    raw = make_message("josé@good.test", subject="¡hola!", body="Grüße\r\n")
    await asyncio.to_thread(submit, postfix, "josé@good.test", "user@ours.test", raw,
                            ("SMTPUTF8",))
    [stored] = await wait_for_messages(mx, 1)
    assert stored.mail_from == "josé@good.test"
    assert "¡hola!".encode() in stored.raw and b"with UTF8SMTP id" in stored.raw
    await asyncio.to_thread(postfix.wait_log, "status=sent")


async def test_postfix_passes_its_clients_dsn_request_to_us(mx, postfix) -> None:
    """RFC 3461 from Postfix's side: we offer DSN, so Postfix relays RET/ENVID and
    NOTIFY/ORCPT instead of answering the request itself; we accept and keep them."""
    raw = make_message("alice@good.test")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=20) as s:
            s.sendmail("alice@good.test", ["user@ours.test"], raw,
                       mail_options=["RET=HDRS", "ENVID=pf+2B1"],
                       rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;old@ours.test"])

    await asyncio.to_thread(send)
    [stored] = await wait_for_messages(mx, 1)
    assert (stored.dsn_ret, stored.dsn_envid) == ("HDRS", "pf+1")
    log = await asyncio.to_thread(postfix.wait_log, "status=sent")
    assert "relay=127.0.0.1" in log
