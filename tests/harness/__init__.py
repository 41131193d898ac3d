"""Real peers for tests: PostgreSQL, an authoritative DNS server, SMTP sinks, nodes."""
