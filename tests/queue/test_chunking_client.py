"""Our SMTP client sends BDAT (RFC 3030) to a next hop that offers CHUNKING, and DATA to
one that does not — against Postfix from Debian as the real next hop (issue 13). Postfix
logs the commands of each session ("bdat=3"), relays what it took to a loopback sink,
and the sink shows the message arrived whole, byte for byte."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from mta.queue.smtpclient import BDAT_CHUNK
from tests.harness.postfix import PostfixPeer, postfix_available
from tests.harness.smtp_sink import _free_port
from tests.queue.test_remote import engine

pytestmark = pytest.mark.skipif(not postfix_available(), reason="postfix not installed")

PEER_IP = "127.0.0.5"


@pytest.fixture
def postfix_mx(dns_server, make_sink):
    """Start Postfix as the MX of dest.test (relaying to a sink) with extra main.cf
    settings; returns (peer, sink)."""
    dns_server.add_zone("""
        dest.test.     300 IN MX 10 mx.dest.test.
        mx.dest.test.  300 IN A 127.0.0.5
    """)
    started: list[tuple[PostfixPeer, Path]] = []

    def start(**extra: str) -> tuple[PostfixPeer, object]:
        sink = make_sink("127.0.0.2")
        # Not under pytest's tmp_path: Postfix's daemons run as the postfix user.
        directory = Path(tempfile.mkdtemp(prefix="mta-test-postfix-"))
        directory.chmod(0o755)
        peer = PostfixPeer(directory, (sink.address, sink.port), hostname="mx.dest.test",
                           listen=(PEER_IP, _free_port(PEER_IP)), extra=extra).start()
        started.append((peer, directory))
        return peer, sink

    yield start
    for peer, directory in started:
        peer.stop()
        shutil.rmtree(directory, ignore_errors=True)


def message(body_lines: int, line: bytes = b"x" * 70) -> bytes:
    # Lines a DATA sender must dot-stuff: BDAT sends them as they are.
    body = b"".join(b"%d %s\r\n" % (i, line) for i in range(body_lines))
    return (b"From: a@src.test\r\nTo: ok@dest.test\r\nSubject: chunks\r\n\r\n"
            b".\r\n..two dots\r\n" + body + b".\r\nend\r\n")


def session_commands(peer: PostfixPeer) -> dict[str, int]:
    """The command counts Postfix logs at the end of our session (`bdat=3 quit=1 ...`)."""
    # (The session with commands=0 before it is PostfixPeer.start() seeing it listen.)
    text = peer.wait_log(" quit=1 commands=")
    line = [ln for ln in text.splitlines() if " quit=1 commands=" in ln][-1]
    return {k: int(v.split("/")[0]) for k, v in re.findall(r"(\w+)=([\d/]+)",
                                                            line.split(" from ", 1)[1])}


async def deliver(peer: PostfixPeer, dns_server, raw: bytes, rcpts=("ok@dest.test",)):
    remote = engine(dns_server, peer.port)
    try:
        return await remote.deliver("dest.test", "a@src.test", list(rcpts), raw)
    finally:
        remote.close()  # QUIT: Postfix logs the session's command counts at its end


async def test_bdat_to_postfix_in_pipelined_chunks(dns_server, postfix_mx):
    peer, sink = postfix_mx()
    raw = message(42_000)  # about 3.3 MB: four chunks of at most 1 MiB
    assert len(raw) > 3 * BDAT_CHUNK
    [out] = await deliver(peer, dns_server, raw)
    assert out.result == "delivered" and out.reply.code == 250, out
    counts = await asyncio.to_thread(session_commands, peer)
    assert counts.get("bdat") == 4 and "data" not in counts, counts
    [got] = await asyncio.to_thread(sink.wait_for, 1, 30)
    assert got.data.endswith(raw.split(b"\r\n\r\n", 1)[1])  # the body, byte for byte
    assert got.rcpt_tos == ["ok@dest.test"]


async def test_bdat_without_pipelining_goes_chunk_by_chunk(dns_server, postfix_mx):
    peer, sink = postfix_mx(smtpd_discard_ehlo_keywords="pipelining")
    raw = message(14_000)  # about 1.1 MB: two chunks
    [out] = await deliver(peer, dns_server, raw)
    assert out.result == "delivered", out
    counts = await asyncio.to_thread(session_commands, peer)
    assert counts.get("bdat") == 2 and "data" not in counts, counts
    [got] = await asyncio.to_thread(sink.wait_for, 1, 30)
    assert got.data.endswith(raw.split(b"\r\n\r\n", 1)[1])


async def test_data_to_a_peer_without_chunking(dns_server, postfix_mx):
    peer, sink = postfix_mx(smtpd_discard_ehlo_keywords="chunking")
    raw = message(10)
    [out] = await deliver(peer, dns_server, raw)
    assert out.result == "delivered", out
    counts = await asyncio.to_thread(session_commands, peer)
    assert counts.get("data") == 1 and "bdat" not in counts, counts
    [got] = await asyncio.to_thread(sink.wait_for, 1, 30)
    assert got.data.endswith(raw.split(b"\r\n\r\n", 1)[1])


async def test_no_body_when_every_recipient_is_refused(dns_server, postfix_mx):
    # Every RCPT refused: the transaction ends there, the message is never sent.
    peer, sink = postfix_mx(smtpd_recipient_restrictions="reject")
    [out] = await deliver(peer, dns_server, message(10))
    assert out.result == "failed" and out.reply.code == 554, out
    counts = await asyncio.to_thread(session_commands, peer)
    assert "bdat" not in counts and "data" not in counts, counts
    assert sink.messages == []


async def test_smtputf8_message_to_postfix_with_bdat(dns_server, postfix_mx):
    """Both extensions at once: a UTF-8 recipient and RFC 6532 headers, in one chunk.
    Postfix relays with SMTPUTF8 only what it received with SMTPUTF8, so the sink seeing
    it shows we declared it."""
    peer, sink = postfix_mx()
    raw = ("From: José <a@src.test>\r\nTo: jörg@dest.test\r\nSubject: ¡hola!\r\n\r\n"
           "Grüße\r\n").encode()
    [out] = await deliver(peer, dns_server, raw, rcpts=("jörg@dest.test",))
    assert out.result == "delivered", out
    counts = await asyncio.to_thread(session_commands, peer)
    assert counts.get("bdat") == 1 and "data" not in counts, counts
    [got] = await asyncio.to_thread(sink.wait_for, 1, 30)
    assert got.smtputf8 and got.rcpt_tos == ["jörg@dest.test"]
    assert got.data.endswith(raw.split(b"\r\n\r\n", 1)[1]) and "¡hola!".encode() in got.data
