"""The protocol's size limits, named once, and the concurrent session limits of a
listener (overall and per client address).

RFC 5321 §4.5.3.1 sizes (octets): every parser and reader takes its bound from here.

`SessionLimiter.acquire(ip)` says whether a new session may start and, if not, which
limit refused it; `release(ip)` is called when the session ends. IPv6 clients are
counted per /64 (one host usually owns a whole /64, so per-address counting would be
no limit at all); IPv4-mapped IPv6 addresses count as their IPv4 address.
Settings: `limits.max_sessions`, `limits.max_sessions_per_ip`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

__all__ = ["AUTH_LINE", "COMMAND_LINE", "DOMAIN", "LOCAL_PART", "MAIL_EXTRA", "PATH",
           "RCPT_EXTRA", "SessionLimiter", "TEXT_LINE", "client_key", "command_line_limit"]

# RFC 5321 §4.5.3.1.1-.3: local part, domain, and a whole path with its angle brackets.
LOCAL_PART = 64
DOMAIN = 255
PATH = 256
# §4.5.3.1.4: a command line, command word and <CRLF> included.
COMMAND_LINE = 512
# §4.5.3.1.6 and RFC 5322 §2.1.1: a line of message text, <CRLF> included (998 + 2).
TEXT_LINE = 1000
# Extensions that lengthen a command line say by how much: SIZE= (RFC 1870 §3) on MAIL,
# AUTH= (RFC 4954 §5) on MAIL, RET=/ENVID= (RFC 3461 §4) on MAIL, NOTIFY=/ORCPT= on RCPT.
MAIL_EXTRA = 26 + 500 + 100
RCPT_EXTRA = 500
# RFC 4954 §4: an AUTH command, or a response in the exchange, may be this long.
AUTH_LINE = 12288


def command_line_limit(verb: str) -> int:
    """The longest command line (with <CRLF>) a command may have."""
    verb = verb.upper()
    if verb == "MAIL":
        return COMMAND_LINE + MAIL_EXTRA
    if verb == "RCPT":
        return COMMAND_LINE + RCPT_EXTRA
    if verb == "AUTH":
        return AUTH_LINE
    return COMMAND_LINE


def client_key(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class SessionLimiter:
    def __init__(self, max_sessions: int, max_per_ip: int) -> None:
        self.max_sessions = max_sessions
        self.max_per_ip = max_per_ip
        self.active = 0
        self.per_ip: Counter[str] = Counter()

    def acquire(self, ip: str) -> str | None:
        """None when the session may start (and is counted), else the limit's name."""
        if self.max_sessions > 0 and self.active >= self.max_sessions:
            return "sessions"
        key = client_key(ip)
        if self.max_per_ip > 0 and self.per_ip[key] >= self.max_per_ip:
            return "sessions_per_ip"
        self.active += 1
        self.per_ip[key] += 1
        return None

    def release(self, ip: str) -> None:
        key = client_key(ip)
        self.active = max(0, self.active - 1)
        self.per_ip[key] -= 1
        if self.per_ip[key] <= 0:
            del self.per_ip[key]
