"""What a forwarding node passes on, and what it says when the next hop refuses
(issue 13): nothing hostile reaches the sink, refusals are ours with the next hop's
reply quoted safely, and SRS bounces keep the original local part byte for byte."""

from __future__ import annotations

from tests.routing.world import start_node, world_fixture  # noqa: F401 - the `world` fixture
from tests.smtp.conftest import codes, dkim_sign, make_message, raw_session, smtp_send


def signed(w, body: str = "Hello there.\r\n", sender: str = "alice@sender.test") -> bytes:
    return dkim_sign(make_message(sender, body=body), "sender.test", "sel", w.sender_key)


async def send_raw_data(node, data: bytes) -> list[str]:
    """DATA with `data` sent byte for byte (dot-stuffing is the caller's)."""
    out = await raw_session(node, b"EHLO client.test\r\nMAIL FROM:<alice@sender.test>\r\n"
                                  b"RCPT TO:<user@ours.test>\r\nDATA\r\n" + data
                            + b".\r\nQUIT\r\n")
    return codes(out)[2:]


async def test_nul_end_of_data_lookalike_never_reaches_the_next_hop(world):
    w = world
    second = (b"MAIL FROM:<admin@sender.test>\r\nRCPT TO:<dest@inbox.test>\r\nDATA\r\n"
              b"From: admin@sender.test\r\n\r\nsmuggled\r\n")
    data = signed(w, body="first\r\n\x00.\r\n" + second.decode())
    c = await send_raw_data(w.a, data)
    assert c[3].startswith("550 5.6.0") and "NUL" in c[3], c
    assert w.inbox.messages == []


async def test_nul_is_removed_before_forwarding_in_normalize_mode(world):
    w = world
    node = await start_node(w, "c", "mx.ours.test", "fwda.test", "127.0.0.1", 0,
                            tweak=lambda s: setattr(s.inbound, "bare_line_endings",
                                                    "normalize"))
    # Signed after the NUL is gone would be the sender's job; here the body hash breaks,
    # which does not matter: SPF passes.
    raw = make_message("alice@sender.test", body="first\r\n\x00.\r\nstill first\r\n")
    code, text = await smtp_send(node, raw, "alice@sender.test")
    assert code == 250, text
    [got] = w.inbox.wait_for(1)
    assert b"\x00" not in got.data
    assert b"first\r\n.\r\nstill first\r\n" in got.data.replace(b"\r\n..", b"\r\n.")


async def test_long_line_is_never_forwarded(world):
    w = world
    c = await send_raw_data(w.a, signed(w, body="z" * 1200 + "\r\n"))
    assert c[3].startswith("550 5.6.0") and "998" in c[3], c
    assert w.inbox.messages == []


async def test_next_hop_refusal_is_ours_with_the_remote_reply_quoted(world):
    w = world
    long_text = "mailbox gone " + "x" * 600
    w.inbox.rcpt_replies["dest@inbox.test"] = (
        f"550-5.1.1 <dest@inbox.test>: first line\r\n550 5.1.1 {long_text}")
    c = await send_raw_data(w.a, signed(w))
    reply = c[3]
    assert reply.startswith("550 5.1.1 The forwarding destination refused the message; "
                            'its server said: "550 5.1.1 <dest@inbox.test>: first line'), c
    assert reply.endswith('..."') and len(reply) < 300, reply
    assert w.inbox.messages == []


async def test_next_hop_refusal_without_enhanced_code_gets_the_right_one(world):
    w = world
    w.inbox.rcpt_replies["dest@inbox.test"] = "553 no such mailbox here"
    code, text = await smtp_send(w.a, signed(w), "alice@sender.test")
    assert code == 553, text
    assert text.startswith("5.1.3 The forwarding destination refused"), text
    assert text.endswith('said: "553 no such mailbox here"'), text


async def test_srs_bounce_keeps_the_local_part_byte_for_byte(world):
    w = world
    sender = "carol.Jones@sender.test"
    code, _ = await smtp_send(w.a, signed(w, sender=sender), sender)
    assert code == 250
    srs_address = w.inbox.wait_for(1)[0].mail_from
    assert "carol.Jones" in srs_address
    bounce = (b"From: MAILER-DAEMON@client.test\r\nTo: " + srs_address.encode()
              + b"\r\nSubject: Undelivered\r\n\r\nbounced\r\n")
    code, text = await smtp_send(w.a, bounce, "", rcpts=(srs_address,))
    assert code == 250, text
    got = w.sender_mx.wait_for(1)[0]
    assert got.rcpt_tos == ["carol.Jones@sender.test"]
