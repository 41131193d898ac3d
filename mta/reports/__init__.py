"""Reports about mail that we send to, and take from, other domains: DMARC aggregate
reports (RFC 7489 §7.2; dmarc_*.py) and TLS reports (RFC 8460; tlsrpt_*.py)."""
