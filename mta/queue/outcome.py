"""The one outcome type of a delivery attempt, per recipient.

The transport (`remote.py`) reports what happened and never decides about retries;
the queue (`delivery.py`) applies the one failure policy to these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["HARD_BOUNCE_CODES", "HARD_BOUNCE_ENHANCED", "Reply", "RecipientOutcome", "Result"]

Result = Literal["delivered", "deferred", "failed"]

# The replies that say the address does not exist (a hard bounce): the failure policy
# (`delivery.py`) and bounce intake (`bounces.py`) both suppress the recipient on them.
HARD_BOUNCE_CODES = frozenset({550, 551, 553, 556})
HARD_BOUNCE_ENHANCED = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: basic code, RFC 3463 enhanced code (when given) and text."""

    code: int
    enhanced: str | None
    text: str

    def __str__(self) -> str:
        return " ".join(p for p in (str(self.code), self.enhanced or "", self.text) if p)


@dataclass(frozen=True)
class RecipientOutcome:
    recipient: str
    result: Result
    reply: Reply | None = None  # the remote reply, or one we made up (e.g. 5.1.10 null MX)
    mx_host: str | None = None
    ip: str | None = None
    tls_version: str | None = None
    detail: str | None = None  # what went wrong locally (connection refused, MTA-STS ...)
    # The next hop offers DSN and got the sender's DSN request (RFC 3461 §5.2.1): a
    # success DSN is then its job, not ours.
    dsn_passed: bool = False
