"""DANE for outbound SMTP (RFC 7672): which TLSA records bind an MX host, and whether the
certificate chain a server presented matches them.

Job: (1) look up `_<port>._tcp.<mx host>` TLSA through our resolver and say whether the
answer can be relied on — only when the host's address records and the TLSA records
were both authenticated by the validating resolver (its AD bit, trusted only with
`dns.dnssec: trust_ad`); (2) match a chain against the records. remote.py decides what
follows (STARTTLS required, the host skipped, the delivery deferred); nothing here
connects anywhere or touches the database.

Matching (RFC 7672 §3.1, RFC 7671): DANE-EE(3) records match the server's own
certificate, with no name or expiry check (the DNS binds the key to the host); DANE-TA(2)
records match a certificate the server sent above its own, which must then issue the
chain down to the server's certificate, each one within its validity dates, and the
server's certificate must name the MX host; a `2 1 0` record is the anchor's key itself,
so the server may leave the anchor's certificate out. Selector 0 is the whole
certificate, 1 its public key (SubjectPublicKeyInfo); matching type 0 the data itself, 1
SHA-256, 2 SHA-512.
PKIX-TA(0) and PKIX-EE(1) records, other selectors and matching types, and digests of the
wrong length are "unusable" (§3.1.3): a host with only unusable records still gets
mandatory, unauthenticated TLS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)

from mta.dnscache import DnsError, DnsResolver

__all__ = ["DanePolicy", "HostTlsa", "Tlsa", "Verdict", "association", "lookup",
           "tlsa_for_certificate", "usable", "verify"]

Mode = Literal["off", "opportunistic", "required"]
USAGE_NAMES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
_DIGEST_SIZES = {1: 32, 2: 64}


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def from_rdata(cls, rd) -> Tlsa:
        return cls(rd.usage, rd.selector, rd.mtype, bytes(rd.cert))

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @property
    def short(self) -> str:
        """`3 1 1 a1b2c3d4...`: enough to tell records apart in a log line."""
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()[:16]}..."


def usable(records: Iterable[Tlsa]) -> list[Tlsa]:
    """The records RFC 7672 lets an SMTP client use."""
    return [r for r in records
            if r.usage in (2, 3) and r.selector in (0, 1) and r.mtype in (0, 1, 2)
            and (r.mtype == 0 or len(r.data) == _DIGEST_SIZES[r.mtype]) and r.data]


def association(cert_der: bytes, selector: int, mtype: int) -> bytes:
    """The certificate association data of `cert_der` for a selector and matching type."""
    if selector == 0:
        data = cert_der
    else:
        cert = x509.load_der_x509_certificate(cert_der)
        data = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def tlsa_for_certificate(cert_der: bytes, usage: int = 3, selector: int = 1,
                         mtype: int = 1) -> Tlsa:
    """The TLSA record that pins `cert_der` (by default `3 1 1`: the key's SHA-256,
    which survives renewals that keep the key)."""
    return Tlsa(usage, selector, mtype, association(cert_der, selector, mtype))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def verify(records: Sequence[Tlsa], chain: Sequence[bytes], names: Sequence[str],
           now: dt.datetime | None = None) -> Verdict:
    """Whether the chain (DER, the server's certificate first, as it was sent) matches
    one of the usable `records`; `names` are the reference identifiers (the MX host)."""
    if not chain:
        return Verdict(False, "the server sent no certificate")
    now = now or dt.datetime.now(dt.UTC)
    cache: dict[tuple[int, int, int], bytes] = {}

    def matches(index: int, r: Tlsa) -> bool:
        key = (index, r.selector, r.mtype)
        if key not in cache:
            try:
                cache[key] = association(chain[index], r.selector, r.mtype)
            except ValueError:
                cache[key] = b""
        return cache[key] == r.data

    problems: list[str] = []
    for r in usable(records):
        if r.usage == 3:
            if matches(0, r):
                return Verdict(True, f"TLSA {r.short} (DANE-EE) matched the certificate")
            continue
        for index in range(1, len(chain)):
            if matches(index, r):
                problem = _chain_problem(chain[:index + 1], names, now)
                if problem is None:
                    return Verdict(True, f"TLSA {r.short} (DANE-TA) matched the issuer at "
                                         f"depth {index}")
                problems.append(f"TLSA {r.short} (DANE-TA) matched at depth {index} but "
                                f"{problem}")
                break
        else:
            if r.selector == 1 and r.mtype == 0:
                # `2 1 0` is the anchor's public key itself: the server need not send
                # the anchor's certificate, only one the key signed (RFC 7671 §5.2.2).
                index = _signed_by_key(chain, r.data)
                if index is None:
                    continue
                problem = _chain_problem(chain[:index + 1], names, now, anchor_sent=False)
                if problem is None:
                    return Verdict(True, f"TLSA {r.short} (DANE-TA) key signed the "
                                         f"certificate at depth {index}")
                problems.append(f"TLSA {r.short} (DANE-TA) key signed the certificate at "
                                f"depth {index} but {problem}")
    if problems:
        return Verdict(False, "; ".join(problems))
    try:
        leaf = association(chain[0], 1, 1).hex()[:16]
    except ValueError:
        leaf = "unreadable"
    return Verdict(False, f"no TLSA record matched the certificate chain ({len(chain)} "
                          f"certificate(s), server key SHA-256 {leaf}...)")


def _signed_by_key(chain: Sequence[bytes], spki: bytes) -> int | None:
    """The depth of the highest certificate of `chain` the public key `spki` signed."""
    try:
        key = load_der_public_key(spki)
    except (ValueError, UnsupportedAlgorithm):
        return None
    for index in reversed(range(len(chain))):
        try:
            cert = x509.load_der_x509_certificate(chain[index])
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(cert.signature, cert.tbs_certificate_bytes,
                           cert.signature_algorithm_parameters, cert.signature_hash_algorithm)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(cert.signature, cert.tbs_certificate_bytes,
                           cert.signature_algorithm_parameters)
            elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                key.verify(cert.signature, cert.tbs_certificate_bytes)
            else:
                return None
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return index
    return None


def _chain_problem(chain: Sequence[bytes], names: Sequence[str],
                   now: dt.datetime, anchor_sent: bool = True) -> str | None:
    """Why chain[0] is not vouched for by the trust anchor (chain[-1], or the key that
    signed chain[-1] when `anchor_sent` is false), or None."""
    try:
        certs = [x509.load_der_x509_certificate(c) for c in chain]
    except ValueError as exc:
        return f"a certificate is unreadable ({exc})"
    for child, issuer in zip(certs, certs[1:], strict=False):
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            return (f"{_subject(child)} is not issued by {_subject(issuer)} "
                    f"({exc or 'bad signature'})")
    # Every issuer below the anchor must be a CA: otherwise whoever holds any server
    # certificate the anchor issued (a public CA as DANE-TA: any of its customers)
    # could sign one for this host with that server's key (RFC 5280 §6.1.4 (k)).
    for cert in certs[1:-1] if anchor_sent else certs[1:]:
        if not _is_ca(cert):
            return f"{_subject(cert)} is not a CA but issued a certificate of the chain"
    # The anchor's own dates do not matter: the DNS vouches for it (RFC 7671 §5.2.2).
    for cert in certs[:-1] if anchor_sent else certs:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return f"{_subject(cert)} is outside its validity dates"
    if not any(_name_matches(certs[0], n) for n in names):
        return f"the certificate does not name {' or '.join(names)}"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _name_matches(cert: x509.Certificate, name: str) -> bool:
    """RFC 7672 §3.2.3: DNS names of the subjectAltName (the common name only when there
    are none); a wildcard stands for the whole leftmost label."""
    name = name.rstrip(".").lower()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        candidates = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        candidates = [a.value for a in cert.subject.get_attributes_for_oid(
            x509.NameOID.COMMON_NAME) if isinstance(a.value, str)]
    for c in candidates:
        c = c.rstrip(".").lower()
        if c == name:
            return True
        if c.startswith("*.") and "." in name and name.split(".", 1)[1] == c[2:]:
            return True
    return False


# -- policy and look-ups -------------------------------------------------------------------


@dataclass(frozen=True)
class DanePolicy:
    """The DANE mode of each destination domain: a default and per-domain overrides."""

    default: Mode = "opportunistic"
    domains: dict[str, Mode] = field(default_factory=dict)

    def mode_for(self, domain: str) -> Mode:
        return self.domains.get(domain.rstrip(".").lower(), self.default)


State = Literal["dane", "unusable", "none", "insecure", "error"]


@dataclass(frozen=True)
class HostTlsa:
    """What DANE says about one MX host.

    dane: authenticated, usable records (TLS required, the chain must match them);
    unusable: authenticated records, none usable (TLS required, unauthenticated);
    none: no TLSA records; insecure: answers not authenticated (both: no DANE);
    error: the TLSA look-up failed for a host with authenticated addresses — an attacker
    could be hiding the records, so the host must not be used now (RFC 7672 §2.2.2)."""

    host: str
    owner: str
    state: State
    records: tuple[Tlsa, ...] = ()
    detail: str = ""
    names: tuple[str, ...] = ()  # the names a DANE-TA chain's certificate may carry

    @property
    def enforced(self) -> bool:
        return self.state in ("dane", "unusable")


async def lookup(resolver: DnsResolver, host: str, port: int, ipv6: bool = True,
                 next_hop: str | None = None) -> HostTlsa:
    """The TLSA state of `host` for connections to `port`. When the host name is an alias
    (CNAME), the records are looked for at the name it leads to first, then at the host
    name itself, and either name may be in a DANE-TA chain's certificate (RFC 7672
    §2.2.2, §3.2.2); so may `next_hop`, the destination domain, when its MX records were
    authenticated (the caller knows)."""
    host = host.rstrip(".").lower()
    owner = f"_{port}._tcp.{host}"
    try:
        answers = await asyncio.gather(*(resolver.authenticated(host, t) for t in
                                         (("AAAA", "A") if ipv6 else ("A",))))
    except DnsError as exc:
        # The connection attempt fails on the same look-up and says so.
        return HostTlsa(host, owner, "insecure", detail=f"address look-up failed: {exc}")
    found = [(answer, secure) for answer, secure in answers if answer is not None]
    if not found or not all(secure for _, secure in found):
        # An alias chain that is not authenticated all the way counts as insecure too.
        return HostTlsa(host, owner, "insecure", detail="address records not authenticated")
    target = found[0][0].canonical_name.to_text(omit_final_dot=True).lower()
    bases = (target, host) if target != host else (host,)
    names = tuple(dict.fromkeys([*bases, *([next_hop] if next_hop else [])]))
    for name in bases:
        owner = f"_{port}._tcp.{name}"
        try:
            answer, secure = await resolver.authenticated(owner, "TLSA")
        except DnsError as exc:
            return HostTlsa(host, owner, "error", names=names,
                            detail=f"TLSA look-up for {owner} failed: {exc}")
        if answer is None:
            continue
        if not secure:
            return HostTlsa(host, owner, "insecure", names=names,
                            detail=f"TLSA at {owner} not authenticated")
        records = tuple(Tlsa.from_rdata(rd) for rd in answer)
        if not usable(records):
            return HostTlsa(host, owner, "unusable", records, names=names,
                            detail=f"no usable TLSA record at {owner}")
        return HostTlsa(host, owner, "dane", records, names=names)
    return HostTlsa(host, f"_{port}._tcp.{host}", "none", names=names,
                    detail=f"no TLSA record at {' or '.join(f'_{port}._tcp.{n}' for n in bases)}")
