"""The one normal form of a recipient address, in which rules and recipients compare.

Case-folded local part (`.` and `+` left alone: no provider-style folding) and the
A-label form of the domain, so `Piñata.ES` and `xn--piata-o0a.es` compare equal.
"""

from __future__ import annotations

__all__ = ["normalize_address", "normalize_domain"]


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form, so `Piñata.ES` and `xn--piata-o0a.es` compare equal.
    A domain that is not valid IDNA is only lower-cased (it then matches nothing real)."""
    d = domain.strip().rstrip(".")
    if d.isascii():
        return d.lower()
    try:
        import idna

        return idna.encode(d, uts46=True).decode("ascii").lower()
    except (ImportError, UnicodeError, ValueError):
        try:
            return d.encode("idna").decode("ascii").lower()
        except UnicodeError:
            return d.lower()


def normalize_address(address: str) -> str:
    """Case-folded address with an A-label domain; `.` and `+` are left alone."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep:
        return address.strip().lower()
    return f"{local.lower()}@{normalize_domain(domain)}"
