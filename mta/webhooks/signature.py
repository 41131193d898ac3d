"""The signature of a webhook POST: HMAC-SHA256 over the timestamp and the body.

A receiver recomputes `hex(HMAC-SHA256(secret, f"{timestamp}.".encode() + body))` with
the endpoint's secret (the whole `whsec_...` string as UTF-8), compares it in constant
time with the `v1=` value of the signature header, and refuses a timestamp further than
REPLAY_WINDOW from its clock, so a captured request cannot be replayed later. Every
retry is signed afresh with its own timestamp; the event id stays the same, so receivers
drop duplicates by it (delivery is at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

__all__ = ["EVENT_ID_HEADER", "EVENT_TYPE_HEADER", "REPLAY_WINDOW", "SIGNATURE_HEADER",
           "TIMESTAMP_HEADER", "new_secret", "sign", "signed_headers", "verify"]

SIGNATURE_HEADER = "Mta-Signature"
TIMESTAMP_HEADER = "Mta-Timestamp"
EVENT_ID_HEADER = "Mta-Event-Id"
EVENT_TYPE_HEADER = "Mta-Event-Type"
REPLAY_WINDOW = 300  # seconds either side of the receiver's clock
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signed_headers(secret: str, body: bytes, event_id: str, event_type: str,
                   now: float | None = None) -> dict[str, str]:
    ts = int(now if now is not None else time.time())
    return {"Content-Type": "application/json", TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(secret, ts, body), EVENT_ID_HEADER: event_id,
            EVENT_TYPE_HEADER: event_type}


def verify(secret: str, headers, body: bytes, now: float | None = None,
           window: int = REPLAY_WINDOW) -> bool:
    """What a receiver does (`headers`: any case-insensitive mapping, e.g. httpx's or
    Starlette's): the signature matches and the timestamp is within `window`."""
    try:
        ts = int(headers[TIMESTAMP_HEADER])
        given = str(headers[SIGNATURE_HEADER])
    except (KeyError, TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > window:
        return False
    expected = sign(secret, ts, body).encode()
    # As bytes: compare_digest raises TypeError for a str with non-ASCII characters,
    # which a forged header may carry; that is a mismatch, not an error.
    return any(hmac.compare_digest(expected, part.strip().encode("utf-8", "surrogateescape"))
               for part in given.split(","))
