"""When a message needs SMTPUTF8 from the next hop (`mta/queue/intl.py`)."""

from __future__ import annotations

from mta.queue.intl import needs_smtputf8

ASCII = b"From: a@x.test\r\nSubject: hi\r\n\r\n"


def test_ascii_envelope_and_headers_need_nothing_whatever_the_body() -> None:
    assert not needs_smtputf8("a@x.test", ["b@y.test"], ASCII + "Grüße\r\n".encode())


def test_a_utf8_envelope_address_needs_it() -> None:
    assert needs_smtputf8("josé@x.test", ["b@y.test"], ASCII)
    assert needs_smtputf8("a@x.test", ["b@y.test", "jörg@y.test"], ASCII)


def test_utf8_in_the_header_section_needs_it() -> None:
    raw = "From: a@x.test\r\nSubject: ¡hola!\r\n\r\nbody\r\n".encode()
    assert needs_smtputf8("a@x.test", ["b@y.test"], raw)


def test_legacy_8bit_headers_that_are_not_utf8_do_not() -> None:
    # Raw Latin-1 from a sender before RFC 6532: it never asked for SMTPUTF8.
    raw = "From: a@x.test\r\nSubject: Grüße\r\n\r\nbody\r\n".encode("latin-1")
    assert not needs_smtputf8("a@x.test", ["b@y.test"], raw)


def test_a_message_without_a_body_separator_is_all_header() -> None:
    assert needs_smtputf8("a@x.test", ["b@y.test"], "Subject: ¡hola!\r\n".encode())


def test_a_message_global_part_with_utf8_needs_it() -> None:
    # RFC 6533 §6: an internationalised message returned inside a DSN.
    head = b"From: a@x.test\r\nContent-Type: multipart/report; boundary=b\r\n\r\n"
    part = b"--b\r\nContent-Type: message/global\r\n\r\n" + "Subject: Grüße\r\n".encode()
    assert needs_smtputf8("", ["b@y.test"], head + part + b"\r\n--b--\r\n")
    ascii_part = part.replace("Grüße".encode(), b"Gruesse")
    assert not needs_smtputf8("", ["b@y.test"], head + ascii_part + b"\r\n--b--\r\n")
    # 8-bit text elsewhere (a Latin-1 body) is not a reason.
    other = b"--b\r\nContent-Type: text/plain\r\n\r\n" + "Grüße".encode("latin-1")
    assert not needs_smtputf8("", ["b@y.test"], head + other + b"\r\n--b--\r\n")
