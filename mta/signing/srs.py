"""Sender Rewriting Scheme for forwarded mail, in the libsrs2 / postsrsd format.

    SRS0=HHHH=TT=orig.example=alice@fwd.example
    SRS1=HHHH=first.example==HHHH=TT=orig.example=alice@fwd.example

HHHH is the first 4 characters of base64(HMAC-SHA1(secret, lower-cased fields
concatenated)), TT the day number modulo 1024 in base32. Using exactly this
format means bounces to addresses we issued under postsrsd/libsrs2 (or they
under us) still reverse when an operator migrates, and that other forwarders'
SRS0 addresses are recognised and turned into SRS1 instead of nested.

Hashes compare case-insensitively because some MTAs lower-case local parts on
the way back; the 21-day default maximum age bounds how long a leaked address
can be used to relay bounces.
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Callable, Sequence

__all__ = [
    "Srs",
    "SrsBadHash",
    "SrsError",
    "SrsExpired",
    "SrsMalformed",
    "SrsNotSrsAddress",
    "is_srs_address",
]

SEPARATORS = "=+-"
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DAY = 86400
_SLOTS = 1024  # two base32 characters


class SrsError(ValueError):
    """An address could not be rewritten or reversed."""


class SrsNotSrsAddress(SrsError):
    """reverse() was given an address that is not SRS0/SRS1."""


class SrsMalformed(SrsError):
    """The address claims to be SRS but lacks a field, or is not an address."""


class SrsBadHash(SrsError):
    """The hash does not match with any configured secret: forged or mangled."""


class SrsExpired(SrsError):
    """The timestamp is older than the maximum age."""


def _split_address(address: str) -> tuple[str, str]:
    local, at, host = address.rpartition("@")
    if not at or not local or not host:
        raise SrsMalformed(f"not a mail address: {address!r}")
    return local, host


def _tag(local: str) -> str | None:
    """"SRS0"/"SRS1" when `local` starts with that tag and any separator."""
    if len(local) > 4 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in SEPARATORS:
        return local[:4].upper()
    return None


def is_srs_address(address: str) -> bool:
    return _tag(address.rpartition("@")[0]) is not None


class Srs:
    """Rewrites envelope senders for one forwarding domain.

    `secrets`: the first one signs, all are accepted (rotate by putting a new
    secret first and dropping the old one after `max_age_days`). `clock` returns
    UNIX time; tests inject one."""

    __slots__ = ("_secrets", "_clock", "domain", "max_age_days", "hash_length", "separator",
                 "always_rewrite")

    def __init__(self, secrets: Sequence[str], domain: str, max_age_days: int = 21, *,
                 hash_length: int = 4, separator: str = "=",
                 clock: Callable[[], float] = time.time, always_rewrite: bool = False) -> None:
        if isinstance(secrets, str):
            raise TypeError("secrets must be a list of strings, not one string")
        if not secrets or any(not s for s in secrets):
            raise ValueError("SRS needs at least one non-empty secret")
        if not domain or "@" in domain or any(c.isspace() for c in domain):
            raise ValueError(f"invalid SRS domain {domain!r}")
        if separator not in SEPARATORS or len(separator) != 1:
            raise ValueError(f"SRS separator must be one of {SEPARATORS!r}")
        if not 1 <= max_age_days < _SLOTS:
            raise ValueError("max_age_days must be between 1 and 1023")
        if not 1 <= hash_length <= 27:  # 27 base64 characters hold all 160 bits
            raise ValueError("hash_length must be between 1 and 27")
        self._secrets = tuple(s.encode("utf-8") for s in secrets)
        self._clock = clock
        self.domain = domain
        self.max_age_days = max_age_days
        self.hash_length = hash_length
        self.separator = separator
        self.always_rewrite = always_rewrite

    def __repr__(self) -> str:
        return (f"Srs(domain={self.domain!r}, secrets=<{len(self._secrets)}>, "
                f"max_age_days={self.max_age_days})")

    # -- primitives ----------------------------------------------------------------------

    def _hash(self, secret: bytes, *fields: str) -> str:
        # ASCII-only lower-casing, as libsrs2's tolower() loop: str.lower() would
        # also fold non-ASCII (SMTPUTF8) characters and give another hash.
        data = b"".join(f.encode("utf-8").lower() for f in fields)
        digest = hmac.new(secret, data, "sha1").digest()
        return base64.b64encode(digest).decode("ascii")[:self.hash_length]

    def _check_hash(self, given: str, *fields: str) -> None:
        if len(given) < self.hash_length:
            raise SrsBadHash("SRS hash too short")
        # Bytes: compare_digest refuses str with non-ASCII characters (an SMTPUTF8
        # local part can put any in the hash's place); such a hash simply does not match.
        given_bytes = given[:self.hash_length].lower().encode("utf-8")
        ok = False
        for secret in self._secrets:  # no early exit: time does not tell which secret
            ok |= hmac.compare_digest(given_bytes,
                                      self._hash(secret, *fields).lower().encode("ascii"))
        if not ok:
            raise SrsBadHash("SRS hash does not match")

    def _day(self) -> int:
        return int(self._clock()) // _DAY

    def _stamp(self) -> str:
        day = self._day() % _SLOTS
        return _BASE32[day >> 5] + _BASE32[day & 31]

    def _check_stamp(self, stamp: str) -> None:
        if len(stamp) != 2:
            raise SrsMalformed("SRS timestamp must be two characters")
        then = 0
        for ch in stamp.upper():
            index = _BASE32.find(ch)
            if index < 0:
                raise SrsMalformed("bad base32 character in SRS timestamp")
            then = (then << 5) | index
        now = self._day() % _SLOTS
        while now < then:  # the stamp wrapped: it is from the previous 1024-day cycle
            now += _SLOTS
        if now > then + self.max_age_days:
            raise SrsExpired(f"SRS address older than {self.max_age_days} days")

    # -- public API ----------------------------------------------------------------------

    def forward(self, address: str) -> str:
        """The envelope sender to use when forwarding mail from `address`.

        The null sender stays null (bounces must not get bounces). Mail already
        from our domain needs no rewrite. Another forwarder's SRS0 becomes SRS1
        pointing at that forwarder, an SRS1 keeps its first hop, so the
        address does not grow with every hop."""
        if address in ("", "<>"):
            return address
        local, host = _split_address(address)
        if not self.always_rewrite and host.lower() == self.domain.lower():
            return address
        sign = self._secrets[0]
        tag = _tag(local)
        if tag == "SRS1":
            parts = local[5:].split("=", 2)
            if len(parts) == 3 and all(parts):
                _, first_hop, rest = parts
                digest = self._hash(sign, first_hop, rest)
                return f"SRS1{self.separator}{digest}={first_hop}={rest}@{self.domain}"
            # Not an SRS1 we can read: wrap it as a plain address below, so the
            # bounce still reaches whoever issued it.
        elif tag == "SRS0":
            rest = local[4:]  # keeps the other forwarder's own separator
            digest = self._hash(sign, host, rest)
            return f"SRS1{self.separator}{digest}={host}={rest}@{self.domain}"
        stamp = self._stamp()
        digest = self._hash(sign, stamp, host, local)
        return f"SRS0{self.separator}{digest}={stamp}={host}={local}@{self.domain}"

    def reverse(self, address: str) -> str:
        """The address a bounce to `address` (one we issued) must go to.

        Raises SrsNotSrsAddress, SrsMalformed, SrsBadHash or SrsExpired. The
        domain part is not checked: any of our forwarding domains may have
        issued it, and only the hash proves that."""
        if not address or address == "<>":
            raise SrsNotSrsAddress("the null sender is not an SRS address")
        local, _ = _split_address(address)
        tag = _tag(local)
        if tag is None:
            raise SrsNotSrsAddress(f"not an SRS address: {address!r}")
        if tag == "SRS1":
            parts = local[5:].split("=", 2)
            if len(parts) != 3 or not all(parts):
                raise SrsMalformed("SRS1 address without hash, host or user")
            digest, first_hop, rest = parts
            self._check_hash(digest, first_hop, rest)
            # SRS1 carries no timestamp of its own: the SRS0 inside it is checked
            # by the first-hop forwarder the bounce goes to.
            return f"SRS0{rest}@{first_hop}"
        parts = local[5:].split("=", 3)
        if len(parts) != 4 or not all(parts):
            raise SrsMalformed("SRS0 address without hash, timestamp, host or user")
        digest, stamp, host, user = parts
        if len(stamp) != 2 or any(c.upper() not in _BASE32 for c in stamp):
            raise SrsMalformed("bad SRS timestamp")
        self._check_hash(digest, stamp, host, user)
        self._check_stamp(stamp)
        return f"{user}@{host}"
