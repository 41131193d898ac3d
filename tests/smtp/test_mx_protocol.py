"""MX listener protocol behaviour: extensions, limits, recipients, strict parsing, RBL,
STARTTLS. Real clients (aiosmtplib, smtplib, raw sockets), real DNS and PostgreSQL."""

from __future__ import annotations

import asyncio
import smtplib

import aiosmtplib

from tests.smtp.conftest import codes, make_message, raw_session, smtp_send


def padded(size: int) -> bytes:
    """A message from good.test (SPF pass, aligned) of exactly `size` bytes."""
    base = make_message("alice@good.test", body="")
    filler = size - len(base) - 2
    assert filler > 0
    lines, left = [], filler
    while left > 0:
        n = min(left, 78)
        if left - n in (1,):  # never leave a 1-byte remainder: CRLF needs 2
            n -= 1
        lines.append(b"x" * (n - 2 if left > 78 else n))
        left -= len(lines[-1]) + (2 if left > 78 else 0)
    body = b"\r\n".join(lines)
    raw = base + body + b"\r\n"
    assert len(raw) == size, (len(raw), size)
    return raw


async def test_ehlo_advertises_extensions(mx) -> None:
    client = aiosmtplib.SMTP(hostname=mx.host, port=mx.port, start_tls=False, timeout=10)
    await client.connect()
    await client.ehlo()
    for ext in ("pipelining", "8bitmime", "size", "enhancedstatuscodes"):
        assert client.supports_extension(ext), ext
    assert client.esmtp_extensions["size"] == str(64 * 1024)
    assert not client.supports_extension("starttls")  # no certificate configured
    assert client.supports_extension("smtputf8")
    await client.quit()


async def test_size_limit_exact_accepted_one_more_refused(mx) -> None:
    limit = 64 * 1024
    code, text = await smtp_send(mx, padded(limit), "alice@good.test")
    assert code == 250, text
    code, text = await smtp_send(mx, padded(limit + 1), "alice@good.test")
    assert code == 552 and text.startswith("5.3.4"), (code, text)
    assert await mx.count() == 1


async def test_mail_from_size_over_limit_refused(mx) -> None:
    out = await raw_session(mx, b"EHLO client.test\r\nMAIL FROM:<a@good.test> SIZE=65537\r\n"
                                b"MAIL FROM:<a@good.test> SIZE=65536\r\nQUIT\r\n")
    c = codes(out)[2:]  # after the greeting and EHLO
    assert c[0].startswith("552 5.3.4") and c[1].startswith("250 2.1.0"), c


async def test_recipient_validation(mx) -> None:
    out = await raw_session(mx, b"EHLO client.test\r\nMAIL FROM:<alice@good.test>\r\n"
                                b"RCPT TO:<nobody@ours.test>\r\n"
                                b"RCPT TO:<someone@foreign.test>\r\n"
                                b"RCPT TO:<user@off.test>\r\n"
                                b"RCPT TO:<User+Tag@OURS.test>\r\n"
                                b"RCPT TO:<firstlast@ours.test>\r\n"
                                b"RCPT TO:<first.last@ours.test>\r\n"
                                b"RCPT TO:<anything@other.test>\r\n"
                                b"QUIT\r\n")
    c = codes(out)[2:]  # after the greeting and EHLO
    assert c[1].startswith("550 5.1.1"), c
    assert c[2].startswith("550 5.7.1") and "foreign.test" in c[2], c
    assert c[3].startswith("550 5.7.1"), c  # a disabled routing domain is not ours
    assert c[4].startswith("250 2.1.5"), c  # subaddress falls back to user@
    assert c[5].startswith("550 5.1.1"), c  # "." is literal
    assert c[6].startswith("250 2.1.5"), c
    assert c[7].startswith("250 2.1.5"), c  # other.test: its catch-all
    assert await mx.count() == 0
    statuses = [(e.status, e.details["reason"]) for e in await mx.events()]
    assert ("Rejected", "unknown_recipient") in statuses
    assert ("Rejected", "relay_denied") in statuses


async def test_unknown_and_foreign_recipients_store_nothing(mx) -> None:
    code, text = await smtp_send(mx, make_message("alice@good.test"), "alice@good.test",
                                 rcpts=("nobody@ours.test",))
    assert code == 550 and text.startswith("5.1.1")
    code, text = await smtp_send(mx, make_message("alice@good.test"), "alice@good.test",
                                 rcpts=("x@foreign.test",))
    assert code == 550 and text.startswith("5.7.1") and "Relaying denied" in text
    assert await mx.count() == 0


async def test_idna_domain_accepted_eai_local_part_refused(mx) -> None:
    out = await raw_session(mx, "EHLO client.test\r\nMAIL FROM:<alice@good.test>\r\n"
                                "RCPT TO:<info@piñata.es>\r\n"
                                "RCPT TO:<INFO@xn--piata-pta.es>\r\n"
                                "RCPT TO:<piñata@piñata.es>\r\n"
                                "QUIT\r\n".encode())
    c = codes(out)[2:]  # after the greeting and EHLO
    assert c[1].startswith("250 2.1.5") and c[2].startswith("250 2.1.5"), c
    assert c[3].startswith("553 5.6.7"), c


async def test_strict_command_syntax(mx) -> None:
    out = await raw_session(mx, b"EHLO client.test\r\nNOOP\x00\r\nNOOP\n"
                                b"MAIL FROM:<alice@good.test>\rRSET\r\n"
                                b"MAIL FROM:<alice@good.test> SMTPUTF8=yes\r\n"
                                b"RCPT TO:<user@ours.test>\r\n"
                                b"MAIL FROM:<alice@good.test>\r\nDATA\r\n"
                                + b"X" * 3000 + b"\r\nQUIT\r\n")
    c = codes(out)[2:]  # after the greeting and EHLO
    assert c[0].startswith("500 5.5.2") and "NUL" in c[0], c
    assert c[1].startswith("500 5.5.2") and "bare" in c[1], c
    assert c[2].startswith("500 5.5.2"), c  # bare CR inside the line
    assert c[3].startswith("501 5.5.4"), c  # SMTPUTF8 takes no value
    assert c[4].startswith("503 5.5.1"), c  # RCPT before a successful MAIL
    assert c[5].startswith("250 2.1.0"), c
    assert c[6].startswith("554 5.5.1"), c  # DATA without any recipient
    assert c[7].startswith("500 5.5.2") and "too long" in c[7], c
    assert c[8].startswith("221"), c


async def test_recipients_per_message_limit(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.limits, "recipients_per_message", 2))
    out = await raw_session(world, b"EHLO c.test\r\nMAIL FROM:<alice@good.test>\r\n"
                                   b"RCPT TO:<user@ours.test>\r\nRCPT TO:<user+a@ours.test>\r\n"
                                   b"RCPT TO:<user+b@ours.test>\r\nQUIT\r\n")
    c = codes(out)[2:]  # after the greeting and EHLO
    assert c[1].startswith("250") and c[2].startswith("250"), c
    assert c[3].startswith("452 4.5.3"), c


async def test_too_many_errors_disconnects(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.limits, "errors_before_disconnect", 3))
    out = await raw_session(world, b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\nNOOP\r\n")
    c = codes(out)
    assert [x[:3] for x in c] == ["220", "500", "500", "500", "421"], c
    assert c[-1].startswith("421 4.7.0")


async def test_sessions_per_ip_limit(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.limits, "max_sessions_per_ip", 2))
    conns = [await asyncio.open_connection(world.host, world.port) for _ in range(2)]
    for r, _ in conns:
        assert (await r.readline()).startswith(b"220")
    out = await raw_session(world, b"", wait=2)
    assert out.startswith("421 4.7.0"), out
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.2)
    out = await raw_session(world, b"QUIT\r\n", wait=2)
    assert out.startswith("220"), out


async def test_rbl_listed_refused_naming_zone(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.inbound.rbl, "zones", ["bl.test"]))
    world.dns.add("1.0.0.127.bl.test", "A", "127.0.0.2")
    out = await raw_session(world, b"EHLO c.test\r\nMAIL FROM:<alice@good.test>\r\nQUIT\r\n")
    c = codes(out)[2:]  # after the greeting and EHLO
    assert c[0] == "554 5.7.1 127.0.0.1 found on one or more RBLs (bl.test)", c
    events = await world.events()
    assert events[-1].details["reason"] == "rbl"


async def test_rbl_allowlisted_is_not_checked(make_mx) -> None:
    def tweak(s):
        s.inbound.rbl.zones = ["bl2.test"]
        s.inbound.rbl.allowlist = ["127.0.0.0/8"]
    world = await make_mx(tweak)
    world.dns.add("1.0.0.127.bl2.test", "A", "127.0.0.2")
    out = await raw_session(world, b"EHLO c.test\r\nMAIL FROM:<alice@good.test>\r\nQUIT\r\n")
    assert codes(out)[2].startswith("250 2.1.0"), out
    assert not [q for q in world.dns.queries if "bl2.test" in q[0]]


async def test_rbl_dns_failure_fails_open(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.inbound.rbl, "zones", ["down.test"]))
    world.dns.servfail("1.0.0.127.down.test")
    out = await raw_session(world, b"EHLO c.test\r\nMAIL FROM:<alice@good.test>\r\nQUIT\r\n")
    assert codes(out)[2].startswith("250 2.1.0"), out


async def test_starttls_with_smtplib(make_mx, tls, tmp_path) -> None:
    cert, key = tls.write_server_files(tmp_path, "mx.ours.test", "localhost")

    def tweak(s):
        s.listeners.mx.tls_cert, s.listeners.mx.tls_key = str(cert), str(key)
    world = await make_mx(tweak)
    ctx = tls.client_context()
    ctx.check_hostname = False

    def session() -> tuple:
        with smtplib.SMTP(world.host, world.port, local_hostname="client.test",
                          timeout=10) as s:
            s.ehlo()
            assert s.has_extn("starttls")
            s.starttls(context=ctx)
            s.ehlo()
            assert not s.has_extn("starttls")
            assert s.has_extn("pipelining") and s.has_extn("size")
            version = s.sock.version()
            refused = None
            try:
                s.sendmail("alice@good.test", ["nobody@ours.test"], b"x")
            except smtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients["nobody@ours.test"]
            s.sendmail("alice@good.test", ["user@ours.test"], make_message("alice@good.test"))
            return version, refused

    version, refused = await asyncio.to_thread(session)
    assert version in ("TLSv1.2", "TLSv1.3")
    assert refused[0] == 550 and refused[1].startswith(b"5.1.1")
    [msg] = await world.messages()
    assert msg.tls["version"] == version and msg.tls["cipher"]
    assert b"with ESMTPS" in msg.raw.split(b"\r\n\r\n")[0]


async def test_starttls_discards_pipelined_plaintext(make_mx, tls, tmp_path) -> None:
    cert, key = tls.write_server_files(tmp_path, "mx.ours.test")

    def tweak(s):
        s.listeners.mx.tls_cert, s.listeners.mx.tls_key = str(cert), str(key)
    world = await make_mx(tweak)
    ctx = tls.client_context()
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection(world.host, world.port)
    await reader.readline()
    writer.write(b"EHLO c.test\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    # CVE-2021-38371 style: a command injected in the clear after STARTTLS.
    writer.write(b"STARTTLS\r\nNOOP injected\r\n")
    assert (await reader.readline()).startswith(b"220 2.0.0")
    await writer.start_tls(ctx)
    writer.write(b"NOOP\r\n")
    first = await asyncio.wait_for(reader.readline(), 5)
    assert first.startswith(b"250 2.0.0"), first
    writer.write(b"MAIL FROM:<alice@good.test>\r\n")
    assert (await reader.readline()).startswith(b"503 5.5.1")  # EHLO again after TLS
    writer.close()


async def test_graceful_stop_says_421_to_idle_sessions(make_mx) -> None:
    world = await make_mx()
    reader, writer = await asyncio.open_connection(world.host, world.port)
    await reader.readline()
    await world.server.stop()
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"421 4.3.2"), line
    writer.close()


async def test_command_timeout_says_421(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.limits, "command_timeout", 0.5))
    out = await raw_session(world, b"EHLO c.test\r\n", wait=3)
    assert codes(out)[-1].startswith("421 4.4.2"), out


async def test_failed_commit_is_451_and_never_250(mx) -> None:
    from sqlalchemy import text

    async with mx.db.session() as s:  # a real failure: the table is not there
        await s.execute(text("ALTER TABLE messages RENAME TO messages_away"))
    try:
        code, reply = await smtp_send(mx, make_message("alice@good.test"), "alice@good.test")
    finally:
        async with mx.db.session() as s:
            await s.execute(text("ALTER TABLE messages_away RENAME TO messages"))
    assert code == 451 and reply.startswith("4.3.0"), (code, reply)
    assert await mx.count() == 0
