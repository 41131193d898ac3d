"""Throttling AUTH on the submission listeners after failures, per client address and
per user name, without telling a prober anything about which users exist.

- Per client address (IPv6 per /64, as `limits.client_key` counts sessions): after
  `limits.auth_failures_per_ip` failures within `limits.auth_failure_window`, AUTH from
  that address is refused with `454 4.7.0` before any credential is read, until the
  oldest failure leaves the window. A right password gets the same refusal as a wrong
  one, so the refusal says nothing about the credentials.
- Per user name (the SASL authcid as given): after `limits.auth_failures_per_user`
  failures within the window, every AUTH for that name — whatever its outcome — is
  answered only after `limits.auth_failure_delay`. A delay rather than a refusal: the
  user name of submission is the literal `api_token` for every client, so refusing it
  would let anyone lock everybody out; slowing it keeps distributed guessing slow while
  real clients still get in. Names that do not exist are counted and delayed exactly
  like ones that do.
Counts live in the process (each worker of `mta serve --workers N` has its own), bounded
in memory: at most `MAX_KEYS` names and addresses are tracked, the stalest dropped first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from mta.smtp.limits import client_key

__all__ = ["AuthThrottle", "MAX_KEYS"]

MAX_KEYS = 10000
_NAME_BYTES = 64  # a user name is kept (and compared) up to this length


class _Failures:
    """Failure times per key within a sliding window."""

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self.clock = clock
        self.times: OrderedDict[str, deque[float]] = OrderedDict()

    def count(self, key: str) -> int:
        times = self.times.get(key)
        if times is None:
            return 0
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self.times[key]
            return 0
        return len(times)

    def add(self, key: str) -> None:
        self.count(key)  # drop what left the window
        times = self.times.setdefault(key, deque())
        times.append(self.clock())
        self.times.move_to_end(key)
        while len(self.times) > MAX_KEYS:
            self.times.popitem(last=False)


class AuthThrottle:
    def __init__(self, per_ip: int, per_user: int, window: float, delay: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_ip = per_ip
        self.per_user = per_user
        self.delay = delay
        self._ips = _Failures(window, clock)
        self._users = _Failures(window, clock)

    @staticmethod
    def _name(user: str) -> str:
        return user.lower()[:_NAME_BYTES]

    def ip_blocked(self, ip: str) -> bool:
        return self.per_ip > 0 and self._ips.count(client_key(ip)) >= self.per_ip

    def user_delay(self, user: str) -> float:
        """Seconds to wait before answering an AUTH for `user` (0 when not throttled)."""
        if self.per_user > 0 and self._users.count(self._name(user)) >= self.per_user:
            return self.delay
        return 0.0

    def failed(self, ip: str, user: str | None) -> None:
        self._ips.add(client_key(ip))
        if user is not None:
            self._users.add(self._name(user))
