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
