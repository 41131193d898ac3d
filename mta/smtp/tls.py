"""TLS for the SMTP listeners: one server context built from the listener settings.

TLS 1.2 is the minimum (RFC 8996 retires 1.0/1.1; MISSION R1); ciphers are OpenSSL's
secure defaults; compression and renegotiation are off. Client certificates are not
requested: MX peers authenticate through SPF/DKIM/DMARC, not through TLS.
"""

from __future__ import annotations

import ssl

from mta.config import Listener

__all__ = ["server_context"]


def server_context(listener: Listener) -> ssl.SSLContext | None:
    """The context for `listener`, or None when it has no certificate configured."""
    if not listener.tls_cert or not listener.tls_key:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.load_cert_chain(listener.tls_cert, listener.tls_key)
    return ctx
