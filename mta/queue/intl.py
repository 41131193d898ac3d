"""When a message needs SMTPUTF8 (RFC 6531) from the next hop.

A message needs it when an envelope address is not ASCII (an internationalised local
part: domains are sent as A-labels) or when its header section holds UTF-8 (RFC 6532:
an address or text in a header field). Without SMTPUTF8 at the next hop such a message
is not downgraded (RFC 6531 §3.7.4.1 permits no silent change of addresses): it fails
with 5.6.7 and the sender gets a DSN.

A header section with 8-bit octets that are not UTF-8 is the legacy of senders that
predate RFC 6532 (raw Latin-1 in a Subject); it never asked for SMTPUTF8 and goes on as
before, as 8-bit data.

A message with a `message/global` or `message/global-headers` part holding UTF-8 (an
internationalised message or its header section returned in a DSN, RFC 6533 §6) needs it
too, even when its own header section is ASCII.
"""

from __future__ import annotations

import re

from mta.queue.outcome import Reply

__all__ = ["NO_SMTPUTF8_REPLY", "needs_smtputf8", "utf8_headers"]

# RFC 6531 §3.7.4.1 / RFC 3463: 5.6.7, "non-ASCII addresses not permitted for that
# recipient or sender".
NO_SMTPUTF8_REPLY = Reply(553, "5.6.7", "The message needs SMTPUTF8 (internationalised "
                          "address or header) and the next hop does not offer it")


_GLOBAL_PART = re.compile(rb"^Content-Type:[ \t]*message/global(?:-headers)?\b",
                          re.IGNORECASE | re.MULTILINE)


def needs_smtputf8(envelope_from: str, recipients: list[str], raw: bytes) -> bool:
    if not envelope_from.isascii() or not all(r.isascii() for r in recipients):
        return True
    if utf8_headers(raw):
        return True
    end = raw.find(b"\r\n\r\n")
    body = b"" if end < 0 else raw[end + 4:]
    return not body.isascii() and _GLOBAL_PART.search(body) is not None


def utf8_headers(raw: bytes) -> bool:
    """Whether the header section of `raw` holds UTF-8 (RFC 6532), not merely 8 bits."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[:end]
    if head.isascii():
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
