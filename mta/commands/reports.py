"""`mta reports KIND ...`: reports about mail authentication exchanged with other domains.

Each kind registers its own subcommands: `mta reports dmarc` (_reports_dmarc.py)."""

from __future__ import annotations

from mta.commands import _reports_dmarc

__all__ = ["register"]


def register(sub) -> None:
    parser = sub.add_parser("reports", help="DMARC aggregate reports we send and receive")
    kinds = parser.add_subparsers(dest="reports_kind", required=True)
    _reports_dmarc.register(kinds)
