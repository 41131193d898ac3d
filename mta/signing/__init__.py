"""Outbound signing: DKIM signatures, ARC sets, SRS envelope rewriting, and the
keys they use. Pure code: no database, no DNS, no I/O."""
