"""The receiver's check of a webhook POST (mta.webhooks.signature.verify): a request it
cannot read is refused (False), never an exception in the receiver."""

from __future__ import annotations

from mta.webhooks.signature import SIGNATURE_HEADER, signed_headers, verify

SECRET = "whsec_test"
BODY = b'{"id":"1","type":"sent"}'


def test_a_signed_request_verifies_and_a_changed_one_does_not():
    headers = signed_headers(SECRET, BODY, "1", "sent", now=1_000_000)
    assert verify(SECRET, headers, BODY, now=1_000_000)
    assert not verify(SECRET, headers, BODY + b" ", now=1_000_000)
    assert not verify(SECRET, headers, BODY, now=1_000_000 + 301)  # the replay window


def test_a_signature_header_with_non_ascii_characters_is_refused_not_raised():
    # Starlette and most servers hand over header values decoded as Latin-1.
    headers = signed_headers(SECRET, BODY, "1", "sent", now=1_000_000)
    good = headers[SIGNATURE_HEADER]
    assert not verify(SECRET, {**headers, SIGNATURE_HEADER: "v1=\xe9"}, BODY, now=1_000_000)
    # One readable signature among several still counts (secret rotation).
    assert verify(SECRET, {**headers, SIGNATURE_HEADER: f"v1=\xff,{good}"}, BODY,
                  now=1_000_000)
