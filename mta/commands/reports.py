"""`mta reports KIND ...`: reports about mail exchanged with other domains.

Each kind registers its own subcommands from its own module: `mta reports dmarc`
(_reports_dmarc.py), `mta reports tls` (RFC 8460, _reports_tls.py)."""

from __future__ import annotations

from mta.commands import _reports_dmarc, _reports_tls

__all__ = ["register"]


def register(sub) -> None:
    parser = sub.add_parser("reports", help="DMARC and TLS (RFC 8460) reports we send "
                                            "and receive")
    kinds = parser.add_subparsers(dest="reports_kind", required=True, metavar="KIND")
    _reports_dmarc.register(kinds)
    _reports_tls.register(kinds)
