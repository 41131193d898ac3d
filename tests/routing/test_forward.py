"""The forwarded copy: DMARC-safe From rewrite (end to end, checked by an independent
DMARC verifier at the destination), loop limits, and the pure helpers."""

from __future__ import annotations

import authheaders
import dkim
import pytest

from mta.checks.dmarc import DmarcResult
from mta.checks.results import AuthResults
from mta.routing.forward import dmarc_rewrite_needed, loop_problem, rewrite_from
from tests.routing.world import (
    body,
    header,
    verify_all_dkim,
    world_fixture,  # noqa: F401 - the `world` fixture
)
from tests.smtp.conftest import dkim_sign, make_message, smtp_send


def dmarc_at_destination(data: bytes, txt) -> str:
    """What an independent receiver (authheaders: dkimpy + its own DMARC code) says.
    (authheaders 0.16 reads the From domain with [a-z0-9.]+, so a hyphenated domain
    such as fwd-a.test becomes "fwd": the world's forwarding domains have no hyphen.)"""
    def dnsfunc(name, timeout=5):
        answer = txt(name, timeout)
        qname = name.decode() if isinstance(name, bytes) else name
        # authheaders' DMARC lookup wants text where dkimpy wants bytes.
        return answer.decode() if answer is not None and qname.startswith("_dmarc.") \
            else answer

    return authheaders.authenticate_message(data, "inbox.test", spf=False, dkim=True,
                                            dmarc=True, dnsfunc=dnsfunc)


async def test_spf_only_message_from_p_reject_domain_gets_from_rewritten(world):
    w = world
    raw = make_message("alice@sender.test")  # SPF passes at our MX, no DKIM
    code, text = await smtp_send(w.a, raw, "alice@sender.test")
    assert code == 250, text
    got = w.inbox.wait_for(1)[0]
    assert header(got.data, "From") == [b'Sender <forwarded@fwda.test>']
    assert header(got.data, "X-Original-From") == [b"Sender <alice@sender.test>"]
    assert header(got.data, "Reply-To") == [b"Sender <alice@sender.test>"]
    assert body(got.data) == body(raw)
    assert verify_all_dkim(got.data, w.txt()) == {"fwda.test": True}
    result = dmarc_at_destination(got.data, w.txt())
    assert "dmarc=pass" in result and "header.from=fwda.test" in result, result
    cv, _r, reason = dkim.arc_verify(got.data, dnsfunc=w.txt())
    assert cv == b"pass", reason


async def test_aligned_dkim_message_keeps_its_from(world):
    w = world
    raw = dkim_sign(make_message("alice@sender.test"), "sender.test", "sel", w.sender_key)
    code, text = await smtp_send(w.a, raw, "alice@sender.test")
    assert code == 250, text
    got = w.inbox.wait_for(1)[0]
    assert header(got.data, "From") == [b"Sender <alice@sender.test>"]
    assert header(got.data, "X-Original-From") == []
    result = dmarc_at_destination(got.data, w.txt())
    assert "dmarc=pass" in result and "header.from=sender.test" in result, result


@pytest.mark.parametrize("mode, code", [("reject", 550), ("forward", 250)])
async def test_dmarc_safe_mode_is_configurable(world, mode, code):
    w = world
    w.a.router.settings.routing.dmarc_safe_from = mode
    reply, text = await smtp_send(w.a, make_message("alice@sender.test"), "alice@sender.test")
    assert reply == code, text
    if mode == "reject":
        assert "5.7.1" in text and "p=reject" in text
        assert w.inbox.messages == []
    else:
        got = w.inbox.wait_for(1)[0]
        assert header(got.data, "From") == [b"Sender <alice@sender.test>"]


# -- pure helpers -------------------------------------------------------------------------------


def _auth(policy: str, aligned: list[str]) -> AuthResults:
    return AuthResults(dmarc=DmarcResult("pass", "sender.test", policy=policy,
                                         dkim_aligned=aligned, spf_aligned=True))


@pytest.mark.parametrize("policy, aligned, expected", [
    ("reject", [], ("reject", "sender.test")),
    ("quarantine", [], ("quarantine", "sender.test")),
    ("none", [], None),
    ("reject", ["sender.test"], None),
    ("", [], None),
])
def test_rewrite_decision(policy, aligned, expected):
    assert dmarc_rewrite_needed(_auth(policy, aligned)) == expected


def test_rewrite_keeps_display_name_and_existing_reply_to():
    raw = (b"Subject: x\r\nFrom: =?utf-8?q?Al=C3=A9?=\r\n <a@s.test>\r\n"
           b"Reply-To: list@s.test\r\n\r\nbody\r\n")
    out = rewrite_from(raw, "fwd@ours.test")
    assert b"From: =?utf-8?q?Al=C3=A9?= <fwd@ours.test>\r\n" in out
    assert b"X-Original-From: =?utf-8?q?Al=C3=A9?= <a@s.test>\r\n" in out
    assert out.count(b"Reply-To:") == 1 and b"Reply-To: list@s.test" in out
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_rewrite_without_display_name_uses_the_address():
    out = rewrite_from(b"From: a@s.test\r\n\r\nb\r\n", "fwd@ours.test")
    assert b'From: "a@s.test" <fwd@ours.test>\r\n' in out
    assert b"Reply-To: a@s.test\r\n" in out


def test_loop_limits():
    raw = b"".join(b"Received: by h%d\r\n" % i for i in range(5)) + b"From: a@b\r\n\r\nx\r\n"
    assert loop_problem(raw, 5, 10) is None
    assert "Received" in loop_problem(raw, 4, 10)
    arc = b"".join(b"ARC-Seal: i=%d; a=rsa-sha256; cv=none; d=x; s=y; b=zz\r\n" % i
                   for i in range(1, 4))
    assert loop_problem(arc + raw, 50, 3) is None
    assert "ARC" in loop_problem(arc + raw, 50, 2)
