"""Every string field of the send API that can reach a header refuses CR, LF and NUL
with the reference's row (400, 10001), over real HTTP, field by field (issue 13); nothing
reaches the sink."""

from __future__ import annotations

import copy

import pytest

from tests.sending.test_rest_send import api, error_of  # noqa: F401 - the `api` fixture
from tests.sending.test_service import SENDER, full_request, world  # noqa: F401

BAD = {"CR": "\r", "LF": "\n", "CRLF": "\r\nBcc: victim@rcpt.test", "NUL": "\x00",
       # What the email package also reads as a line end (a 500 before; found by fuzzing).
       "FF": "\x0c", "VT": "\x0b", "NEL": "\x85", "LS": "\u2028"}
SCHEMA = (400, 10001, "email.sending.error.invalid_request_schema")


def _set(body: dict, path: tuple, value) -> None:
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


# (path into the request body, a valid value the bad characters are put into)
SEND_FIELDS = {
    "from": (("from",), f"Sender {{}}<{SENDER}>"),
    "from.name": (("from", "name"), "Sender{}"),
    "from.address": (("from", "address"), "noreply{}@sender.test"),
    "to": (("to",), ["Bob{} <bob@rcpt.test>"]),
    "to.address": (("to",), ["bob{}@rcpt.test"]),
    "to.name": (("to",), [{"address": "bob@rcpt.test", "name": "Bob{}"}]),
    "cc.name": (("cc",), [{"address": "carol@rcpt.test", "name": "Carol{}"}]),
    "bcc.address": (("bcc",), ["dave@rcpt.test{}"]),
    "reply_to": (("reply_to",), "Help{} <help@sender.test>"),
    "reply_to.name": (("reply_to",), {"address": "help@sender.test", "name": "Help{}"}),
    "subject": (("subject",), "Your invoice{} now"),
    "attachment.filename": (("attachments", 1, "filename"), "invoice{}.pdf"),
    "attachment.type": (("attachments", 1, "type"), "application/pdf{}"),
    "attachment.content_id": (("attachments", 0, "content_id"), "logo{}"),
    "header.value": (("headers", "X-Campaign-ID"), "c-42{}"),
    "header.list_unsubscribe": (("headers", "List-Unsubscribe"),
                                "<https://sender.test/u/1{}>"),
}


def _fill(template, bad: str):
    if isinstance(template, str):
        return template.replace("{}", bad)
    if isinstance(template, list):
        return [_fill(t, bad) for t in template]
    return {k: _fill(v, bad) for k, v in template.items()}


@pytest.mark.parametrize("field", SEND_FIELDS, ids=SEND_FIELDS.keys())
async def test_send_field_with_line_break_or_nul_is_400(api, field):  # noqa: F811
    path, template = SEND_FIELDS[field]
    for name, bad in BAD.items():
        body = copy.deepcopy(full_request())
        _set(body, path, _fill(template, bad))
        resp = await api.post(body)
        assert error_of(resp) == SCHEMA, (field, name, resp.text)
    # The same field without the bad character goes through (the test can fail).
    body = copy.deepcopy(full_request())
    _set(body, path, _fill(template, ""))
    resp = await api.post(body)
    assert resp.status_code == 200, (field, resp.text)
    api.world.sink.wait_for(1)
    assert all(b"victim" not in m.data and b"\x00" not in m.data
               for m in api.world.sink.messages)


async def test_send_header_name_with_line_break_or_nul_is_400(api):  # noqa: F811
    for bad in BAD.values():
        body = full_request(headers={f"X-Bad{bad}Name": "v"})
        status, code, _ = error_of(await api.post(body))
        assert (status, code) == (400, 10001)
    assert api.world.sink.messages == []


RAW = (b"From: Sender <noreply@sender.test>\r\nTo: bob@rcpt.test\r\nSubject: raw\r\n"
       b"Message-ID: <client@x>\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nbody\r\n")


async def test_send_raw_envelope_with_line_break_or_nul_is_400(api):  # noqa: F811
    for bad in BAD.values():
        for field in ("from", "recipients"):
            body = {"from": SENDER, "recipients": ["bob@rcpt.test"],
                    "mime_message": RAW.decode()}
            if field == "from":
                body["from"] = f"noreply@sender.test{bad}"
            else:
                body["recipients"] = [f"bob@rcpt.test{bad}"]
            status, code, _ = error_of(await api.post(body, "send_raw"))
            assert (status, code) == (400, 10001), (field, bad)
    assert api.world.sink.messages == []
