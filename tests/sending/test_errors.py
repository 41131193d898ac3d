"""The error table is complete and says what the reference documents."""

from __future__ import annotations

import re

import pytest

from mta.errors import ERRORS, MtaError, rest_error_body
from tests.conftest import SHARED

DOCS = SHARED / "spec" / "email-service-docs.cleaned.md"

# [REST API > Error handling], row by row: numeric code -> (HTTP status, message).
REST_TABLE = {
    10001: (400, "email.sending.error.invalid_request_schema"),
    10200: (400, "email.sending.error.email.too_big"),
    10201: (400, "email.sending.error.email.no_content_length"),
    10202: (400, "email.sending.error.email.invalid"),
    10101: (401, "email.sending.error.authentication.unauthorized"),
    10103: (401, "email.sending.error.authentication.bad_token_type"),
    10102: (403, "email.sending.error.authentication.forbidden"),
    10105: (403, "email.sending.error.authentication.not_entitled"),
    10203: (403, "email.sending.error.email.sending_disabled"),
    10000: (404, "email.sending.error.not_found"),
    10004: (429, "email.sending.error.throttled"),
    10002: (500, "email.sending.error.internal_server"),
    10003: (500, "email.sending.error.not_implemented"),
    10100: (503, "email.sending.error.authentication.upstream"),
}

# [Workers API > Error codes] and [Email headers > Error codes].
SEND_CODES = {
    "E_VALIDATION_ERROR", "E_FIELD_MISSING", "E_TOO_MANY_RECIPIENTS",
    "E_TOO_MANY_ATTACHMENTS", "E_SENDER_NOT_VERIFIED", "E_RECIPIENT_NOT_ALLOWED",
    "E_RECIPIENT_SUPPRESSED", "E_SENDER_DOMAIN_NOT_AVAILABLE", "E_CONTENT_TOO_LARGE",
    "E_DELIVERY_FAILED", "E_RATE_LIMIT_EXCEEDED", "E_DAILY_LIMIT_EXCEEDED",
    "E_INTERNAL_SERVER_ERROR", "E_HEADER_NOT_ALLOWED", "E_HEADER_USE_API_FIELD",
    "E_HEADER_VALUE_INVALID", "E_HEADER_VALUE_TOO_LONG", "E_HEADER_NAME_INVALID",
    "E_HEADERS_TOO_LARGE", "E_HEADERS_TOO_MANY",
}

# Where the reference ties a string code to a REST status or an SMTP reply, directly
# ([SMTP > Response codes], [Limits]) or by the obvious row.
DOCUMENTED = {
    "E_CONTENT_TOO_LARGE": (400, 10200, (552, "5.3.4")),
    "E_TOO_MANY_RECIPIENTS": (400, 10001, (452, "4.5.3")),
    "E_SENDER_DOMAIN_NOT_AVAILABLE": (403, 10203, (550, "5.7.1")),
    "E_RATE_LIMIT_EXCEEDED": (429, 10004, None),
    "E_DAILY_LIMIT_EXCEEDED": (429, 10004, None),
    "E_INTERNAL_SERVER_ERROR": (500, 10002, (451, "4.3.0")),
    "E_VALIDATION_ERROR": (400, 10001, None),
    "E_AUTH_REQUIRED": (401, 10101, (530, "5.7.0")),
    "E_UNAUTHORIZED": (401, 10101, (535, "5.7.8")),
}


def _docs() -> str:
    if not DOCS.exists():
        pytest.skip(f"reference docs not found at {DOCS}")
    return DOCS.read_text(encoding="utf-8")


def _section(text: str, heading: str, after: str) -> str:
    start = text.index(after)
    start = text.index(heading, start)
    end = text.find("\n## ", start + len(heading))
    return text[start:end]


def test_rest_table_matches_the_reference_docs() -> None:
    section = _section(_docs(), "REST API error codes:", "# REST API")
    rows = re.findall(r"^\|\s*(\d{3})\s*\|\s*(\d{5})\s*\|\s*([^|]+?)\s*\|", section, re.M)
    parsed = {int(code): (int(status), msg.replace("\\_", "_")) for status, code, msg in rows}
    assert parsed == REST_TABLE


def test_send_code_lists_match_the_reference_docs() -> None:
    text = _docs()
    workers = _section(text, "## Error codes", "title: Workers API\ndescription: Send")
    headers = _section(text, "## Error codes", "# Email headers")
    found = set()
    for section in (workers, headers):
        found |= {c.replace("\\_", "_") for c in re.findall(r"^\|\s*(E[\\_A-Z]+?)\s*\|",
                                                            section, re.M)}
    assert found == SEND_CODES


def test_every_send_code_is_in_the_table() -> None:
    assert SEND_CODES <= ERRORS.keys()


@pytest.mark.parametrize("api_code", sorted(REST_TABLE))
def test_every_rest_row_is_reachable_with_its_status_and_message(api_code: int) -> None:
    specs = [s for s in ERRORS.values() if s.rest.code == api_code]
    assert specs, f"no error code maps to REST {api_code}"
    for spec in specs:
        assert (spec.rest.http_status, spec.rest.message) == REST_TABLE[api_code]


def test_table_uses_only_documented_rest_rows() -> None:
    for spec in ERRORS.values():
        assert REST_TABLE[spec.rest.code] == (spec.rest.http_status, spec.rest.message), spec.code


@pytest.mark.parametrize("code", sorted(DOCUMENTED))
def test_documented_mappings(code: str) -> None:
    status, api_code, smtp = DOCUMENTED[code]
    spec = ERRORS[code]
    assert (spec.rest.http_status, spec.rest.code) == (status, api_code)
    if smtp:
        assert (spec.smtp.code, spec.smtp.enhanced) == smtp


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_smtp_reply_is_consistent(code: str) -> None:
    """Basic and enhanced codes agree in class (RFC 3463 §2), and temporary errors are
    exactly the 4xx ones, so a retry policy reading either sees the same answer."""
    reply = ERRORS[code].smtp
    assert 400 <= reply.code < 600
    assert reply.enhanced and reply.enhanced[0] == str(reply.code)[0]
    assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.enhanced)
    assert reply.text
    assert ERRORS[code].temporary == (reply.code < 500)


def test_temporary_errors_are_the_retryable_ones() -> None:
    temporary = {c for c, s in ERRORS.items() if s.temporary}
    assert {"E_RATE_LIMIT_EXCEEDED", "E_DAILY_LIMIT_EXCEEDED", "E_INTERNAL_SERVER_ERROR",
            "E_TOO_MANY_RECIPIENTS", "E_AUTH_UPSTREAM", "E_TEMPORARILY_UNAVAILABLE"
            } == temporary


def test_rest_error_body_is_the_reference_envelope() -> None:
    err = MtaError("E_HEADER_NOT_ALLOWED", "Header 'Date' is not allowed.",
                   field="headers.Date")
    body = rest_error_body(err)
    assert body["success"] is False
    assert body["messages"] == [] and body["result"] is None
    [entry] = body["errors"]
    assert (entry["code"], entry["message"]) == (
        10001, "email.sending.error.invalid_request_schema")
    assert entry["error_code"] == "E_HEADER_NOT_ALLOWED"
    assert entry["detail"] == "Header 'Date' is not allowed."
    assert entry["source"] == {"pointer": "/headers/Date"}
    assert err.http_status == 400


def test_rest_error_body_without_field_has_no_source() -> None:
    body = rest_error_body(MtaError("E_RATE_LIMIT_EXCEEDED"))
    [entry] = body["errors"]
    assert (entry["code"], entry["message"]) == (10004, "email.sending.error.throttled")
    assert "source" not in entry
    assert entry["detail"] == "Rate limit exceeded"  # the documented description


def test_field_paths_become_json_pointers() -> None:
    body = rest_error_body(MtaError("E_VALIDATION_ERROR", field="attachments[3].content"))
    assert body["errors"][0]["source"] == {"pointer": "/attachments/3/content"}


def test_unknown_code_is_refused_at_once() -> None:
    with pytest.raises(ValueError):
        MtaError("E_NO_SUCH_CODE")


def test_error_carries_code_message_field() -> None:
    err = MtaError("E_SENDER_NOT_VERIFIED", field="from")
    assert (err.code, err.message, err.field) == (
        "E_SENDER_NOT_VERIFIED", "Sender domain not verified", "from")
    assert str(err) == "E_SENDER_NOT_VERIFIED: Sender domain not verified"
    assert err.smtp_reply.code == 550
