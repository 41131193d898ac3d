"""Reply rules, forward() restrictions and failures, over real SMTP (node A of the
routing world, handlers from tests/handlers/sample_handlers.py)."""

from __future__ import annotations

import asyncio

from mta.handlers.kv import KvNamespace
from tests.handlers.hworld import events, hworld_fixture, messages  # noqa: F401
from tests.routing.world import body, header, world_fixture  # noqa: F401
from tests.smtp.conftest import dkim_sign, make_message, smtp_send


def signed(w, to: str, extra: str = "", **kw) -> bytes:
    return dkim_sign(make_message("alice@sender.test", to=to, extra=extra, **kw),
                     "sender.test", "sel", w.sender_key)


async def result(w, rcpt: str) -> str | None:
    return await KvNamespace(w.db, "RESULTS").get(rcpt)


async def nothing_sent(w) -> None:
    assert [m for m in await messages(w) if m.source == "reply"] == []
    await w.workers(w.a).run_once()
    await asyncio.sleep(0.2)
    assert w.sender_mx.messages == []


async def test_reply_without_dmarc_pass_is_refused(hworld):
    w = hworld
    # client.test: SPF passes (accepted), no DMARC record -> dmarc=none.
    raw = make_message("alice@client.test", to="rr-dmarc@ours.test")
    code, text = await smtp_send(w.a, raw, "alice@client.test", rcpts=("rr-dmarc@ours.test",))
    assert code == 250, text
    assert await result(w, "rr-dmarc@ours.test") == "E_REPLY_DMARC_NOT_PASSED"
    await nothing_sent(w)


async def test_second_reply_in_one_event_is_refused(hworld):
    w = hworld
    code, text = await smtp_send(w.a, signed(w, "rr-twice@ours.test"), "alice@sender.test",
                                 rcpts=("rr-twice@ours.test",))
    assert code == 250, text
    assert await result(w, "rr-twice@ours.test") == "E_REPLY_ALREADY_SENT"
    assert len([m for m in await messages(w) if m.source == "reply"]) == 1
    await w.workers(w.a).run_once()
    assert len(w.sender_mx.wait_for(1)) == 1


async def test_reply_to_someone_else_is_refused(hworld):
    w = hworld
    code, _ = await smtp_send(w.a, signed(w, "rr-rcpt@ours.test"), "alice@sender.test",
                              rcpts=("rr-rcpt@ours.test",))
    assert code == 250
    assert await result(w, "rr-rcpt@ours.test") == "E_REPLY_RECIPIENT_MISMATCH"
    await nothing_sent(w)


async def test_reply_from_another_domain_is_refused(hworld):
    w = hworld
    code, _ = await smtp_send(w.a, signed(w, "rr-domain@ours.test"), "alice@sender.test",
                              rcpts=("rr-domain@ours.test",))
    assert code == 250
    assert await result(w, "rr-domain@ours.test") == "E_REPLY_SENDER_DOMAIN_MISMATCH"
    await nothing_sent(w)


async def test_reply_to_mail_with_over_100_references_is_refused(hworld):
    w = hworld
    # Folded: a line may not exceed 998 octets (RFC 5322 2.1.1; the MX refuses longer).
    refs = "\r\n ".join(f"<r{i}@sender.test>" for i in range(101))
    raw = signed(w, "rr-refs@ours.test", extra=f"References: {refs}\r\n")
    code, _ = await smtp_send(w.a, raw, "alice@sender.test", rcpts=("rr-refs@ours.test",))
    assert code == 250
    assert await result(w, "rr-refs@ours.test") == "E_REPLY_TOO_MANY_REFERENCES"
    await nothing_sent(w)


async def test_forward_adds_only_x_headers(hworld):
    w = hworld
    raw = signed(w, "fwdh@ours.test", subject="Original subject")
    code, text = await smtp_send(w.a, raw, "alice@sender.test", rcpts=("fwdh@ours.test",))
    assert code == 250, text
    got = w.inbox.wait_for(1)[0]
    assert header(got.data, "X-Tag") == [b"tagged"]
    assert header(got.data, "Subject") == [b"Original subject"]  # "Other headers are removed"
    assert header(got.data, "Reply-To") == []
    assert body(got.data) == body(raw)
    assert got.mail_from.startswith("SRS0=")  # the forwarding path: SRS, ARC, DKIM
    assert header(got.data, "ARC-Seal")
    handled = (await events(w, "Handled"))[0]
    assert handled.details["actions"][0]["removed_headers"] == ["Subject", "Reply-To"]
    assert (await events(w, "Forwarded"))[0].details["destination"] == "dest@inbox.test"


async def test_forward_to_unverified_address_raises(hworld):
    w = hworld
    code, text = await smtp_send(w.a, signed(w, "fwdu@ours.test"), "alice@sender.test",
                                 rcpts=("fwdu@ours.test",))
    assert code == 550 and "E_FORWARD_DESTINATION_NOT_VERIFIED" in text
    assert await result(w, "fwdu@ours.test") == "E_FORWARD_DESTINATION_NOT_VERIFIED"
    await asyncio.sleep(0.2)
    assert w.inbox.messages == []


async def test_handler_that_raises_gets_451_and_the_message_is_kept(hworld):
    w = hworld
    raw = signed(w, "fail@ours.test")
    code, text = await smtp_send(w.a, raw, "alice@sender.test", rcpts=("fail@ours.test",))
    assert code == 451 and text.startswith("4.3.0"), text
    kept = await messages(w, "mx")
    assert len(kept) == 1 and kept[0].status == "handler_failed"
    assert body(kept[0].raw) == body(raw)
    err = await events(w, "Error")
    assert err[0].message_id == kept[0].id and err[0].rcpt_to == "fail@ours.test"
    assert err[0].details["error_code"] == "E_HANDLER_EXCEPTION"
    assert "handler bug" in err[0].details["error"]


async def test_handler_past_its_time_limit_gets_451_and_the_message_is_kept(hworld):
    w = hworld
    started = asyncio.get_running_loop().time()
    code, text = await smtp_send(w.a, signed(w, "hang@ours.test"), "alice@sender.test",
                                 rcpts=("hang@ours.test",))
    assert code == 451 and text.startswith("4.3.0"), text
    assert asyncio.get_running_loop().time() - started < 10  # limit 1 s, not 60
    kept = await messages(w, "mx")
    assert [m.status for m in kept] == ["handler_failed"]
    err = await events(w, "Error")
    assert err[0].details["error_code"] == "E_HANDLER_TIMEOUT"


async def test_fallback_forward_accepts_and_forwards_unchanged(hworld):
    w = hworld
    raw = signed(w, "fallback@ours.test")
    code, text = await smtp_send(w.a, raw, "alice@sender.test",
                                 rcpts=("fallback@ours.test",))
    assert code == 250, text
    got = w.inbox.wait_for(1)[0]
    assert got.rcpt_tos == ["other@inbox.test"] and body(got.data) == body(raw)
    err = (await events(w, "Error"))[0]
    assert err.details["fallback"] == "forward" and err.details["forward_to"] == \
        "other@inbox.test"


async def test_wait_until_work_completes_after_the_reply(hworld):
    w = hworld
    code, _ = await smtp_send(w.a, signed(w, "later@ours.test"), "alice@sender.test",
                              rcpts=("later@ours.test",))
    assert code == 250
    for _ in range(50):
        if await result(w, "later@ours.test") == "later":
            break
        await asyncio.sleep(0.05)
    assert await result(w, "later@ours.test") == "later"
