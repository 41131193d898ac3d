"""Parsing the MAIL FROM / RCPT TO arguments (RFC 5321 §4.1.2, RFC 1870, RFC 6152,
RFC 6531).

Returns values or raises `PathError` with a kind the session maps to a reply:
- `syntax`: not a path we can read;
- `non_ascii_local`: an internationalised local part in a transaction that did not ask
  for SMTPUTF8 (MAIL ... SMTPUTF8): refused with 553 5.6.7 (RFC 6531 §3.7.4.1) instead of
  mangled. With SMTPUTF8 such local parts are accepted (RFC 6531 §3.3: atext extended by
  UTF-8 non-ASCII characters), kept as sent;
- internationalised *domains* are accepted, as U-labels or A-labels, and turned into
  their A-label form (IDNA 2008 with UTS #46 mapping), so they compare with our data.
Parameters are read before the address, so `SMTPUTF8` decides how the address is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mta.routing.rules import normalize_domain
from mta.smtp.limits import DOMAIN, LOCAL_PART, PATH

__all__ = ["Path", "PathError", "parse_path"]

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
# RFC 6531 §3.3: with SMTPUTF8, atext and qtext also take UTF8-non-ascii.
_UATEXT = r"(?:[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]|[^\x00-\x7f])"
_UDOT_ATOM = re.compile(rf"{_UATEXT}+(?:\.{_UATEXT}+)*\Z")
_UQUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*"\Z')
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?\Z")


class PathError(ValueError):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind  # syntax | non_ascii_local | bad_parameter | duplicate_parameter
        self.detail = detail


@dataclass(frozen=True)
class Path:
    address: str  # local@a-label-domain, "" for the null reverse-path
    params: dict[str, str | None] = field(default_factory=dict)  # upper-cased keys

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


def _check_domain(domain: str) -> str:
    if domain.startswith("[") and domain.endswith("]"):
        return domain  # address literal (RFC 5321 §4.1.3); routing will not match it
    if not domain.isascii():
        try:
            domain = normalize_domain(domain)
        except Exception:
            raise PathError("syntax", "invalid internationalised domain") from None
        if not domain.isascii():
            raise PathError("syntax", "invalid internationalised domain")
    domain = domain.rstrip(".")
    if not domain or len(domain) > DOMAIN or not all(_LABEL.match(p) for p in domain.split(".")):
        raise PathError("syntax", "invalid domain")
    return domain.lower()


def parse_address(text: str, *, utf8: bool = False) -> str:
    """`local@domain` checked and normalised (domain A-label, lower case); the local
    part keeps its case (it is case-insensitive only for our matching). A non-ASCII
    local part needs `utf8` (the transaction's SMTPUTF8)."""
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise PathError("syntax", "address needs a local part and a domain")
    if not local.isascii() and not utf8:
        raise PathError("non_ascii_local")
    if len(local.encode()) > LOCAL_PART:
        raise PathError("syntax", f"local part longer than {LOCAL_PART} octets")
    dot_atom, quoted = (_UDOT_ATOM, _UQUOTED) if utf8 else (_DOT_ATOM, _QUOTED)
    if not (dot_atom.match(local) or quoted.match(local)):
        raise PathError("syntax", "invalid local part")
    return f"{local}@{_check_domain(domain)}"


def parse_path(arg: str | None, keyword: str, *, null_ok: bool, utf8: bool = False) -> Path:
    """Parse `FROM:<a@b> SIZE=123` (keyword "FROM") or `TO:<a@b>` (keyword "TO").
    Non-ASCII local parts are read when `utf8` (RCPT in an SMTPUTF8 transaction) or
    when the parameters include SMTPUTF8 (MAIL)."""
    if not arg:
        raise PathError("syntax", f"expected {keyword}:<address>")
    head, colon, rest = arg.partition(":")
    if not colon or head.strip().upper() != keyword:
        raise PathError("syntax", f"expected {keyword}:<address>")
    rest = rest.lstrip(" ")
    if rest.startswith("<"):
        close = rest.find(">")
        if close < 0:
            raise PathError("syntax", "missing >")
        inner, tail = rest[1:close], rest[close + 1:]
    else:  # lenient: a bare address, as some old clients send
        inner, _, tail = rest.partition(" ")
    if tail and not tail.startswith(" "):
        raise PathError("syntax", "text after the address")
    if len(inner.encode()) + 2 > PATH:
        raise PathError("syntax", f"path longer than {PATH} octets")
    if any(ord(c) < 0x20 or c == "\x7f" for c in inner):
        raise PathError("syntax", "control character in address")
    if ":" in inner and inner.startswith("@"):
        inner = inner.split(":", 1)[1]  # an obsolete source route: ignored (§4.1.2)
    params: dict[str, str | None] = {}
    for token in tail.split():
        m = _PARAM.match(token)
        if not m:
            raise PathError("bad_parameter", token[:64])
        key = m.group(1).upper()
        if key in params:  # e.g. RFC 3461 §4: each DSN parameter at most once
            raise PathError("duplicate_parameter", key[:64])
        params[key] = m.group(2)
    if inner == "":
        if not null_ok:
            raise PathError("syntax", "the null address is not a recipient")
        address = ""
    else:
        address = parse_address(inner, utf8=utf8 or "SMTPUTF8" in params)
    return Path(address, params)
