"""The Python send binding: every code of [Workers API > Error codes] it can raise, and
the restrictions of [Configure send bindings], against the real pipeline."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime

import pytest

from mta.errors import MtaError
from mta.sending.binding import EmailMessage, EmailMessageBuilder, SendBinding
from mta.sending.limits import SendingLimits
from mta.store import suppression
from tests.sending.test_service import PDF, RAW, SENDER, world  # noqa: F401

OK = {"from": SENDER, "to": "bob@rcpt.test", "subject": "s", "text": "t"}


async def code_of(binding: SendBinding, message) -> str:
    with pytest.raises(MtaError) as e:
        await binding.send(message)
    return e.value.code


async def test_builder_returns_the_message_id_and_takes_binary_attachments(world):  # noqa: F811
    binding = SendBinding(world.service(), world.account)
    mid = await binding.send(EmailMessageBuilder(
        to=[{"email": "bob@rcpt.test", "name": "Bob"}], from_={"email": SENDER, "name": "Us"},
        subject="Invoice", html="<p>hi</p>", reply_to="help@sender.test",
        attachments=[{"content": PDF, "filename": "i.pdf", "type": "application/pdf",
                      "disposition": "attachment"}]))
    [got] = world.sink.wait_for(1)
    assert mid.encode() in got.data and base64.b64encode(PDF)[:20] in got.data


async def test_legacy_email_message(world):  # noqa: F811
    binding = SendBinding(world.service(), world.account)
    mid = await binding.send(EmailMessage(SENDER, "bob@rcpt.test", RAW))
    assert mid.endswith("@sender.test>")
    assert world.sink.wait_for(1)[0].rcpt_tos == ["bob@rcpt.test"]


async def test_destination_address_fills_a_missing_to_and_refuses_others(world):  # noqa: F811
    binding = SendBinding(world.service(), world.account, destination_address="ops@rcpt.test")
    await binding.send({"from": SENDER, "subject": "alert", "text": "disk full"})
    assert world.sink.wait_for(1)[0].rcpt_tos == ["ops@rcpt.test"]
    assert await code_of(binding, OK) == "E_RECIPIENT_NOT_ALLOWED"
    assert await code_of(binding, {**OK, "to": "ops@rcpt.test", "bcc": "spy@rcpt.test"}) \
        == "E_RECIPIENT_NOT_ALLOWED"
    assert await code_of(binding, EmailMessage(SENDER, "bob@rcpt.test", RAW)) \
        == "E_RECIPIENT_NOT_ALLOWED"


async def test_allowed_destination_addresses(world):  # noqa: F811
    binding = SendBinding(world.service(), world.account,
                          allowed_destination_addresses=["Alice@rcpt.test", "bob@rcpt.test"])
    await binding.send({**OK, "to": ["alice@RCPT.test", "bob@rcpt.test"]})
    assert await code_of(binding, {**OK, "cc": "carol@rcpt.test"}) == "E_RECIPIENT_NOT_ALLOWED"


async def test_allowed_sender_addresses(world):  # noqa: F811
    binding = SendBinding(world.service(), world.account,
                          allowed_sender_addresses=["support@sender.test"])
    assert await code_of(binding, OK) == "E_SENDER_NOT_VERIFIED"
    await binding.send({**OK, "from": "Support@sender.test"})
    assert await code_of(binding, EmailMessage(SENDER, "bob@rcpt.test", RAW)) \
        == "E_SENDER_NOT_VERIFIED"


async def test_every_recipient_refused_is_delivery_failed(world):  # noqa: F811
    world.sink.rcpt_replies["gone@rcpt.test"] = "550 5.1.1 no such user"
    binding = SendBinding(world.service(), world.account)
    assert await code_of(binding, {**OK, "to": "gone@rcpt.test"}) == "E_DELIVERY_FAILED"


@pytest.mark.parametrize("message, code", [
    ({**OK, "to": "not an address"}, "E_VALIDATION_ERROR"),
    ({**OK, "subject": 5}, "E_VALIDATION_ERROR"),
    ({k: v for k, v in OK.items() if k != "from"}, "E_FIELD_MISSING"),
    ({k: v for k, v in OK.items() if k != "subject"}, "E_FIELD_MISSING"),
    ({**OK, "to": [f"u{i}@rcpt.test" for i in range(51)]}, "E_TOO_MANY_RECIPIENTS"),
    ({**OK, "attachments": [{"content": b"x", "filename": f"{i}.txt", "type": "text/plain",
                             "disposition": "attachment"} for i in range(33)]},
     "E_TOO_MANY_ATTACHMENTS"),
    ({**OK, "attachments": [{"content": b"\0" * (5 * 1024 * 1024 + 1), "filename": "a",
                             "type": "application/octet-stream",
                             "disposition": "attachment"}]}, "E_CONTENT_TOO_LARGE"),
    ({**OK, "from": "a@elsewhere.test"}, "E_SENDER_DOMAIN_NOT_AVAILABLE"),
    ({**OK, "headers": {"Message-ID": "<a@b>"}}, "E_HEADER_NOT_ALLOWED"),
    ({**OK, "headers": {"X-Ok": "1", "Sender": "x"}}, "E_HEADER_NOT_ALLOWED"),
    ({**OK, "headers": {"Reply-To": "a@b.test"}}, "E_HEADER_USE_API_FIELD"),
    ({**OK, "headers": {"List-Unsubscribe": "http://x.test/u"}}, "E_HEADER_VALUE_INVALID"),
    ({**OK, "headers": {"X-Long": "v" * 2049}}, "E_HEADER_VALUE_TOO_LONG"),
    ({**OK, "headers": {"X-Bad Name": "v"}}, "E_HEADER_NAME_INVALID"),
    ({**OK, "headers": {f"X-H{i}": "v" * 2000 for i in range(9)}}, "E_HEADERS_TOO_LARGE"),
    ({**OK, "headers": {"Feedback-ID": "a:b:c"}}, "E_HEADER_NOT_ALLOWED"),
])
async def test_error_codes(world, message, code):  # noqa: F811
    assert await code_of(SendBinding(world.service(), world.account), message) == code


async def test_too_many_allowlisted_headers(world):  # noqa: F811
    from mta.sending.headers import HeaderLimits
    from mta.sending.validate import SendLimits

    service = world.service()
    service.limits = SendLimits(headers=HeaderLimits(max_custom_headers=1))
    binding = SendBinding(service, world.account)
    message = {**OK, "headers": {"Keywords": "a", "Comments": "b"}}
    assert await code_of(binding, message) == "E_HEADERS_TOO_MANY"


async def test_suppressed_rate_and_daily_limits(world):  # noqa: F811
    # Every send of this test at one instant in the middle of a minute: the rate window is
    # a clock minute, and two sends on either side of its end would count apart.
    instant = datetime.now(UTC).replace(second=30)
    world.ctx = dataclasses.replace(world.ctx, clock=lambda: instant)
    async with world.db.session() as s:
        await suppression.add(s, world.account, "gone@rcpt.test", "complaint",
                              now=world.ctx.clock())
    binding = SendBinding(world.service(sync_timeout=0), world.account)
    assert await code_of(binding, {**OK, "to": "gone@rcpt.test"}) == "E_RECIPIENT_SUPPRESSED"
    rate = SendBinding(world.service(sync_timeout=0, rate=SendingLimits(account_rate=1)),
                       world.account)
    await rate.send(OK)
    assert await code_of(rate, OK) == "E_RATE_LIMIT_EXCEEDED"
    daily = SendBinding(world.service(sync_timeout=0, rate=SendingLimits(
        account_rate=0, account_daily=2)), world.account)
    await daily.send(OK)  # the account has used 1 of 2 today
    assert await code_of(daily, OK) == "E_DAILY_LIMIT_EXCEEDED"


async def test_internal_server_error(world):  # noqa: F811
    world.ctx.settings.secret_key = "not-the-one-keys-were-sealed-with"
    try:
        assert await code_of(SendBinding(world.service(), world.account), OK) \
            == "E_INTERNAL_SERVER_ERROR"
    finally:
        world.ctx.settings.secret_key = "test-secret-key"
