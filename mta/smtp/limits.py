"""Concurrent session limits of a listener: overall and per client address.

`SessionLimiter.acquire(ip)` says whether a new session may start and, if not, which
limit refused it; `release(ip)` is called when the session ends. IPv6 clients are
counted per /64 (one host usually owns a whole /64, so per-address counting would be
no limit at all); IPv4-mapped IPv6 addresses count as their IPv4 address.
Settings: `limits.max_sessions`, `limits.max_sessions_per_ip`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

__all__ = ["SessionLimiter", "client_key"]


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
