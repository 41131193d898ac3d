"""Inbound accept: every check and a durable commit, the forward queued, against Postfix.

    .venv/bin/python bench/inbound_accept.py [--messages 500] [--concurrency 1,10,50]
        [--per-session 10] [--workers N] [--no-postfix]

As bench/forward_e2e.py (same node, routing rule, message, client and Postfix
instances), but the forward is queued instead of tried in-session, so this measures
what the MX does before its 250: SPF, DKIM, DMARC, ARC, the policy, routing, SRS, ARC
seal and DKIM signature of the copy, and the commit (fsync on) of the message, its
delivery and events. mta has no switch for "queue, never try in-session";
`routing.in_session_timeout: 0s` gives up at once and queues the copy with the attempt
counted (next try after retry.first_retry, 5 minutes: nothing reaches the sink during
the run). Postfix runs with `defer_transports = smtp, relay`: it accepts and queues
(fsync) but does not relay. Accepted messages per second, p50/p99 of one transaction
and CPU ms per accepted message over every process of the target.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from bench.forward_e2e import parse, run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parse(argv, __doc__)
    write_result("inbound_accept", run("inbound_accept", args, queued=True))


if __name__ == "__main__":
    main()
