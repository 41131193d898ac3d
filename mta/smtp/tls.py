"""TLS for the SMTP listeners: one server context built from the listener settings.

TLS 1.2 is the minimum (RFC 8996 retires 1.0/1.1; MISSION R1); ciphers are OpenSSL's
secure defaults; compression and renegotiation are off. Client certificates are not
requested: MX peers authenticate through SPF/DKIM/DMARC, not through TLS. SIGHUP
reloads the certificate files (`reload_context`) without touching open connections.
"""

from __future__ import annotations

import ssl

from mta.config import Listener

__all__ = ["reload_context", "server_context"]


def server_context(listener: Listener) -> ssl.SSLContext | None:
    """The context for `listener`, or None when it has no certificate configured."""
    if not listener.tls_cert or not listener.tls_key:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.load_cert_chain(listener.tls_cert, listener.tls_key)
    return ctx


def reload_context(listener: Listener, bound: ssl.SSLContext | None) -> ssl.SSLContext:
    """SIGHUP: a fresh context from the listener's certificate files (raising, and
    changing nothing, when they do not load). `bound` is the context a listening socket
    was created with (implicit TLS): its later handshakes switch to the fresh context
    from the SNI callback, which OpenSSL calls for every ClientHello (with or without a
    server name). Connections already running keep the context they started with."""
    fresh = server_context(listener)
    if fresh is None:
        raise ValueError("no tls_cert/tls_key configured (adding or removing TLS on a "
                         "listener needs a restart)")
    if bound is not None:
        def switch(conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            conn.context = fresh
        bound.sni_callback = switch  # type: ignore[assignment]
    return fresh
