"""A real authoritative DNS server on loopback for tests.

It answers UDP and TCP on 127.0.0.1 at a free port from records the test gives as
zone text (A, AAAA, MX, TXT, PTR, CNAME, ... anything dnspython parses), follows
CNAMEs inside its own data, serves DNSSEC-signed zones (`add_signed_zone`, see
tests/harness/dnssec.py) for a validating resolver in front of it, and can be told
to answer SERVFAIL for a name or to stay silent (a timeout). The product's resolver is pointed at it through the
`dns.nameservers` setting.

    dns = TestDnsServer(); dns.start()
    dns.add_zone('''
        example.test.        300 IN MX 10 mx.example.test.
        mx.example.test.     300 IN A  127.0.0.2
        example.test.        300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
    ''')
    dns.servfail("_dmarc.broken.test")
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections import defaultdict

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

from tests.harness.dnssec import SignedZone

__all__ = ["TestDnsServer"]


class TestDnsServer:
    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.address = address
        self._requested_port = port
        self.port = 0
        self._lock = threading.Lock()
        # name -> rdtype -> rrset
        self._data: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = defaultdict(dict)
        self._servfail: set[dns.name.Name] = set()
        self._silent: set[dns.name.Name] = set()
        self.queries: list[tuple[str, str]] = []  # (name, type) in arrival order
        self._signed: list[SignedZone] = []  # answered with DNSSEC (tests/harness/dnssec.py)
        self._servers: list[socketserver.BaseServer] = []

    # -- data -----------------------------------------------------------------------------

    def add_zone(self, text: str, origin: str = ".") -> None:
        """Add every record of `text` (zone file syntax; names absolute or relative
        to `origin`). Records add to what is already there."""
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        zone = dns.zone.from_text("\n".join(lines), origin=origin, relativize=False,
                                  check_origin=False)
        with self._lock:
            for name, node in zone.nodes.items():
                for rdataset in node.rdatasets:
                    existing = self._data[name].get(rdataset.rdtype)
                    if existing is None:
                        rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
                        rrset.update_ttl(rdataset.ttl)
                        self._data[name][rdataset.rdtype] = rrset
                        existing = rrset
                    for rd in rdataset:
                        existing.add(rd)

    def add(self, name: str, rdtype: str, *values: str, ttl: int = 300) -> None:
        """Add one record set, e.g. add("example.test", "TXT", '"v=spf1 -all"')."""
        body = "\n".join(f"{_absolute(name)} {ttl} IN {rdtype} {v}" for v in values)
        self.add_zone(body)

    def add_txt(self, name: str, text: str, ttl: int = 300) -> None:
        """Add a TXT record holding `text`, split into 255-byte strings as DNS needs."""
        data = text.encode()
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        quoted = " ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for c in chunks)
        self.add(name, "TXT", quoted, ttl=ttl)

    def add_signed_zone(self, zone: SignedZone) -> None:
        """Serve a DNSSEC-signed zone: its names are answered from it alone, with RRSIG
        and NSEC records when the query asks for them (the DO bit)."""
        with self._lock:
            self._signed.append(zone)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        n = dns.name.from_text(_absolute(name))
        with self._lock:
            if rdtype is None:
                self._data.pop(n, None)
            else:
                self._data.get(n, {}).pop(dns.rdatatype.from_text(rdtype), None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._servfail.clear()
            self._silent.clear()
            self._signed.clear()
            self.queries.clear()

    def servfail(self, name: str, on: bool = True) -> None:
        """Answer SERVFAIL for every query about `name`."""
        n = dns.name.from_text(_absolute(name))
        with self._lock:
            (self._servfail.add if on else self._servfail.discard)(n)

    def silence(self, name: str, on: bool = True) -> None:
        """Never answer queries about `name` (the client times out)."""
        n = dns.name.from_text(_absolute(name))
        with self._lock:
            (self._silent.add if on else self._silent.discard)(n)

    @property
    def nameserver(self) -> dict:
        """The product's `dns.nameservers` entry for this server."""
        return {"address": self.address, "port": self.port}

    # -- answering ----------------------------------------------------------------------

    def _exists(self, name: dns.name.Name) -> bool:
        if name in self._data and self._data[name]:
            return True
        # An empty non-terminal (a name with descendants) exists too: NODATA, not NXDOMAIN.
        return any(n.is_subdomain(name) and n != name for n in self._data)

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        q = query.question[0]
        with self._lock:
            self.queries.append((q.name.to_text(), dns.rdatatype.to_text(q.rdtype)))
            if q.name in self._silent:
                return None
            if q.name in self._servfail:
                response.flags &= ~dns.flags.AA
                response.set_rcode(dns.rcode.SERVFAIL)
                return response.to_wire()
            signed = next((z for z in self._signed if z.covers(q.name)), None)
            if signed is not None:
                want_dnssec = query.ednsflags & dns.flags.DO
                rcode, answer, authority = signed.answer(q.name, q.rdtype, bool(want_dnssec))
                response.set_rcode(rcode)
                response.answer.extend(answer)
                response.authority.extend(authority)
                if want_dnssec:
                    response.ednsflags |= dns.flags.DO
                return response.to_wire()
            name = q.name
            for _ in range(16):  # follow CNAME chains inside our data, bounded
                records = self._data.get(name, {})
                if q.rdtype in records:
                    response.answer.append(records[q.rdtype])
                    break
                cname = records.get(dns.rdatatype.CNAME)
                if cname is None or q.rdtype == dns.rdatatype.CNAME:
                    if not response.answer and not self._exists(name):
                        response.set_rcode(dns.rcode.NXDOMAIN)
                    break
                response.answer.append(cname)
                name = cname[0].target
                if name in self._servfail:
                    response.set_rcode(dns.rcode.SERVFAIL)
                    break
        return response.to_wire()

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> TestDnsServer:
        outer = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = outer.answer(data)
                if reply is None:
                    return
                try:
                    query = dns.message.from_wire(data)
                    limit = max(512, query.payload if query.edns >= 0 else 512)
                except dns.exception.DNSException:
                    limit = 512
                if len(reply) > limit:
                    msg = dns.message.from_wire(reply)
                    msg.flags |= dns.flags.TC
                    msg.answer.clear()
                    reply = msg.to_wire()
                sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                while True:
                    head = _recv_exact(sock, 2)
                    if head is None:
                        return
                    data = _recv_exact(sock, struct.unpack("!H", head)[0])
                    if data is None:
                        return
                    reply = outer.answer(data)
                    if reply is None:
                        return
                    sock.sendall(struct.pack("!H", len(reply)) + reply)

        class UdpServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
            daemon_threads = True
            allow_reuse_address = True

        class TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        # Bind UDP first on a free port, then TCP on the same number (retry if taken).
        for _ in range(20):
            udp = UdpServer((self.address, self._requested_port), Udp)
            port = udp.server_address[1]
            try:
                tcp = TcpServer((self.address, port), Tcp)
            except OSError:
                udp.server_close()
                if self._requested_port:
                    raise
                continue
            break
        else:
            raise RuntimeError("no free port for the test DNS server")
        self.port = port
        self._servers = [udp, tcp]
        for srv in self._servers:
            # A short poll interval keeps shutdown (once per test) fast.
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True,
                             name=f"test-dns-{type(srv).__name__}").start()
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers = []


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
