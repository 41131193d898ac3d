"""REST send and send_raw over real HTTP: the app under uvicorn on a loopback port, httpx
and the official SDK (PyPI `cloudflare`) as clients, PostgreSQL, DNS and an SMTP sink.
Every applicable row of [REST API > Error handling] is produced here."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket

import httpx
import pytest
import uvicorn

from mta.api.app import build_app
from mta.sending.limits import SendingLimits
from mta.tokens import create_token
from tests.harness.node import free_port
from tests.sending.test_service import RAW, SENDER, add_account, full_request, world  # noqa: F401


class Api:
    def __init__(self, world, service) -> None:  # noqa: F811
        self.world = world
        self.app = build_app(world.ctx)
        self.app.state.sending = service
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off"))
        self.token = ""
        self.client: httpx.AsyncClient | None = None

    def url(self, kind: str = "send", account: str | None = None) -> str:
        return (f"{self.base}/client/v4/accounts/{account or self.world.account}"
                f"/email/sending/{kind}")

    async def post(self, body, kind: str = "send", token: str | None = None,
                   account: str | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        headers.update(kw.pop("headers", {}))
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return await self.client.post(self.url(kind, account), content=data,
                                      headers=headers, **kw)


async def token_for(db, account: str, *permissions: str) -> str:
    async with db.session() as s:
        _, secret = await create_token(s, account, "t", list(permissions))
    return secret


@contextlib.asynccontextmanager
async def running(world, service):  # noqa: F811
    api = Api(world, service)
    task = asyncio.create_task(api.server.serve())
    while not api.server.started:
        await asyncio.sleep(0.01)
    api.token = await token_for(world.db, world.account, "email_sending:send")
    async with httpx.AsyncClient(timeout=30) as client:
        api.client = client
        try:
            yield api
        finally:
            api.server.should_exit = True
            await task


@pytest.fixture
async def api(world):  # noqa: F811
    async with running(world, world.service()) as a:
        yield a


def error_of(resp: httpx.Response) -> tuple[int, int, str]:
    body = resp.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    return resp.status_code, body["errors"][0]["code"], body["errors"][0]["message"]


# --- success --------------------------------------------------------------------------------


async def test_send_answers_the_reference_envelope_with_every_result_key(api):
    resp = await api.post(full_request(to=["bob@rcpt.test"], cc="carol@rcpt.test"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    result = body["result"]
    assert set(result) == {"delivered", "permanent_bounces", "queued", "message_id",
                           "suppressed_recipients"}
    assert sorted(result["delivered"]) == ["bob@rcpt.test", "carol@rcpt.test"]
    assert result["suppressed_recipients"] == [] and result["message_id"].endswith(
        "@sender.test>")
    assert len(api.world.sink.wait_for(2)) == 2


async def test_send_raw_answers_the_same_shape(api):
    resp = await api.post({"from": SENDER, "recipients": ["bob@rcpt.test"],
                           "mime_message": RAW.decode()}, "send_raw")
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["delivered"] == ["bob@rcpt.test"]


# --- the error table ----------------------------------------------------------------------------

SIMPLE = {"from": SENDER, "to": "bob@rcpt.test", "subject": "s", "text": "t"}


@pytest.mark.parametrize("body, row", [
    ("{not json", (400, 10001, "email.sending.error.invalid_request_schema")),
    ({**SIMPLE, "attachements": []}, (400, 10001, "email.sending.error.invalid_request_schema")),
    ({k: v for k, v in SIMPLE.items() if k != "subject"},
     (400, 10001, "email.sending.error.invalid_request_schema")),
    ({**SIMPLE, "headers": {"Date": "x"}},
     (400, 10001, "email.sending.error.invalid_request_schema")),
    ({**SIMPLE, "to": [f"u{i}@rcpt.test" for i in range(51)]},
     (400, 10001, "email.sending.error.invalid_request_schema")),
    ({**SIMPLE, "attachments": [{"content": base64.b64encode(b"\0" * (5 * 1024 * 1024 + 1))
                                 .decode(), "filename": "a", "type": "a/b"}]},
     (400, 10200, "email.sending.error.email.too_big")),
    ({**SIMPLE, "from": "a@elsewhere.test"},
     (403, 10203, "email.sending.error.email.sending_disabled")),
])
async def test_send_errors_use_the_reference_rows(api, body, row):
    assert error_of(await api.post(body)) == row


async def test_send_raw_with_an_unparsable_message_is_10202(api):
    resp = await api.post({"from": SENDER, "recipients": ["bob@rcpt.test"],
                           "mime_message": "just text, no header"}, "send_raw")
    assert error_of(resp) == (400, 10202, "email.sending.error.email.invalid")


async def test_a_request_without_content_length_is_10201(api):
    path = api.url().removeprefix(api.base)
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        # Neither Content-Length nor chunked: HTTP/1.1 then has no body (RFC 9112 6.3).
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.token}"
                     f"\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                     .encode())
        reply = await asyncio.to_thread(_read_all, sock)
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert json.loads(payload)["errors"][0]["code"] == 10201


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_authentication_rows(api):
    other, _ = await add_account(api.world.db, "other", "other.test")
    reader = await token_for(api.world.db, api.world.account, "email_routing:read")
    foreign = await token_for(api.world.db, other, "email_sending:send")
    plain = await api.client.post(api.url(), content=json.dumps(SIMPLE))
    assert error_of(plain) == (401, 10101, "email.sending.error.authentication.unauthorized")
    unknown = "mta_" + "A" * 43
    assert error_of(await api.post(SIMPLE, token=unknown))[:2] == (401, 10101)
    basic = await api.client.post(api.url(), content=json.dumps(SIMPLE),
                                  headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert error_of(basic) == (401, 10103, "email.sending.error.authentication.bad_token_type")
    assert error_of(await api.post(SIMPLE, token=reader)) == (
        403, 10102, "email.sending.error.authentication.forbidden")
    assert error_of(await api.post(SIMPLE, token=foreign))[:2] == (403, 10102)


async def test_unknown_endpoint_is_10000(api):
    resp = await api.client.post(api.url("sned"), content="{}",
                                 headers={"Authorization": f"Bearer {api.token}"})
    assert error_of(resp) == (404, 10000, "email.sending.error.not_found")


async def test_rate_limit_is_429_10004(world):  # noqa: F811
    service = world.service(sync_timeout=0, rate=SendingLimits(account_rate=2))
    async with running(world, service) as api:
        codes = [(await api.post(SIMPLE)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert error_of(await api.post(SIMPLE)) == (429, 10004,
                                                    "email.sending.error.throttled")


async def test_internal_error_is_500_10002_without_details(world):  # noqa: F811
    world.ctx.settings.secret_key = "rotated-without-the-old-one"  # keys do not decrypt
    try:
        async with running(world, world.service()) as api:
            resp = await api.post(SIMPLE)
    finally:
        world.ctx.settings.secret_key = "test-secret-key"
    assert error_of(resp) == (500, 10002, "email.sending.error.internal_server")
    assert "rotated" not in resp.text and "decrypt" not in resp.text


async def test_suppressed_recipients_in_the_result_and_all_suppressed_refused(api):
    from mta.store import suppression

    async with api.world.db.session() as s:
        await suppression.add(s, api.world.account, "gone@rcpt.test", "hard_bounce",
                              now=api.world.ctx.clock())
    resp = await api.post({**SIMPLE, "to": ["gone@rcpt.test", "ok@rcpt.test"]})
    assert resp.status_code == 200
    assert resp.json()["result"]["suppressed_recipients"] == ["gone@rcpt.test"]
    body = (await api.post({**SIMPLE, "to": "gone@rcpt.test"})).json()
    assert body["errors"][0]["error_code"] == "E_RECIPIENT_SUPPRESSED"


# --- the official SDK ------------------------------------------------------------------------


async def test_official_sdk_send_and_send_raw(api, monkeypatch):
    cloudflare = pytest.importorskip("cloudflare")
    for k in [k for k in __import__("os").environ if k.startswith("CLOUDFLARE_")]:
        monkeypatch.delenv(k)
    cf = cloudflare.Cloudflare(api_token=api.token, base_url=f"{api.base}/client/v4",
                               max_retries=0, timeout=30, _strict_response_validation=True)
    if not hasattr(cf, "email_sending"):
        pytest.skip("this SDK version has no email_sending")

    def calls():
        sent = cf.email_sending.send(
            account_id=api.world.account, from_={"address": SENDER, "name": "Us"},
            to="bob@rcpt.test", subject="from the SDK", text="hello",
            attachments=[{"content": base64.b64encode(b"%PDF-1.4").decode(),
                          "filename": "a.pdf", "type": "application/pdf",
                          "disposition": "attachment"}])
        raw = cf.email_sending.send_raw(account_id=api.world.account, from_=SENDER,
                                        recipients=["carol@rcpt.test"],
                                        mime_message=RAW.decode())
        try:
            cf.email_sending.send(account_id=api.world.account, from_="a@elsewhere.test",
                                  to="bob@rcpt.test", subject="s", text="t")
        except cloudflare.PermissionDeniedError as exc:
            refused = exc
        return sent, raw, refused

    sent, raw, refused = await asyncio.to_thread(calls)
    assert sent.delivered == ["bob@rcpt.test"] and sent.message_id
    assert raw.delivered == ["carol@rcpt.test"] and raw.suppressed_recipients == []
    assert refused.status_code == 403
    assert len(api.world.sink.wait_for(2)) == 2
