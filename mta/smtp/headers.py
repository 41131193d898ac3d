"""Header fields the MX listener adds to, or reads from, an accepted message.

- `received_field()`: our Received trace field (RFC 5321 §4.4), with the client's
  HELO, PTR and IP, "with ESMTP"/"ESMTPS" (RFC 3848) and the TLS parameters;
- `auth_results_field()`: our Authentication-Results field (RFC 8601);
- `header_value()`: the first value of a field in the header section, unfolded and
  RFC 2047-decoded (Subject and Message-ID for the activity log).
Fields are prepended: Received on top, then Authentication-Results, then the message
as received (with forged Authentication-Results in our name already removed).
"""

from __future__ import annotations

import email.header
import email.utils
import re

__all__ = ["auth_results_field", "header_value", "prepend", "received_field"]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f()\\]")


def _clean(text: str, limit: int = 255) -> str:
    """A client-supplied value made safe for a comment or a token: no controls, no
    parentheses (they would end our comment), bounded length."""
    return _UNSAFE.sub("?", text)[:limit]


def received_field(*, helo: str | None, ptr: str | None, ip: str, hostname: str,
                   queue_id: str, tls: dict | None, recipient: str | None,
                   when: float | None = None, utf8: bool = False) -> bytes:
    addr = f"IPv6:{ip}" if ":" in ip else ip
    from_part = f"from {_clean(helo or 'unknown')} ({_clean(ptr or 'unknown')} [{addr}])"
    # RFC 3848, and RFC 6531 §3.7.3 for a transaction with SMTPUTF8.
    with_part = ("UTF8SMTPS" if tls else "UTF8SMTP") if utf8 else ("ESMTPS" if tls else "ESMTP")
    lines = [f"Received: {from_part}"]
    if tls:
        lines.append(f"\t(using {_clean(str(tls.get('version', '')))} with cipher "
                     f"{_clean(str(tls.get('cipher', '')))})")
    # The queue id of the 250 reply, as Postfix does: `mta queue show ID` finds it.
    lines.append(f"\tby {hostname} (mta) with {with_part} id {queue_id}")
    stamp = email.utils.formatdate(when, localtime=False)
    if recipient:  # only for one recipient: never disclose the others (RFC 5321 §7.2)
        lines.append(f"\tfor <{_clean(recipient, 320)}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def auth_results_field(value: str) -> bytes:
    return f"Authentication-Results: {value}\r\n".encode("utf-8", "replace")


def prepend(raw: bytes, *fields: bytes) -> bytes:
    return b"".join(fields) + raw


def header_value(raw: bytes, name: str) -> str | None:
    end = raw.find(b"\r\n\r\n")
    section = raw if end < 0 else raw[:end + 2]
    wanted = name.lower().encode()
    current: list[bytes] | None = None
    for line in section.split(b"\r\n"):
        if current is not None:
            if line[:1] in (b" ", b"\t"):
                current.append(line)
                continue
            break
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == wanted:
            current = [value]
    if current is None:
        return None
    text = b" ".join(p.strip() for p in current).decode("utf-8", "replace").strip()
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return text
