"""A DNSSEC-signed zone for the test DNS server, and the answers it gives.

A validating resolver (tests/harness/unbound.py) only sets the AD bit when every answer
it relies on is signed by a key it trusts, and negative answers are proved by NSEC
records. `SignedZone` builds such a zone from zone-file text: it adds SOA and NS, makes a
fresh ECDSA P-256 key (algorithm 13, small signatures that fit one UDP packet), signs
every record set and chains NSEC records with dnspython's `dns.dnssec.sign_zone`.
`trust_anchor` is the key to configure in the resolver; with `bogus=True` it is another
key than the one that signed the zone, so the resolver must refuse the zone (SERVFAIL),
as it would records an attacker forged.

`answer()` speaks like an authoritative server with DNSSEC (RFC 4035 §3.1): the record
set and its RRSIG; for "no such type" the SOA and the NSEC of the name; for "no such
name" the SOA, the NSEC covering the name and the one covering the wildcard at its
closest encloser. A CNAME is followed inside the zone (the CNAME and its RRSIG, then the
target's answer). No wildcards or delegations inside a signed zone.

    zone = SignedZone("dane.test", '''
        dane.test.           300 IN MX 10 mx.dane.test.
        mx.dane.test.        300 IN A 127.0.0.2
        _25._tcp.mx.dane.test. 300 IN TLSA 3 1 1 <sha256 of the SPKI>
    ''')
    dns_server.add_signed_zone(zone)
"""

from __future__ import annotations

import time

import dns.dnssec
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["SignedZone"]


class SignedZone:
    def __init__(self, origin: str, records: str = "", *, bogus: bool = False,
                 ttl: int = 300) -> None:
        self.origin = dns.name.from_text(origin)
        apex = self.origin.to_text()
        head = (f"{apex} {ttl} IN SOA ns.{apex} hostmaster.{apex} 1 3600 600 86400 {ttl}\n"
                f"{apex} {ttl} IN NS ns.{apex}\n")
        lines = [ln.strip() for ln in records.strip().splitlines() if ln.strip()]
        self.zone = dns.zone.from_text(head + "\n".join(lines), origin=self.origin,
                                       relativize=False)
        key = ec.generate_private_key(ec.SECP256R1())
        dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256,
                                        flags=257)  # a key-signing key: the trust anchor
        now = int(time.time())
        with self.zone.writer() as txn:
            dns.dnssec.sign_zone(self.zone, txn, keys=[(key, dnskey)], dnskey_ttl=ttl,
                                 inception=now - 3600, expiration=now + 7 * 86400)
        self.anchor = dnskey
        if bogus:  # the resolver trusts a key that did not make the zone's signatures
            other = ec.generate_private_key(ec.SECP256R1())
            self.anchor = dns.dnssec.make_dnskey(
                other.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
        self._names = sorted(self.zone.nodes)  # canonical DNSSEC order (RFC 4034 §6.1)

    @property
    def trust_anchor(self) -> str:
        """The key as a resolver's `trust-anchor:` line: `name DNSKEY flags 3 13 key`."""
        return f"{self.origin.to_text()} DNSKEY {self.anchor.to_text()}"

    def covers(self, name: dns.name.Name) -> bool:
        return name.is_subdomain(self.origin)

    # -- answering ------------------------------------------------------------------------

    def answer(self, qname: dns.name.Name, qtype: int, dnssec: bool, depth: int = 0
               ) -> tuple[int, list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        """(rcode, answer section, authority section) for one question."""
        node = self.zone.get_node(qname)
        if node is not None:
            rdataset = node.get_rdataset(dns.rdataclass.IN, qtype)
            if rdataset is not None:
                return dns.rcode.NOERROR, self._with_sig(qname, qtype, dnssec), []
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is not None and depth < 8:
                chain = self._with_sig(qname, dns.rdatatype.CNAME, dnssec)
                target = cname[0].target
                if not self.covers(target):
                    return dns.rcode.NOERROR, chain, []
                rcode, answer, authority = self.answer(target, qtype, dnssec, depth + 1)
                return rcode, chain + answer, authority
            proof = [qname]  # NODATA: the name's own NSEC lists the types it has
            rcode = dns.rcode.NOERROR
        elif any(n.is_subdomain(qname) for n in self._names):
            proof = [self._predecessor(qname)]  # an empty non-terminal: NODATA too
            rcode = dns.rcode.NOERROR
        else:
            encloser = qname.parent()
            while not any(n.is_subdomain(encloser) for n in self._names):
                encloser = encloser.parent()
            wildcard = dns.name.from_text("*", encloser)
            proof = list(dict.fromkeys([self._predecessor(qname),
                                        self._predecessor(wildcard)]))
            rcode = dns.rcode.NXDOMAIN
        authority = self._with_sig(self.origin, dns.rdatatype.SOA, dnssec)
        if dnssec:
            for name in proof:
                authority += self._with_sig(name, dns.rdatatype.NSEC, True)
        return rcode, [], authority

    def _predecessor(self, name: dns.name.Name) -> dns.name.Name:
        """The owner of the NSEC record whose span covers `name` (the last name before it
        in canonical order; the last name of the zone wraps around to the apex)."""
        before = [n for n in self._names if n < name]
        return before[-1] if before else self._names[-1]

    def _with_sig(self, name: dns.name.Name, rdtype: int, dnssec: bool
                  ) -> list[dns.rrset.RRset]:
        node = self.zone.get_node(name)
        rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
        out = [dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))]
        sigs = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covers=rdtype)
        if dnssec and sigs is not None:
            out.append(dns.rrset.from_rdata_list(name, sigs.ttl, list(sigs)))
        return out
