"""Every rule of [Email headers] and [Limits]: one accepting and one rejecting case each,
the rejection asserting the exact error code."""

from __future__ import annotations

import base64
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

import pytest

from mta.errors import MtaError
from mta.sending.headers import ALLOWLIST, HeaderLimits, validate_custom_headers
from mta.sending.validate import (
    Address,
    Attachment,
    SendLimits,
    SendRequest,
    check_message_size,
    normalize_address,
    parse_send_request,
    validate_send,
)

MiB = 1024 * 1024
HTTPS_LU = "<https://example.com/unsubscribe?id=abc123>"


def body(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"from": "welcome@example.com", "to": "user@example.org",
                            "subject": "Hi", "text": "Hello"}
    data.update(over)
    return {k: v for k, v in data.items() if v is not ...}


def send(**over: Any):
    return validate_send(parse_send_request(body(**over)))


def code_of(fn, *args, **kw) -> str:
    with pytest.raises(MtaError) as info:
        fn(*args, **kw)
    return info.value.code


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- header rules -------------------------------------------------------------------

# One valid value per allowlisted header, named in lower case to show canonical casing.
VALID_VALUES = {
    "in-reply-to": "<original-message-id@yourdomain.com>",
    "references": "<a@example.com> <b@example.com>",
    "list-unsubscribe": HTTPS_LU,
    "list-unsubscribe-post": "List-Unsubscribe=One-Click",
    "list-id": "Weekly digest <digest.example.com>",
    "list-archive": "<https://example.com/archive>",
    "list-help": "<mailto:help@example.com>",
    "list-owner": "<mailto:owner@example.com>",
    "list-post": "NO",
    "list-subscribe": "<https://example.com/subscribe>",
    "precedence": "bulk",
    "auto-submitted": "auto-generated",
    "content-language": "en",
    "keywords": "invoice, billing",
    "comments": "generated nightly",
    "importance": "high",
    "sensitivity": "company-confidential",
    "organization": "Example Ltd",
    "require-recipient-valid-since": "user@example.org; Sat, 1 Mar 2025 10:00:00 +0000",
    "archived-at": "<https://example.com/archive/1>",
}


def test_valid_values_cover_the_whole_allowlist() -> None:
    assert set(VALID_VALUES) == set(ALLOWLIST)


@pytest.mark.parametrize("lower", sorted(VALID_VALUES))
def test_allowlisted_header_accepted_with_canonical_casing(lower: str) -> None:
    headers = {lower: VALID_VALUES[lower]}
    if lower == "list-unsubscribe-post":
        headers["List-Unsubscribe"] = HTTPS_LU
    result = dict(validate_custom_headers(headers))
    assert result[ALLOWLIST[lower]] == VALID_VALUES[lower]
    assert lower not in result or lower == ALLOWLIST[lower]


# (headers, expected code or None for accepted)
HEADER_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # platform-controlled
    *[(f"platform {n}", {n: "x"}, "E_HEADER_NOT_ALLOWED") for n in (
        "Date", "Message-ID", "message-id", "MIME-Version", "Content-Type",
        "Content-Transfer-Encoding", "DKIM-Signature", "Return-Path", "Received",
        "Feedback-ID", "ARC-Seal", "arc-message-signature", "ARC-Authentication-Results",
        "TLS-Required", "TLS-Report-Domain", "TLS-Report-Submitter", "CFBL-Address",
        "CFBL-Feedback-ID")],
    # first-class API fields
    *[(f"api field {n}", {n: "a@example.com"}, "E_HEADER_USE_API_FIELD") for n in (
        "From", "To", "Cc", "Bcc", "Subject", "Reply-To", "reply-to", "SUBJECT")],
    # not on the allowlist
    ("unlisted Sender", {"Sender": "a@example.com"}, "E_HEADER_NOT_ALLOWED"),
    ("unlisted User-Agent", {"User-Agent": "x"}, "E_HEADER_NOT_ALLOWED"),
    ("unlisted Content-Disposition", {"Content-Disposition": "inline"},
     "E_HEADER_NOT_ALLOWED"),
    # X- headers are free
    ("X- header", {"X-Campaign-ID": "weekly-digest-2026-03"}, None),
    ("x- lower case", {"x-user-segment": "premium"}, None),
    ("X- underscore", {"X-Tracking_Id": "1"}, None),
    ("X- UTF-8 value", {"X-Greeting": "Grüße"}, None),
    # name syntax and length
    ("name with space and !", {"Bad Header!": "x"}, "E_HEADER_NAME_INVALID"),
    ("underscore outside X-", {"List_Id": "x"}, "E_HEADER_NAME_INVALID"),
    ("X- alone", {"X-": "x"}, "E_HEADER_NAME_INVALID"),
    ("X- bad char", {"X-Foo.Bar": "x"}, "E_HEADER_NAME_INVALID"),
    ("colon in name", {"X-Foo:Bar": "x"}, "E_HEADER_NAME_INVALID"),
    ("non-ASCII name", {"X-Grüße": "x"}, "E_HEADER_NAME_INVALID"),
    ("empty name", {"": "x"}, "E_HEADER_NAME_INVALID"),
    ("name 100 bytes", {"X-" + "a" * 98: "x"}, None),
    ("name 101 bytes", {"X-" + "a" * 99: "x"}, "E_HEADER_NAME_INVALID"),
    ("same name twice, other case", {"X-A": "1", "x-a": "2"}, "E_HEADER_NAME_INVALID"),
    # values: length, emptiness, line breaks
    ("value 2048 bytes", {"X-Long": "a" * 2048}, None),
    ("value 2049 bytes", {"X-Long": "a" * 2049}, "E_HEADER_VALUE_TOO_LONG"),
    ("value 2048 bytes UTF-8", {"X-Long": "é" * 1024}, None),
    ("value 2050 bytes UTF-8", {"X-Long": "é" * 1025}, "E_HEADER_VALUE_TOO_LONG"),
    ("empty value", {"X-Empty": ""}, "E_HEADER_VALUE_INVALID"),
    ("blank value", {"X-Empty": "  \t"}, "E_HEADER_VALUE_INVALID"),
    ("CRLF injection", {"X-A": "a\r\nBcc: victim@example.com"}, "E_HEADER_VALUE_INVALID"),
    ("bare LF", {"X-A": "a\nb"}, "E_HEADER_VALUE_INVALID"),
    ("bare CR", {"X-A": "a\rb"}, "E_HEADER_VALUE_INVALID"),
    ("NUL", {"X-A": "a\0b"}, "E_HEADER_VALUE_INVALID"),
    ("tab inside value", {"X-A": "a\tb"}, None),
    ("value not a string", {"X-A": 5}, "E_HEADER_VALUE_INVALID"),
    # List-Unsubscribe
    ("LU https", {"List-Unsubscribe": HTTPS_LU}, None),
    ("LU mailto", {"List-Unsubscribe": "<mailto:unsub@example.com?subject=stop>"}, None),
    ("LU both", {"List-Unsubscribe": f"{HTTPS_LU}, <mailto:u@example.com>"}, None),
    ("LU http", {"List-Unsubscribe": "<http://example.com/u>"}, "E_HEADER_VALUE_INVALID"),
    ("LU no brackets", {"List-Unsubscribe": "https://example.com/u"},
     "E_HEADER_VALUE_INVALID"),
    ("LU other scheme", {"List-Unsubscribe": "<ftp://example.com/u>"},
     "E_HEADER_VALUE_INVALID"),
    ("LU https and http", {"List-Unsubscribe": f"{HTTPS_LU}, <http://example.com/u>"},
     "E_HEADER_VALUE_INVALID"),
    ("LU mailto without address", {"List-Unsubscribe": "<mailto:nobody>"},
     "E_HEADER_VALUE_INVALID"),
    # List-Unsubscribe-Post
    ("LUP with https LU", {"List-Unsubscribe": HTTPS_LU,
                           "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}, None),
    ("LUP wrong case", {"List-Unsubscribe": HTTPS_LU,
                        "List-Unsubscribe-Post": "list-unsubscribe=one-click"},
     "E_HEADER_VALUE_INVALID"),
    ("LUP other value", {"List-Unsubscribe": HTTPS_LU, "List-Unsubscribe-Post": "yes"},
     "E_HEADER_VALUE_INVALID"),
    ("LUP with mailto-only LU", {"List-Unsubscribe": "<mailto:u@example.com>",
                                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
     "E_HEADER_VALUE_INVALID"),
    ("LUP without LU", {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
     "E_HEADER_VALUE_INVALID"),
    # closed value sets
    ("Precedence list", {"Precedence": "List"}, None),
    ("Precedence other", {"Precedence": "first-class"}, "E_HEADER_VALUE_INVALID"),
    ("Auto-Submitted with parameter", {"Auto-Submitted": "auto-replied; owner=a@b.example"},
     None),
    ("Auto-Submitted other", {"Auto-Submitted": "yes"}, "E_HEADER_VALUE_INVALID"),
    ("Importance low", {"Importance": "low"}, None),
    ("Importance other", {"Importance": "urgent"}, "E_HEADER_VALUE_INVALID"),
    ("Sensitivity private", {"Sensitivity": "Private"}, None),
    ("Sensitivity other", {"Sensitivity": "secret"}, "E_HEADER_VALUE_INVALID"),
    # message-id and URI shaped values
    ("In-Reply-To not a msg-id", {"In-Reply-To": "original-message-id"},
     "E_HEADER_VALUE_INVALID"),
    ("References with junk", {"References": "<a@example.com> junk"},
     "E_HEADER_VALUE_INVALID"),
    ("Archived-At bare URL", {"Archived-At": "https://example.com/a"},
     "E_HEADER_VALUE_INVALID"),
    ("RRVS without date", {"Require-Recipient-Valid-Since": "user@example.org"},
     "E_HEADER_VALUE_INVALID"),
]


@pytest.mark.parametrize(("headers", "expected"), [(h, e) for _, h, e in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])
def test_header_rule(headers: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        result = validate_custom_headers(headers)
        assert len(result) == len(headers)
    else:
        assert code_of(validate_custom_headers, headers) == expected


def test_canonical_casing_and_order() -> None:
    result = validate_custom_headers({"x-b": "1", "content-LANGUAGE": "fr", "X-a": " 2 "})
    assert result == [("x-b", "1"), ("Content-Language", "fr"), ("X-a", "2")]


def test_error_names_the_header_field() -> None:
    with pytest.raises(MtaError) as info:
        validate_custom_headers({"Date": "now"})
    assert info.value.field == "headers.Date"
    assert info.value.message == "Header 'Date' is not allowed. It is auto-generated by the platform."


def _total(headers: dict[str, str]) -> int:
    return sum(len(n.encode()) + 2 + len(v.encode()) + 2 for n, v in headers.items())


def _x_headers_totalling(size: int) -> dict[str, str]:
    """X- headers whose payload, as the reference computes it, is exactly `size`."""
    headers: dict[str, str] = {}
    while _total(headers) + 2048 + 12 < size:
        headers[f"X-H{len(headers):04d}"] = "v" * 2048
    rest = size - _total(headers) - len("X-Hlast") - 4
    headers["X-Hlast"] = "w" * rest
    assert _total(headers) == size
    return headers


def test_total_payload_16k_accepted() -> None:
    assert len(validate_custom_headers(_x_headers_totalling(16 * 1024))) > 1


def test_total_payload_over_16k_refused() -> None:
    assert code_of(validate_custom_headers,
                   _x_headers_totalling(16 * 1024 + 1)) == "E_HEADERS_TOO_LARGE"


def test_total_counts_utf8_bytes() -> None:
    headers = _x_headers_totalling(16 * 1024)
    headers["X-Hlast"] = headers["X-Hlast"][:-1] + "é"  # same length, one byte more
    assert code_of(validate_custom_headers, headers) == "E_HEADERS_TOO_LARGE"


def test_twenty_allowlisted_headers_accepted_and_x_headers_do_not_count() -> None:
    headers = {k: v for k, v in VALID_VALUES.items()}
    headers.update({f"X-Extra-{i}": "1" for i in range(30)})
    assert len(validate_custom_headers(headers)) == 50


def test_twenty_one_allowlisted_headers_refused() -> None:
    # The allowlist has exactly 20 names and JSON keys are unique, so the 21st can only
    # come from a whole message, where a header may repeat.
    headers = [("Keywords", f"k{i}") for i in range(21)]
    assert code_of(validate_custom_headers, headers, mime=True) == "E_HEADERS_TOO_MANY"
    assert len(validate_custom_headers(headers[:20], mime=True)) == 20


def test_header_count_limit_is_a_parameter() -> None:
    limits = HeaderLimits(max_custom_headers=1)
    assert validate_custom_headers({"Keywords": "a", "X-A": "b"}, limits)
    assert code_of(validate_custom_headers, {"Keywords": "a", "Comments": "b"},
                   limits) == "E_HEADERS_TOO_MANY"


# --- the same allowlist for a submitted whole message --------------------------------

RAW = (
    b"From: Sender <s@example.com>\r\nTo: r@example.org\r\nCc: c@example.org\r\n"
    b"Bcc: hidden@example.org\r\nSubject: Hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <x@client.example>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n"
    b"Received: from client by relay; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s; b=abc\r\n"
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.com; s=s; b=abc\r\n"
    b"List-Unsubscribe: <https://example.com/u?id=1>,\r\n <mailto:u@example.com>\r\n"
    b"x-mailer: test\r\n\r\nbody\r\n"
)


def _raw_headers(raw: bytes) -> list[tuple[str, str]]:
    return list(BytesHeaderParser(policy=compat32).parsebytes(raw).items())


def test_whole_message_keeps_its_own_headers_and_checks_custom_ones() -> None:
    result = validate_custom_headers(_raw_headers(RAW), mime=True)
    assert result == [
        ("List-Unsubscribe", "<https://example.com/u?id=1>, <mailto:u@example.com>"),
        ("x-mailer", "test"),
    ]


@pytest.mark.parametrize(("line", "expected"), [
    (b"User-Agent: Mutt\r\n", "E_HEADER_NOT_ALLOWED"),
    (b"Feedback-ID: a:b:c\r\n", "E_HEADER_NOT_ALLOWED"),
    (b"CFBL-Address: fbl@example.com\r\n", "E_HEADER_NOT_ALLOWED"),
    (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", None),
    (b"List-Unsubscribe: <http://example.com/u>\r\n", "E_HEADER_VALUE_INVALID"),
    (b"X-Bad!Name: 1\r\n", "E_HEADER_NAME_INVALID"),
    (b"X-Long: " + b"a" * 2049 + b"\r\n", "E_HEADER_VALUE_TOO_LONG"),
])
def test_whole_message_header_rules(line: bytes, expected: str | None) -> None:
    raw = RAW
    if line.startswith(b"List-Unsubscribe:"):
        raw = raw.replace(b"List-Unsubscribe: <https://example.com/u?id=1>,\r\n"
                          b" <mailto:u@example.com>\r\n", b"")
    headers = _raw_headers(line + raw)
    assert headers[0][0] == line.split(b":")[0].decode()  # the line parsed as a header
    if expected is None:
        validate_custom_headers(headers, mime=True)
    else:
        assert code_of(validate_custom_headers, headers, mime=True) == expected


# --- limits -------------------------------------------------------------------------

def _addresses(n: int, domain: str = "example.org") -> list[str]:
    return [f"user{i}@{domain}" for i in range(n)]


def test_fifty_recipients_across_to_cc_bcc_accepted() -> None:
    v = send(to=_addresses(20), cc=_addresses(20, "example.net"),
             bcc=_addresses(10, "example.com"))
    assert len(v.recipients) == 50


def test_fifty_one_recipients_refused() -> None:
    assert code_of(send, to=_addresses(20), cc=_addresses(20, "example.net"),
                   bcc=_addresses(11, "example.com")) == "E_TOO_MANY_RECIPIENTS"


def test_recipient_limit_is_a_parameter() -> None:
    request = parse_send_request(body(to=_addresses(3)))
    assert code_of(validate_send, request, SendLimits(max_recipients=2)) == \
        "E_TOO_MANY_RECIPIENTS"


def _attachments(n: int) -> list[dict[str, str]]:
    return [{"content": b64(b"x"), "filename": f"f{i}.bin", "type": "application/octet-stream",
             "disposition": "attachment"} for i in range(n)]


def test_thirty_two_attachments_accepted() -> None:
    assert len(send(attachments=_attachments(32)).attachments) == 32


def test_thirty_three_attachments_refused() -> None:
    assert code_of(send, attachments=_attachments(33)) == "E_TOO_MANY_ATTACHMENTS"


def _sized(size: int, to: list[str]) -> SendRequest:
    return SendRequest(sender=Address("s@example.com"), to=tuple(Address(a) for a in to),
                       subject="s", text="t",
                       attachments=(Attachment(b"\0" * (size - 1), "a.bin",
                                               "application/octet-stream"),))


@pytest.mark.parametrize(("size", "verified", "expected"), [
    (5 * MiB, False, None),
    (5 * MiB + 1, False, "E_CONTENT_TOO_LARGE"),
    (5 * MiB + 1, True, None),
    (25 * MiB, True, None),
    (25 * MiB + 1, True, "E_CONTENT_TOO_LARGE"),
])
def test_message_size(size: int, verified: bool, expected: str | None) -> None:
    to = ["dest@example.org", "Other@Example.org"]
    request = _sized(size, to)
    kw = {"verified_destinations": {"dest@example.org", "other@example.org"}} if verified \
        else {}
    if expected is None:
        v = validate_send(request, **kw)
        assert v.size_limit == (25 * MiB if verified else 5 * MiB)
    else:
        assert code_of(validate_send, request, **kw) == expected


def test_one_unverified_recipient_keeps_the_5_mib_limit() -> None:
    request = _sized(5 * MiB + 1, ["dest@example.org", "stranger@example.net"])
    assert code_of(validate_send, request,
                   verified_destinations={"dest@example.org"}) == "E_CONTENT_TOO_LARGE"


def test_check_message_size() -> None:
    check_message_size(5 * MiB, 5 * MiB)
    assert code_of(check_message_size, 5 * MiB + 1, 5 * MiB) == "E_CONTENT_TOO_LARGE"


@pytest.mark.parametrize(("subject", "expected"), [
    ("s" * 998, None),
    ("ü" * 998, None),  # characters, not bytes
    ("", None),
    ("s" * 999, "E_VALIDATION_ERROR"),
    ("line\r\nBcc: x@example.com", "E_VALIDATION_ERROR"),
])
def test_subject(subject: str, expected: str | None) -> None:
    if expected is None:
        assert send(subject=subject).subject == subject
    else:
        assert code_of(send, subject=subject) == expected


@pytest.mark.parametrize(("over", "expected"), [
    ({"text": "t", "html": ...}, None),
    ({"text": ..., "html": "<p>h</p>"}, None),
    ({"text": "t", "html": "<p>h</p>"}, None),
    ({"text": ..., "html": ...}, "E_FIELD_MISSING"),
    ({"text": "", "html": ""}, "E_FIELD_MISSING"),
    ({"from": ...}, "E_FIELD_MISSING"),
    ({"subject": ...}, "E_FIELD_MISSING"),
    ({"to": ...}, "E_FIELD_MISSING"),
    ({"to": ..., "bcc": "only@example.org"}, None),  # to is optional with cc or bcc
    ({"to": []}, "E_FIELD_MISSING"),
])
def test_required_fields(over: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        send(**over)
    else:
        assert code_of(send, **over) == expected


# --- addresses ----------------------------------------------------------------------

@pytest.mark.parametrize(("address", "normalized"), [
    ("a@example.com", "a@example.com"),
    ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
    ('"john doe"@example.com', '"john doe"@example.com'),
    ("user@bücher.example", "user@xn--bcher-kva.example"),
    ("User@EXAMPLE.COM", "User@example.com"),
    ("a@example.com.", "a@example.com"),
    # Internationalised local parts (RFC 6532), kept as given; sent with SMTPUTF8.
    ("ü@example.com", "ü@example.com"),
    ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"),
    ('"jö rg"@example.com', '"jö rg"@example.com'),
])
def test_address_accepted(address: str, normalized: str) -> None:
    assert normalize_address(address) == normalized


@pytest.mark.parametrize("address", [
    "plain", "a@", "@example.com", "a@@example.com", "a..b@example.com", ".a@example.com",
    "a@localhost", "a@-bad.example", "a@exa mple.com", "a@[127.0.0.1]", "ü\u200b@example.com",
    "a" * 65 + "@example.com", "a@example.123", "a@" + "l" * 64 + ".example",
    "a b@example.com", "a@example..com", "ü\u00a0@example.com", "ö" * 33 + "@example.com",
])
def test_address_refused(address: str) -> None:
    assert code_of(normalize_address, address) == "E_VALIDATION_ERROR"


def test_bad_recipient_names_its_position() -> None:
    with pytest.raises(MtaError) as info:
        send(to=["ok@example.org"], cc=["ok2@example.org", "broken"])
    assert (info.value.code, info.value.field) == ("E_VALIDATION_ERROR", "cc[1]")


def test_bad_sender_and_reply_to() -> None:
    assert code_of(send, **{"from": "nobody"}) == "E_VALIDATION_ERROR"
    assert code_of(send, reply_to="nobody") == "E_VALIDATION_ERROR"


def test_display_name_with_line_break_refused() -> None:
    assert code_of(send, **{"from": {"address": "a@example.com",
                                      "name": "A\r\nBcc: x@example.com"}}) == \
        "E_VALIDATION_ERROR"


# --- request parsing ----------------------------------------------------------------

def test_address_forms() -> None:
    v = send(**{"from": {"address": "support@example.com", "name": "Support Team"}},
             to=["plain@example.org", {"address": "jane@example.org", "name": "Jane Doe"},
                 {"email": "w@example.org", "name": "Workers Style"},
                 '"Doe, John" <john@example.org>'],
             replyTo={"email": "help@example.com"})
    assert v.sender == Address("support@example.com", "Support Team")
    assert [(a.address, a.name) for a in v.to] == [
        ("plain@example.org", None), ("jane@example.org", "Jane Doe"),
        ("w@example.org", "Workers Style"), ("john@example.org", "Doe, John")]
    assert v.reply_to == Address("help@example.com")


def test_null_means_absent() -> None:
    v = send(cc=None, bcc=None, html=None, headers=None, attachments=None, reply_to=None)
    assert v.cc == () and v.html is None and v.headers == ()


def test_envelope_recipients_are_unique_and_include_bcc() -> None:
    v = send(to=["a@example.org", "A@EXAMPLE.ORG"], cc="c@example.org",
             bcc=["b@example.org", "c@example.org"])
    assert v.recipients == ("a@example.org", "c@example.org", "b@example.org")


@pytest.mark.parametrize(("over", "field"), [
    ({"to": 5}, "to"),
    ({"to": ["ok@example.org", 5]}, "to[1]"),
    ({"from": {"name": "no address"}}, "from"),
    ({"subject": 5}, "subject"),
    ({"headers": ["X-A: 1"]}, "headers"),
    ({"attachements": []}, "attachements"),
    ({"attachments": {"content": "eA=="}}, "attachments"),
    ({"attachments": [{"content": "not base64!", "filename": "a", "type": "text/plain"}]},
     "attachments[0].content"),
    ({"attachments": [{"content": "eA==", "filename": "a", "type": "text/plain",
                       "disposition": "bogus"}]}, "attachments[0].disposition"),
    ({"attachments": [{"content": "eA==", "filename": "a", "type": "pdf"}]},
     "attachments[0].type"),
    ({"attachments": [{"content": "eA==", "filename": "a", "type": "multipart/mixed"}]},
     "attachments[0].type"),
    ({"attachments": [{"content": "eA==", "filename": "a\r\nb", "type": "text/plain"}]},
     "attachments[0].filename"),
    ({"attachments": [{"content": "eA==", "filename": "a", "type": "image/png",
                       "disposition": "inline", "content_id": "x y"}]},
     "attachments[0].content_id"),
    ({"attachments": [{"content": "eA==", "filename": "a", "type": "image/png",
                       "disposition": "inline", "content_id": "logo"},
                      {"content": "eA==", "filename": "b", "type": "image/png",
                       "disposition": "inline", "content_id": "<LOGO>"}]},
     "attachments[1].content_id"),
])
def test_malformed_request(over: dict[str, Any], field: str) -> None:
    with pytest.raises(MtaError) as info:
        send(**over)
    assert (info.value.code, info.value.field) == ("E_VALIDATION_ERROR", field)


@pytest.mark.parametrize(("attachment", "field"), [
    ({"filename": "a", "type": "text/plain"}, "attachments[0].content"),
    ({"content": "eA==", "type": "text/plain"}, "attachments[0].filename"),
    ({"content": "eA==", "filename": "a"}, "attachments[0].type"),
    ({"content": "eA==", "filename": "a", "type": "image/png", "disposition": "inline"},
     "attachments[0].content_id"),
])
def test_attachment_missing_field(attachment: dict[str, str], field: str) -> None:
    with pytest.raises(MtaError) as info:
        send(attachments=[attachment])
    assert (info.value.code, info.value.field) == ("E_FIELD_MISSING", field)


def test_attachment_parsed() -> None:
    v = send(attachments=[
        {"content": b64(b"%PDF-1.4"), "filename": "invoice.pdf", "type": "application/pdf",
         "disposition": "attachment"},
        {"content": b64(b"\x89PNG"), "filename": "logo.png", "type": "image/png",
         "disposition": "inline", "contentId": "<logo>"}])
    assert v.attachments == (
        Attachment(b"%PDF-1.4", "invoice.pdf", "application/pdf", "attachment", None),
        Attachment(b"\x89PNG", "logo.png", "image/png", "inline", "logo"))


def test_body_not_an_object() -> None:
    assert code_of(parse_send_request, ["to"]) == "E_VALIDATION_ERROR"


def test_headers_go_through_the_allowlist() -> None:
    assert code_of(send, headers={"From": "x@example.com"}) == "E_HEADER_USE_API_FIELD"
    assert send(headers={"list-id": "<l.example.com>"}).headers == (
        ("List-Id", "<l.example.com>"),)
