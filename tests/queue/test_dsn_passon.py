"""Passing a DSN request on (RFC 3461 §5.2.1): our SMTP client sends RET/ENVID at MAIL
and NOTIFY/ORCPT at RCPT to a next hop that offers DSN, and nothing of it to one that
does not. The peer that checks it is Postfix from Debian (it offers DSN, understands
the parameters and passes them on to its own next hop, a recording sink)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from mta.dnscache import DnsResolver
from mta.queue.dsnparams import Dsn, RcptDsn
from mta.queue.remote import RemoteDelivery, SmartHost
from tests.harness.postfix import PostfixPeer, postfix_available

MSG = b"From: a@src.test\r\nTo: dest@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"
REQUEST = Dsn("HDRS", "batch 7+", {
    "dest@dest.test": RcptDsn("SUCCESS,FAILURE", "rfc822;alias+x@ours.test")})


def engine(dns_server, **kw) -> RemoteDelivery:
    return RemoteDelivery(DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0),
                          "mta.src.test", connect_timeout=3.0, command_timeout=10.0,
                          data_timeout=10.0, **kw)


@pytest.mark.parametrize("offers_dsn", [True, False])
async def test_request_passed_only_to_a_next_hop_offering_dsn(dns_server, make_sink,
                                                              offers_dsn):
    sink = make_sink("127.0.0.2")
    sink.dsn = offers_dsn
    dns_server.add_zone("dest.test. 300 IN MX 10 mx.dest.test.\n"
                        "mx.dest.test. 300 IN A 127.0.0.2")
    [out] = await engine(dns_server, port=sink.port).deliver(
        "dest.test", "a@src.test", ["dest@dest.test"], MSG, dsn=REQUEST)
    assert out.result == "delivered" and out.dsn_passed is offers_dsn
    [got] = sink.wait_for(1)
    if offers_dsn:
        assert got.mail_command.endswith(" RET=HDRS ENVID=batch+207+2B"), got.mail_command
        assert got.rcpt_commands == [
            "TO:<dest@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alias+2Bx@ours.test"]
    else:
        assert "RET=" not in got.mail_command and "ENVID=" not in got.mail_command
        assert got.rcpt_commands == ["TO:<dest@dest.test>"]


@pytest.mark.skipif(not postfix_available(), reason="postfix not installed")
async def test_postfix_understands_our_request_and_passes_it_on(dns_server, make_sink):
    sink = make_sink("127.0.0.2")
    sink.dsn = True
    # Not under pytest's tmp_path: Postfix's daemons run as the postfix user.
    directory = Path(tempfile.mkdtemp(prefix="mta-test-postfix-"))
    directory.chmod(0o755)
    peer = PostfixPeer(directory, (sink.address, sink.port)).start()
    try:
        relay = SmartHost("127.0.0.1", peer.port, tls="none")
        [out] = await engine(dns_server, smart_host=relay).deliver(
            "dest.test", "a@src.test", ["dest@dest.test"], MSG, dsn=REQUEST)
        assert out.result == "delivered" and out.dsn_passed, out
        [got] = await asyncio.to_thread(sink.wait_for, 1, 30.0)
        # What Postfix relays is what it read from us: our parameters, re-encoded by it.
        assert set(got.mail_command.split()[1:]) >= {"RET=HDRS", "ENVID=batch+207+2B"}, \
            got.mail_command
        [rcpt] = got.rcpt_commands
        assert set(rcpt.split()[1:]) >= {"NOTIFY=SUCCESS,FAILURE",
                                         "ORCPT=rfc822;alias+2Bx@ours.test"}, rcpt
        await asyncio.to_thread(peer.wait_log, "status=sent")
    finally:
        peer.stop()
        shutil.rmtree(directory, ignore_errors=True)
