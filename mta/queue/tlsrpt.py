"""TLS reporting (RFC 8460): what our outbound sessions saw, counted per day.

Job: the transport (`remote.py`, `session.py`) tells `SESSIONS` the TLS outcome of every
new connection to a destination's MX (and of a route that failed before any connection,
such as DANE required without usable TLSA records): which policy applied (`sts`, `tlsa`
or `no-policy-found`, with its policy strings) and either success or an RFC 8460 §4.3
result type. Counting is an in-memory dictionary increment, nothing more, so the hot
path pays no database round trip; `TlsSessionRecorder`, a node service, moves the counts
into `tls_report_sessions` (one upsert-increment statement per flush, every
`tls_reports.flush_interval` seconds and at stop). A flush that fails keeps its counts
for the next one. What a crash loses is at most one interval of counters, never mail.

The daily report (`mta.reports`) is built from that table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from mta.background import LoopService
from mta.observe import metrics
from mta.store.tlsrpt import add_session_counts

__all__ = ["RESULT_TYPES", "SESSIONS", "SessionCounts", "SessionKey", "TlsSessionRecorder",
           "classify_tls_error", "sts_policy_strings", "tlsa_policy_strings"]

log = logging.getLogger("mta.tlsrpt")

PolicyType = Literal["sts", "tlsa", "no-policy-found"]

# RFC 8460 §4.3 result types (the ones our transport can tell apart).
RESULT_TYPES = (
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure", "tlsa-invalid", "dnssec-invalid",
    "dane-required", "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
)
SUCCESS = "success"  # the result column's value for a successful session


@dataclass(frozen=True)
class SessionKey:
    """One counter: a day, a policy of a recipient domain, an outcome, and the hosts."""

    day: date
    domain: str
    policy_type: PolicyType
    policy_strings: tuple[str, ...]
    result: str  # SUCCESS or one of RESULT_TYPES
    sending_ip: str = ""
    receiving_mx: str = ""
    receiving_ip: str = ""


class SessionCounts:
    """Counters of one process, taken by the recorder and given back if it fails."""

    def __init__(self) -> None:
        self._counts: Counter[SessionKey] = Counter()

    def add(self, domain: str, policy_type: PolicyType, policy_strings: tuple[str, ...],
            result: str, *, sending_ip: str = "", receiving_mx: str = "",
            receiving_ip: str = "", now: datetime | None = None) -> None:
        day = (now or datetime.now(UTC)).date()
        metrics.TLS_REPORT_SESSIONS.labels(policy_type, result).inc()
        self._counts[SessionKey(day, domain, policy_type, policy_strings, result,
                                sending_ip or "", receiving_mx or "", receiving_ip or "")] += 1

    def take(self) -> Counter[SessionKey]:
        counts, self._counts = self._counts, Counter()
        return counts

    def give_back(self, counts: Counter[SessionKey]) -> None:
        self._counts.update(counts)

    def __len__(self) -> int:
        return len(self._counts)


SESSIONS = SessionCounts()  # process-wide, like the metrics: every transport feeds it


def sts_policy_strings(policy) -> tuple[str, ...]:
    """An MTA-STS policy as RFC 8460 §4.4 `policy-string`: its lines."""
    return ("version: STSv1", f"mode: {policy.mode}",
            *(f"mx: {mx}" for mx in policy.mx), f"max_age: {policy.max_age}")


def tlsa_policy_strings(records) -> tuple[str, ...]:
    """TLSA records in presentation form (usage selector mtype data)."""
    return tuple(str(r) for r in records)


def classify_tls_error(exc: BaseException | str) -> str:
    """The RFC 8460 result type of a failed TLS handshake, from the verification error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"{exc.verify_message or ''} {exc}"
    else:
        text = str(exc)
    text = text.lower()
    if "expired" in text or "not yet valid" in text:
        return "certificate-expired"
    if "hostname mismatch" in text or "doesn't match" in text or "ip address mismatch" in text:
        return "certificate-host-mismatch"
    if ("self-signed" in text or "self signed" in text or "unable to get" in text
            or "unknown ca" in text or "certificate verify failed" in text):
        return "certificate-not-trusted"
    return "validation-failure"


class TlsSessionRecorder(LoopService):
    """A node service: flushes SESSIONS into the database now and then."""

    name = "tls-report-recorder"

    def __init__(self, ctx, counts: SessionCounts = SESSIONS) -> None:
        self.ctx = ctx
        self.counts = counts

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(Exception):  # the database may be gone at shutdown
            await self.flush()

    def describe(self) -> dict:
        return {"worker": self.name,
                "interval_s": self.ctx.settings.tls_reports.flush_interval}

    async def flush(self) -> int:
        """Write the counts gathered so far; the number of counters written."""
        counts = self.counts.take()
        if not counts:
            return 0
        try:
            await add_session_counts(self.ctx.db, counts.items())
        except BaseException:
            self.counts.give_back(counts)
            raise
        return len(counts)

    async def _loop(self) -> None:
        interval = max(float(self.ctx.settings.tls_reports.flush_interval), 0.1)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception as exc:  # the counts stay; the next flush tries again
                log.warning("TLS report counters not written: %s", exc,
                            extra={"event": "tlsrpt.flush_failed"})
