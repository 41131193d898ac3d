"""The composed message, parsed back with Python's email package as a receiver would."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

import pytest

from mta.errors import MtaError
from mta.sending.compose import choose_transfer_encoding, compose_message, fold_header
from mta.sending.validate import check_message_size, parse_send_request, validate_send

NOW = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"


def compose(**over: Any) -> tuple[str, bytes, EmailMessage]:
    data: dict[str, Any] = {"from": "welcome@example.com", "to": "user@example.org",
                            "subject": "Welcome", "text": "Thanks for signing up."}
    data.update({k: v for k, v in over.items() if k not in ("kw",)})
    validated = validate_send(parse_send_request(data))
    message_id, raw = compose_message(validated, "example.com", now=NOW, **over.get("kw", {}))
    return message_id, raw, message_from_bytes(raw, policy=default)  # type: ignore[return-value]


def tree(part: EmailMessage) -> Any:
    if part.is_multipart():
        return (part.get_content_subtype(), [tree(p) for p in part.iter_parts()])
    return part.get_content_type()


def text_of(part: EmailMessage) -> str:
    """Decoded text with the wire's CRLF line ends read back as newlines."""
    return part.get_content().replace("\r\n", "\n")


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_text_only_is_a_single_part() -> None:
    message_id, raw, msg = compose()
    assert tree(msg) == "text/plain"
    assert text_of(msg) == "Thanks for signing up.\n"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert msg["MIME-Version"] == "1.0"
    assert msg["From"] == "welcome@example.com" and msg["To"] == "user@example.org"
    assert msg["Subject"] == "Welcome"
    assert msg["Message-ID"] == message_id
    assert msg["Date"].datetime == NOW


def test_html_only_is_a_single_part() -> None:
    _, _, msg = compose(text=None, html="<h1>Welcome!</h1>")
    assert tree(msg) == "text/html"


def test_text_and_html_are_alternatives() -> None:
    _, _, msg = compose(html="<h1>Welcome!</h1><p>Thanks for signing up.</p>")
    assert tree(msg) == ("alternative", ["text/plain", "text/html"])
    text, html = msg.iter_parts()
    assert text_of(html) == "<h1>Welcome!</h1><p>Thanks for signing up.</p>\n"


def test_inline_image_and_pdf_attachment_tree() -> None:
    _, raw, msg = compose(
        html='<p>Report</p><img src="cid:company-logo">',
        attachments=[
            {"content": base64.b64encode(PDF).decode(), "filename": "invoice-12345.pdf",
             "type": "application/pdf", "disposition": "attachment"},
            {"content": base64.b64encode(PNG).decode(), "filename": "logo.png",
             "type": "image/png", "disposition": "inline", "content_id": "company-logo"},
        ])
    assert tree(msg) == ("mixed", [
        ("related", [("alternative", ["text/plain", "text/html"]), "image/png"]),
        "application/pdf"])
    related, pdf = msg.iter_parts()
    _, image = related.iter_parts()
    assert image["Content-ID"] == "<company-logo>"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "logo.png"
    assert image.get_content() == PNG
    assert image["Content-Transfer-Encoding"] == "base64"
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_filename() == "invoice-12345.pdf"
    assert pdf.get_content() == PDF
    assert related.get_content_type() == "multipart/related"


def test_attachment_without_inline_parts_has_no_related_level() -> None:
    _, _, msg = compose(attachments=[
        {"content": base64.b64encode(PDF).decode(), "filename": "a.pdf",
         "type": "application/pdf"}])
    assert tree(msg) == ("mixed", ["text/plain", "application/pdf"])


def test_non_ascii_subject_names_and_filename_round_trip() -> None:
    subject = "Grüße aus Köln — Ihre Rechnung Nr. 12345 für März, bitte prüfen Sie diese"
    _, raw, msg = compose(
        **{"from": {"address": "billing@example.com", "name": "Jörg Müller, Buchhaltung"}},
        to=[{"address": "jane@example.org", "name": "Zoë Ångström"}],
        reply_to={"address": "help@example.com", "name": "Hilfe & Support"},
        subject=subject,
        attachments=[{"content": base64.b64encode(PDF).decode(), "filename": "résumé.pdf",
                      "type": "application/pdf"}])
    assert raw.isascii()
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].display_name == "Jörg Müller, Buchhaltung"
    assert msg["From"].addresses[0].addr_spec == "billing@example.com"
    assert msg["To"].addresses[0].display_name == "Zoë Ångström"
    assert msg["Reply-To"].addresses[0].display_name == "Hilfe & Support"
    assert b"=?utf-8?" in raw  # RFC 2047 encoded words
    _, pdf = msg.iter_parts()
    assert pdf.get_filename() == "résumé.pdf"


def test_idn_domains_are_sent_as_a_labels() -> None:
    message_id, raw, msg = compose(to="user@bücher.example")
    assert msg["To"].addresses[0].domain == "xn--bcher-kva.example"


def test_bcc_never_in_headers() -> None:
    _, raw, msg = compose(cc="c@example.org", bcc=["hidden@example.net", "h2@example.net"])
    assert "Bcc" not in msg
    assert b"hidden@example.net" not in raw and b"h2@example.net" not in raw
    assert msg["Cc"] == "c@example.org"


def test_lines_and_folding() -> None:
    long_text = "word " * 400 + "\n" + "x" * 1500 + "\n"
    _, raw, msg = compose(
        subject="A rather long subject line that goes on and on well past the 78 column "
                "mark to force folding",
        to=[f"recipient-number-{i}@example.org" for i in range(8)],
        text=long_text,
        headers={
            "List-Unsubscribe": "<https://example.com/unsubscribe?id=" + "a" * 100
                                + ">, <mailto:unsubscribe@example.com?subject=stop>",
            "References": " ".join(f"<message-{i}@example.com>" for i in range(8)),
            "X-Campaign-ID": "weekly-digest-2026-03",
        })
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only, no bare LF
    headers = header_lines(raw)
    long_lines = [line for line in headers if len(line) > 78]
    # Only the unbreakable URI may exceed 78 columns; it was not MIME-encoded.
    assert long_lines == [b"List-Unsubscribe: <https://example.com/unsubscribe?id="
                          + b"a" * 100 + b">,"]
    assert msg["List-Unsubscribe"] == ("<https://example.com/unsubscribe?id=" + "a" * 100
                                       + ">, <mailto:unsubscribe@example.com?subject=stop>")
    assert msg["References"] == " ".join(f"<message-{i}@example.com>" for i in range(8))
    assert len(msg["To"].addresses) == 8
    assert text_of(msg) == long_text
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"  # the 1500-char line


def test_custom_headers_canonical_casing_and_non_ascii_x_value() -> None:
    _, raw, msg = compose(headers={"list-id": "Digest <digest.example.com>",
                                   "x-campaign": "Grüße"})
    assert b"\r\nList-Id: Digest <digest.example.com>\r\n" in raw
    assert b"\r\nx-campaign: =?utf-8?" in raw
    assert msg["X-Campaign"] == "Grüße"


def test_message_id_at_the_sending_domain() -> None:
    message_id, _, msg = compose()
    assert re.fullmatch(r"<[A-Za-z0-9]{36}@example\.com>", message_id)
    assert msg["Message-ID"] == message_id
    assert compose()[0] != message_id


def test_given_message_id_is_kept() -> None:
    message_id, _, msg = compose(kw={"message_id": "abc123@example.com"})
    assert message_id == "<abc123@example.com>" == msg["Message-ID"]


def test_date_is_utc() -> None:
    validated = validate_send(parse_send_request(
        {"from": "a@example.com", "to": "b@example.org", "subject": "s", "text": "t"}))
    cet = timezone(timedelta(hours=1))
    _, raw = compose_message(validated, "example.com", now=datetime(2026, 3, 2, 10, 30,
                                                                    tzinfo=cet))
    assert b"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\n" in raw
    with pytest.raises(ValueError):
        compose_message(validated, "example.com", now=datetime(2026, 3, 2))


def test_feedback_and_cfbl_headers() -> None:
    _, raw, msg = compose(kw={"feedback_id": "campaign1:cust42:newsletter:acct7",
                              "cfbl_address": "fbl@example.com"})
    assert msg["Feedback-ID"] == "campaign1:cust42:newsletter:acct7"
    assert msg["CFBL-Address"] == "fbl@example.com; report=arf"
    assert msg["CFBL-Feedback-ID"] == "campaign1:cust42:newsletter:acct7"


def test_no_feedback_headers_unless_asked() -> None:
    _, _, msg = compose()
    assert "Feedback-ID" not in msg and "CFBL-Address" not in msg


@pytest.mark.parametrize(("data", "text", "expected"), [
    (b"plain ascii\nlines", True, "7bit"),
    (b"a" * 998, True, "7bit"),
    (b"a" * 999, True, "quoted-printable"),
    ("mostly ascii with one é".encode(), True, "quoted-printable"),
    ("Привет, как дела? Всё хорошо.".encode(), True, "base64"),
    (b"ascii but binary", False, "base64"),
])
def test_transfer_encoding_by_content(data: bytes, text: bool, expected: str) -> None:
    assert choose_transfer_encoding(data, text=text) == expected


def test_cyrillic_body_round_trips_as_base64() -> None:
    text = "Привет, как дела? Всё хорошо.\n"
    _, raw, msg = compose(text=text)
    assert msg["Content-Transfer-Encoding"] == "base64"
    assert text_of(msg) == text


def test_text_attachment_stays_text() -> None:
    csv = b"name,amount\nJ\xc3\xb6rg,12\n"
    _, _, msg = compose(attachments=[{"content": base64.b64encode(csv).decode(),
                                      "filename": "report.csv", "type": "text/csv"}])
    _, part = msg.iter_parts()
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert text_of(part) == csv.decode()
    assert part.get_filename() == "report.csv"


def test_fold_header() -> None:
    folded = fold_header("X-A", " ".join(["word"] * 30))
    lines = folded.split("\r\n")
    assert folded.endswith("\r\n") and all(len(x) <= 78 for x in lines)
    assert all(x.startswith(" ") for x in lines[1:-1])
    assert folded.replace("\r\n ", " ").rstrip("\r\n") == "X-A: " + " ".join(["word"] * 30)


def test_composed_size_is_checked_against_the_limit() -> None:
    # 4 MiB of attachment passes the early check but is over 5 MiB once base64-encoded.
    blob = bytes(range(256)) * (4 * 1024 * 4)
    data = {"from": "a@example.com", "to": "b@example.org", "subject": "s", "text": "t",
            "attachments": [{"content": base64.b64encode(blob).decode(), "filename": "b.bin",
                             "type": "application/octet-stream"}]}
    validated = validate_send(parse_send_request(data))
    _, raw = compose_message(validated, "example.com", now=NOW)
    assert len(raw) > 5 * 1024 * 1024
    with pytest.raises(MtaError) as info:
        check_message_size(len(raw), validated.size_limit)
    assert info.value.code == "E_CONTENT_TOO_LARGE"


def test_plain_headers_are_written_as_the_email_package_writes_them():
    """The fast path for plain Subject and address headers gives the email package's
    bytes; anything it would quote, encode or fold goes through the package."""
    from email.message import MIMEPart

    from mta.sending.compose import POLICY, _addresses, _header_address, _plain
    from mta.sending.validate import Address as A

    def written(name, value):
        part = MIMEPart(policy=POLICY)
        part[name] = value
        return part.as_bytes(policy=POLICY)

    subjects = ["Your weekly report", "x", "a  b", " lead", "trail ", "=?utf-8?q?x?=",
                "tab\there", "Ünïcode", "semi; colon, comma (paren) \"quote\"",
                "word " * 20, "w" * 90, "50% off! #deal $5 & more ~ ^ | {x}"]
    for subject in subjects:
        fast = _plain("Subject", subject) or subject
        assert written("Subject", fast) == written("Subject", subject), subject
    lists = [[A("bob@example.org")], [A("bob@example.org", "Bob")],
             [A("news@example.com", "Example News"), A("x@y.example", "O'Brien")],
             [A("a@b.example", "J. Smith")], [A("a@b.example", "Smith, John")],
             [A("a@b.example", "Zoë")], [A("a@b.example", "a  b")],
             [A("first.last+tag@sub.example.com", "A-Z_09")],
             [A(f"user{i}@example.com", f"User {i}") for i in range(8)],
             [A("a@b.example", "=?utf-8?q?x?=")], [A("a@b.example", "<x>")]]
    for addresses in lists:
        objects = [_header_address(a) for a in addresses]
        slow = objects[0] if len(objects) == 1 else objects
        assert written("To", _addresses("To", addresses)) == written("To", slow), addresses
