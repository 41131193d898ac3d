"""What reading the reports others sent us (DMARC `dmarc_received`, TLS `tls_received`)
shares: each report counted once.

Reporters send a report again when they are not sure it arrived, and a domain that lists
two of our report addresses gets each report twice; every copy is stored (it is mail we
accepted), but a summary counts one. A report is known by its reporting organization and
its report id (unique per reporter: RFC 7489 §7.2.1.1, RFC 8460 §4.4)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Protocol, TypeVar

__all__ = ["usable_once"]


class _Received(Protocol):
    status: str
    org_name: str | None
    report_id: str | None
    period_begin: datetime | None


R = TypeVar("R", bound=_Received)


def usable_once(reports: Iterable[R]) -> Iterator[R]:
    """The usable reports (parsed, with a period) among `reports`, each once: the first
    copy of a report id from one reporter; a report without an id is always counted."""
    seen: set[tuple[str | None, str]] = set()
    for r in reports:
        if r.status != "ok" or r.period_begin is None:
            continue
        if r.report_id:
            key = (r.org_name, r.report_id)
            if key in seen:
                continue
            seen.add(key)
        yield r
