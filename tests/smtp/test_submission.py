"""SMTP submission (465 implicit TLS, 587 STARTTLS): the reference's transcript and
every documented reply, with the clients users have (smtplib.SMTP_SSL, Debian's curl,
raw TLS sockets). Real PostgreSQL, the loopback DNS server (DKIM keys and recipient MX),
a real SMTP sink as the recipient's server, trustme certificates.

World: account "acme" with zone sender.test, sender.test onboarded for sending (its
records published), rcpt.test's MX is a sink on 127.0.0.2; `token` may send, `reader`
only read analytics. An account "other" owns other.test, onboarded too.
"""

from __future__ import annotations

import asyncio
import base64
import email
import re
import shutil
import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import dkim
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from mta.config import ConfigError, Nameserver, Settings
from mta.dnscache import DnsResolver
from mta.node import NodeContext, build_services
from mta.queue.remote import RemoteDelivery
from mta.sending.domains import domain_records, onboard_sending_domain
from mta.sending.service import SendingService
from mta.smtp.submission import SubmissionServer
from mta.store.models import Account, Message, Zone
from mta.tokens import create_token, revoke_token
from tests.harness.smtp_sink import _free_port
from tests.signing.test_dkim_sign import dns_txt_func

SENDER = "welcome@sender.test"
RCPT = "recipient@rcpt.test"
MIB5 = 5 * 1024 * 1024
# The message of the reference's curl quick start, as its heredoc writes it (LF ends).
MAIL_TXT = (f"From: {SENDER}\nTo: {RCPT}\nSubject: Welcome to our service!\n\n"
            "Thanks for signing up.\n")


@dataclass
class Sub:
    server: SubmissionServer
    settings: Settings
    token: str
    reader: str
    account: str
    sink: object
    dns: object
    db: object
    ca_file: Path
    client_ctx: ssl.SSLContext

    @property
    def port(self) -> int:
        return self.server.port

    async def messages(self) -> list[Message]:
        async with self.db.session() as s:
            return list((await s.execute(select(Message))).scalars().all())


def make_settings(tmp_path: Path, tls, dns) -> Settings:
    s = Settings()
    s.node.hostname = "smtp.sender.test"
    s.secret_key = "test-secret-key"
    s.dns.nameservers = [Nameserver(**dns.nameserver)]
    cert, key = tls.write_server_files(tmp_path, "localhost", "127.0.0.1")
    for name in ("submission", "submission_starttls"):
        lst = getattr(s.listeners, name)
        lst.address, lst.port, lst.tls_cert, lst.tls_key = "127.0.0.1", 0, str(cert), str(key)
    s.listeners.submission.enabled = True
    return s


async def add_account(db, name: str, zone: str) -> str:
    async with db.session() as s:
        acct = Account(name=name)
        s.add(acct)
        await s.flush()
        s.add(Zone(account_id=acct.id, name=zone))
        return acct.id


@pytest.fixture
async def world(db, dns_server, make_sink, tls, tmp_path):
    settings = make_settings(tmp_path, tls, dns_server)
    account = await add_account(db, "acme", "sender.test")
    await add_account(db, "other", "other.test")
    async with db.session() as s:
        await onboard_sending_domain(s, settings, "sender.test")
        await onboard_sending_domain(s, settings, "other.test")
        _, records = await domain_records(s, settings, "sender.test")
        _, token = await create_token(s, account, "smtp", ["email_sending:send"])
        _, reader = await create_token(s, account, "ro", ["analytics:read"])
    for r in records:
        if r["type"] == "TXT":
            dns_server.add_txt(r["name"], r["content"])
    port = _free_port("127.0.0.2")
    dns_server.add_zone("""
        rcpt.test.     300 IN MX 10 mx.rcpt.test.
        mx.rcpt.test.  300 IN A 127.0.0.2
    """)
    sink = make_sink("127.0.0.2", port=port)
    resolver = DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)
    ctx = NodeContext(settings=settings, db=db, resolver=resolver, node_id="node-s")
    transport = RemoteDelivery(resolver, "smtp.sender.test", port=port, connect_timeout=3,
                               command_timeout=5, data_timeout=5)
    sending = SendingService(ctx, transport=transport, sync_timeout=5.0)
    servers: list[SubmissionServer] = []
    ca_file = tls.write_ca_file(tmp_path / "ca.pem")

    async def start(listener: str = "submission", **kw) -> Sub:
        server = SubmissionServer(ctx, listener, sending=sending, shutdown_grace=2, **kw)
        await server.start()
        servers.append(server)
        return Sub(server, settings, token, reader, account, sink, dns_server, db, ca_file,
                   tls.client_context())

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def sub(world) -> Sub:
    return await world()


def plain(token: str, user: str = "api_token") -> str:
    return base64.b64encode(f"\0{user}\0{token}".encode()).decode()


async def dialogue(sub: Sub, lines: list[bytes | str], *, tls: bool = True,
                   wait: float = 5.0) -> list[str]:
    """Talk to the server one command at a time (as openssl s_client -crlf does);
    returns the final line of each reply, the greeting first."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", sub.port, ssl=sub.client_ctx if tls else None,
        server_hostname="localhost" if tls else None)
    out = [await read_reply(reader, wait)]
    try:
        for line in lines:
            writer.write(line if isinstance(line, bytes) else f"{line}\r\n".encode())
            await writer.drain()
            if line == "DATA_BODY":
                continue
            out.append(await read_reply(reader, wait))
    finally:
        writer.close()
    return out


async def read_reply(reader: asyncio.StreamReader, wait: float) -> str:
    while True:
        line = (await asyncio.wait_for(reader.readline(), wait)).decode().rstrip("\r\n")
        if not line:
            return "<closed>"
        if line[3:4] != "-":
            return line


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the reference's transcript -------------------------------------------------------------


async def test_reference_transcript_over_implicit_tls(sub: Sub) -> None:
    body = (f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: Welcome\r\n\r\n"
            "Thanks for signing up.\r\n.\r\n")
    got = await dialogue(sub, ["EHLO client.example.com", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>", "DATA",
                               body.encode(), "QUIT"])
    assert got[0].startswith("220 smtp.sender.test")
    assert got[2] == "235 2.7.0 Authentication successful"
    assert got[3] == "250 2.1.0 Ok" and got[4] == "250 2.1.5 Ok"
    assert got[5] == "354 Start mail input; end with <CR><LF>.<CR><LF>"
    assert got[6].startswith("250 2.0.0 Ok <") and got[6].endswith("@sender.test>"), got
    assert got[7].startswith("221 ")
    message_id = got[6].split(" ", 3)[3]
    [received] = await asyncio.to_thread(sub.sink.wait_for, 1)
    msg = email.message_from_bytes(received.data, policy=policy.default)
    assert msg["Message-ID"] == message_id and received.rcpt_tos == [RCPT]
    [row] = await sub.messages()
    assert row.source == "submission" and row.message_id_header == message_id


async def test_ehlo_lists_the_reference_extensions(sub: Sub) -> None:
    def run() -> dict:
        with smtplib.SMTP_SSL("127.0.0.1", sub.port, context=sub.client_ctx,
                              timeout=10) as s:
            s.ehlo("client.example.com")
            return dict(s.esmtp_features)

    features = await asyncio.to_thread(run)
    assert features["auth"].split() == ["PLAIN", "LOGIN"]
    assert features["size"] == str(MIB5)
    assert {"8bitmime", "enhancedstatuscodes"} <= set(features)
    assert "starttls" not in features  # TLS from connect


async def test_smtplib_smtp_ssl_sends_and_250_carries_message_id(sub: Sub) -> None:
    msg = email.message.EmailMessage()
    msg["From"] = f"Acme <{SENDER}>"
    msg["To"] = RCPT
    msg["Subject"] = "Welcome to Acme"
    msg.set_content("Thanks for signing up.")
    msg.add_alternative("<h1>Welcome to Acme</h1><p>Thanks for signing up.</p>",
                        subtype="html")

    def run() -> tuple[int, bytes, str]:
        with smtplib.SMTP_SSL("127.0.0.1", sub.port, context=sub.client_ctx,
                              timeout=20) as s:
            s.login("api_token", sub.token)
            s.mail(SENDER)
            s.rcpt(RCPT)
            code, text = s.data(msg.as_bytes(policy=policy.SMTP))
            return code, text, s.sock.version()

    code, text, version = await asyncio.to_thread(run)
    assert code == 250 and text.startswith(b"2.0.0 Ok <"), text
    assert version in ("TLSv1.2", "TLSv1.3")
    message_id = text.decode().split(" ", 2)[2]
    [received] = await asyncio.to_thread(sub.sink.wait_for, 1)
    got = email.message_from_bytes(received.data, policy=policy.default)
    assert got["Message-ID"] == message_id
    assert got.get_content_type() == "multipart/alternative"
    # Signed with the sending domain's key, as published in the test DNS.
    assert dkim.verify(received.data, dnsfunc=dns_txt_func(sub.dns))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_smtps_quickstart(sub: Sub, tmp_path: Path) -> None:
    mail = tmp_path / "mail.txt"
    mail.write_text(MAIL_TXT)
    proc = await asyncio.create_subprocess_exec(
        "curl", "-v", "--no-progress-meter", "--ssl-reqd", "--url", f"smtps://127.0.0.1:{sub.port}",
        "--cacert", str(sub.ca_file), "--user", f"api_token:{sub.token}",
        "--mail-from", SENDER, "--mail-rcpt", RCPT, "--upload-file", str(mail),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    log = err.decode("utf-8", "replace")
    assert proc.returncode == 0, log
    # curl's progress output can share a line with the reply: search, not startswith.
    final = re.findall(r"< 250 2\.0\.0 Ok (<[^>\s]+>)", log)
    assert len(final) == 1, log
    message_id = final[0]
    [received] = await asyncio.to_thread(sub.sink.wait_for, 1)
    got = email.message_from_bytes(received.data, policy=policy.default)
    assert got["Message-ID"] == message_id
    assert got["Subject"] == "Welcome to our service!"
    assert b"\r\nThanks for signing up.\r\n" in received.data  # LF ends made CRLF


# --- AUTH --------------------------------------------------------------------------------


async def test_auth_login_and_plain_with_challenge(sub: Sub) -> None:
    user = base64.b64encode(b"api_token").decode()
    pw = base64.b64encode(sub.token.encode()).decode()
    got = await dialogue(sub, ["EHLO c.test", "AUTH LOGIN", user, pw])
    assert got[2] == "334 VXNlcm5hbWU6" and got[3] == "334 UGFzc3dvcmQ6"
    assert got[4] == "235 2.7.0 Authentication successful"
    got = await dialogue(sub, ["EHLO c.test", f"AUTH LOGIN {user}", pw])
    assert got[2:] == ["334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"]
    got = await dialogue(sub, ["EHLO c.test", "AUTH PLAIN", plain(sub.token),
                               "AUTH PLAIN x"])
    assert got[2] == "334 " and got[3].startswith("235 2.7.0"), got
    assert got[4].startswith("503 5.5.1")  # already authenticated

    def smtplib_login() -> tuple[int, bytes]:
        with smtplib.SMTP_SSL("127.0.0.1", sub.port, context=sub.client_ctx,
                              timeout=10) as s:
            s.ehlo()
            s.user, s.password = "api_token", sub.token  # what login() sets
            return s.auth("LOGIN", s.auth_login, initial_response_ok=False)

    assert (await asyncio.to_thread(smtplib_login))[0] == 235


async def test_auth_exchange_errors(sub: Sub) -> None:
    got = await dialogue(sub, ["EHLO c.test", "AUTH CRAM-MD5", "AUTH PLAIN", "*",
                               "AUTH PLAIN not-base64!", "AUTH LOGIN", "*"])
    assert got[2].startswith("504 5.5.4")
    assert got[3] == "334 " and got[4].startswith("501 5.0.0")  # cancelled
    assert got[5].startswith("501 5.5.2")
    assert got[6] == "334 VXNlcm5hbWU6" and got[7].startswith("501 5.0.0")


async def test_530_before_auth(sub: Sub) -> None:
    before = metric("mta_submission_rejections_total", reason="auth_required")
    got = await dialogue(sub, ["EHLO c.test", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>",
                               "DATA", "NOOP"])
    assert all(line.startswith("530 5.7.0") for line in got[2:5]), got
    assert got[5].startswith("250")
    assert metric("mta_submission_rejections_total", reason="auth_required") == before + 3
    assert await sub.messages() == []


async def test_535_for_every_bad_credential(sub: Sub) -> None:
    async with sub.db.session() as s:
        row, revoked = await create_token(s, sub.account, "old", ["email_sending:send"])
        await revoke_token(s, row.id, datetime.now(UTC))
    bad = [plain(sub.token, user="someone"),           # username is not api_token
           plain("mta_" + "A" * 43),                   # well formed, unknown
           plain("not-a-token"),                       # not one of our tokens
           plain(revoked),                             # revoked
           plain(sub.reader)]                          # lacks email_sending:send
    before = metric("mta_submission_auth_total", mechanism="plain", result="failed")
    got = await dialogue(sub, ["EHLO c.test", *[f"AUTH PLAIN {b}" for b in bad],
                               f"MAIL FROM:<{SENDER}>"])
    for line in got[2:7]:
        assert line == "535 5.7.8 Authentication failed", got
    assert got[7].startswith("530 5.7.0")
    assert metric("mta_submission_auth_total", mechanism="plain",
                  result="failed") == before + 5

    def smtplib_login() -> int:
        with smtplib.SMTP_SSL("127.0.0.1", sub.port, context=sub.client_ctx,
                              timeout=10) as s:
            try:
                s.login("api_token", "mta_" + "B" * 43)
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code
            return 0

    assert await asyncio.to_thread(smtplib_login) == 535


# --- MAIL / RCPT / DATA refusals ---------------------------------------------------------


async def test_550_sender_domain_not_onboarded(sub: Sub) -> None:
    header_mismatch = (f"From: someone@other.test\r\nTo: {RCPT}\r\nSubject: x\r\n\r\n"
                       "hi\r\n.\r\n")
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               "MAIL FROM:<a@nowhere.test>",
                               "MAIL FROM:<a@other.test>",  # another account's domain
                               f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>", "DATA",
                               header_mismatch.encode()])
    assert got[3].startswith("550 5.7.1 Sender denied") and "nowhere.test" in got[3], got
    assert got[4].startswith("550 5.7.1"), got
    assert got[5] == "250 2.1.0 Ok"
    # The From: field's domain is checked too, by the sending pipeline.
    assert got[8].startswith("550 5.7.1") and "other.test" in got[8], got
    assert await sub.messages() == []


async def test_452_on_the_51st_recipient_of_a_session(sub: Sub) -> None:
    rcpts = [f"RCPT TO:<user{i}@rcpt.test>" for i in range(51)]
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}>", *rcpts, "RSET",
                               f"MAIL FROM:<{SENDER}>", "RCPT TO:<late@rcpt.test>"])
    assert all(line == "250 2.1.5 Ok" for line in got[4:54]), got
    assert got[54].startswith("452 4.5.3"), got[54]
    assert got[57].startswith("452 4.5.3"), got  # per session, not per transaction


async def test_552_size_at_mail_and_after_data(sub: Sub) -> None:
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}> SIZE={MIB5 + 1}",
                               f"MAIL FROM:<{SENDER}> SIZE={MIB5}"])
    assert got[3].startswith("552 5.3.4"), got
    assert got[4] == "250 2.1.0 Ok"
    head = f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: big\r\n\r\n".encode()
    line = b"x" * 998 + b"\r\n"
    body = head + line * (MIB5 // len(line) + 1) + b".\r\n"
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>", "DATA", body,
                               "NOOP"], wait=30)
    assert got[6].startswith("552 5.3.4"), got
    assert got[7].startswith("250")  # the session goes on
    assert await sub.messages() == []


async def test_header_allowlist_applies_to_submitted_mime(sub: Sub) -> None:
    body = (f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: x\r\nFeedback-ID: a:b:c\r\n\r\n"
            "hi\r\n.\r\n")
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RCPT}>", "DATA",
                               body.encode()])
    assert got[6].startswith("554 5.7.1"), got  # E_HEADER_NOT_ALLOWED (mta/errors.py)
    assert await sub.messages() == []


# --- timeouts ----------------------------------------------------------------------------


async def test_auth_timeout(world) -> None:
    sub = await world(auth_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", sub.port,
                                                   ssl=sub.client_ctx,
                                                   server_hostname="localhost")
    assert (await read_reply(reader, 5)).startswith("220")
    writer.write(b"EHLO c.test\r\n")
    assert (await read_reply(reader, 5)).startswith("250 ")
    started = asyncio.get_running_loop().time()
    assert (await read_reply(reader, 5)).startswith("421 4.4.2")
    assert 0.8 < asyncio.get_running_loop().time() - started < 3
    assert await read_reply(reader, 5) == "<closed>"
    writer.close()


async def test_auth_timeout_inside_the_exchange(world) -> None:
    sub = await world(auth_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", sub.port,
                                                   ssl=sub.client_ctx,
                                                   server_hostname="localhost")
    await read_reply(reader, 5)
    writer.write(b"EHLO c.test\r\nAUTH LOGIN\r\n")
    await read_reply(reader, 5)
    assert await read_reply(reader, 5) == "334 VXNlcm5hbWU6"
    assert (await read_reply(reader, 5)).startswith("421 4.4.2")
    writer.close()


async def test_data_timeout_after_auth_stores_nothing(world) -> None:
    sub = await world(auth_timeout=1.0, data_timeout=1.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", sub.port,
                                                   ssl=sub.client_ctx,
                                                   server_hostname="localhost")
    await read_reply(reader, 5)
    for cmd, want in ((b"EHLO c.test", "250 "), (f"AUTH PLAIN {plain(sub.token)}".encode(),
                                                  "235"),
                      (f"MAIL FROM:<{SENDER}>".encode(), "250"),
                      (f"RCPT TO:<{RCPT}>".encode(), "250"), (b"DATA", "354")):
        writer.write(cmd + b"\r\n")
        assert (await read_reply(reader, 5)).startswith(want)
        if want != "250 ":
            await asyncio.sleep(1.2)  # past the AUTH timeout: after AUTH it no longer applies
    writer.write(f"From: {SENDER}\r\nSubject: slow\r\n\r\npart".encode())
    assert (await read_reply(reader, 5)).startswith("421 4.4.2")
    writer.close()
    assert await sub.messages() == []


# --- 587 with STARTTLS -------------------------------------------------------------------


async def test_587_requires_starttls_before_auth(world) -> None:
    sub = await world("submission_starttls")
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}",
                               f"MAIL FROM:<{SENDER}>"], tls=False)
    assert got[2].startswith("530 5.7.0") and "STARTTLS" in got[2], got
    assert got[3].startswith("530 5.7.0"), got

    def run() -> tuple[dict, dict, int, bytes]:
        with smtplib.SMTP("127.0.0.1", sub.port, timeout=20) as s:
            s.ehlo("c.test")
            clear = dict(s.esmtp_features)
            s.starttls(context=sub.client_ctx)
            s.ehlo("c.test")
            secure = dict(s.esmtp_features)
            s.login("api_token", sub.token)
            s.mail(SENDER)
            s.rcpt(RCPT)
            code, text = s.data(MAIL_TXT.replace("\n", "\r\n").encode())
            return clear, secure, code, text

    clear, secure, code, text = await asyncio.to_thread(run)
    assert "starttls" in clear and "auth" not in clear
    assert "starttls" not in secure and secure["auth"].split() == ["PLAIN", "LOGIN"]
    assert code == 250 and text.startswith(b"2.0.0 Ok <")
    [received] = await asyncio.to_thread(sub.sink.wait_for, 1)
    assert email.message_from_bytes(received.data)["Message-ID"] == text.decode().split()[2]


# --- configuration -----------------------------------------------------------------------


async def test_refuses_to_start_without_a_certificate(db, dns_server, tls, tmp_path) -> None:
    settings = make_settings(tmp_path, tls, dns_server)
    settings.listeners.submission.tls_cert = settings.listeners.submission.tls_key = None
    ctx = NodeContext(settings=settings, db=db,
                      resolver=DnsResolver([dns_server.nameserver]), node_id="n")
    with pytest.raises(ConfigError) as e:
        build_services(ctx)
    assert "listeners.submission" in str(e.value) and "tls_cert" in str(e.value)
    settings.listeners.submission.tls_cert = str(tmp_path / "missing.pem")
    settings.listeners.submission.tls_key = str(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="listeners.submission.tls_cert"):
        SubmissionServer(ctx)


async def test_node_builds_both_listeners_with_tls_1_2_minimum(db, dns_server, tls,
                                                              tmp_path) -> None:
    settings = make_settings(tmp_path, tls, dns_server)
    settings.listeners.submission_starttls.enabled = True
    ctx = NodeContext(settings=settings, db=db,
                      resolver=DnsResolver([dns_server.nameserver]), node_id="n")
    subs = [s for s in build_services(ctx) if isinstance(s, SubmissionServer)]
    assert [s.name for s in subs] == ["submission", "submission_starttls"]
    assert subs[0].sending is subs[1].sending  # one pipeline for both doors
    assert all(s.tls_context.minimum_version == ssl.TLSVersion.TLSv1_2 for s in subs)


async def test_mta_serve_runs_submission(make_node, db, db_url, dns_server, make_sink, tls,
                                         tmp_path) -> None:
    """`mta serve` as an operator runs it: the listener from the config, the node's
    sending pipeline and delivery workers behind it."""
    settings = make_settings(tmp_path, tls, dns_server)
    account = await add_account(db, "acme", "sender.test")
    async with db.session() as s:
        await onboard_sending_domain(s, settings, "sender.test")
        _, token = await create_token(s, account, "smtp", ["email_sending:send"])
    port = _free_port("127.0.0.2")
    dns_server.add_zone("""
        rcpt.test.     300 IN MX 10 mx.rcpt.test.
        mx.rcpt.test.  300 IN A 127.0.0.2
    """)
    sink = make_sink("127.0.0.2", port=port)
    lst = settings.listeners.submission
    node = make_node({"database": {"url": db_url}, "secret_key": settings.secret_key,
                      "delivery": {"port": port},
                      "listeners": {"submission": {"enabled": True, "tls_cert": lst.tls_cert,
                                                   "tls_key": lst.tls_key}}})

    def run() -> tuple[int, bytes]:
        with smtplib.SMTP_SSL("127.0.0.1", node.port("submission"),
                              context=tls.client_context(), timeout=20) as s:
            s.login("api_token", token)
            s.mail(SENDER)
            s.rcpt(RCPT)
            return s.data(MAIL_TXT.replace("\n", "\r\n").encode())

    code, text = await asyncio.to_thread(run)
    assert code == 250 and text.startswith(b"2.0.0 Ok <"), text
    [received] = await asyncio.to_thread(sink.wait_for, 1, 20)
    assert email.message_from_bytes(received.data)["Message-ID"] == text.decode().split()[2]
    assert node.stop() == 0  # graceful stop with the submission listener running


# --- AUTH throttling (issue 13) ---------------------------------------------------------------


async def test_auth_throttled_per_client_address_even_for_the_right_token(world) -> None:
    first = await world()
    first.settings.limits.auth_failures_per_ip = 3
    sub = await world()  # a listener built with the lower limit
    wrong = plain("mta_" + "C" * 43)
    before = metric("mta_submission_auth_throttled_total", scope="ip")
    got = await dialogue(sub, ["EHLO c.test", *[f"AUTH PLAIN {wrong}"] * 3,
                               f"AUTH PLAIN {plain(sub.token)}",
                               f"AUTH PLAIN {plain('mta_' + 'D' * 43, user='nobody')}"])
    assert got[2:5] == ["535 5.7.8 Authentication failed"] * 3, got
    # The right token and an unknown user get the same refusal: no oracle.
    assert got[5] == got[6] == "454 4.7.0 Too many failed authentication attempts, " \
        "try again later", got
    assert metric("mta_submission_auth_throttled_total", scope="ip") == before + 2
    # A new session from the same address is throttled too.
    got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {plain(sub.token)}"])
    assert got[2].startswith("454 4.7.0"), got


async def test_auth_throttled_per_user_name_by_a_delay_alike_for_unknown_names(world) -> None:
    first = await world()
    limits = first.settings.limits
    limits.auth_failures_per_ip, limits.auth_failures_per_user = 0, 2
    limits.auth_failure_delay = 0.6
    sub = await world()
    wrong = "mta_" + "E" * 43
    before = metric("mta_submission_auth_throttled_total", scope="user")

    async def timed(auth: str) -> tuple[str, float]:
        started = time.monotonic()
        got = await dialogue(sub, ["EHLO c.test", f"AUTH PLAIN {auth}"])
        return got[2], time.monotonic() - started

    for user in ("api_token", "nobody"):
        for _ in range(2):
            reply, took = await timed(plain(wrong, user=user))
            assert reply.startswith("535 5.7.8") and took < 0.6, (reply, took)
    reply, took = await timed(plain(sub.token))  # the right one still gets in, slowed
    assert reply.startswith("235"), reply
    assert took >= 0.6
    reply, took_unknown = await timed(plain(wrong, user="nobody"))
    assert reply.startswith("535 5.7.8") and took_unknown >= 0.6
    assert metric("mta_submission_auth_throttled_total", scope="user") == before + 2
