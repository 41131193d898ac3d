"""A real validating resolver for tests: unbound from Debian on a loopback port.

It is what an operator runs beside a node for DANE (`dns.dnssec: trust_ad`): a recursive
resolver that checks DNSSEC signatures and sets the AD bit on answers it could
authenticate. Here it knows no root servers it could reach; every zone a test uses is a
stub zone pointing at the test DNS server (tests/harness/dns_server.py), and the signed
ones have their key configured as a trust anchor (tests/harness/dnssec.py). A zone with
no anchor is "insecure": answered, never with AD. A signed zone whose signatures do not
match its anchor is "bogus": SERVFAIL.

    resolver = ValidatingResolver(tmp_dir, dns_server, signed=[zone],
                                  insecure=["plain.test"]).start()
    ... DnsResolver([resolver.nameserver], dnssec=True) ...
    resolver.stop()

Skipped when unbound is not installed (scripts/test.sh installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query

from tests.harness.dns_server import TestDnsServer
from tests.harness.dnssec import SignedZone

__all__ = ["ValidatingResolver", "unbound_available"]

UNBOUND = "/usr/sbin/unbound"


def unbound_available() -> bool:
    return Path(UNBOUND).exists() or shutil.which("unbound") is not None


def _free_udp_and_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for unbound")


class ValidatingResolver:
    def __init__(self, directory: Path, upstream: TestDnsServer, *,
                 signed: Iterable[SignedZone] = (), insecure: Iterable[str] = ()) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address = "127.0.0.1"
        self.port = _free_udp_and_tcp_port()
        self.signed = list(signed)
        zones = [z.origin.to_text() for z in self.signed] + [
            z.rstrip(".") + "." for z in insecure]
        stub = f"{upstream.address}@{upstream.port}"
        lines = [
            "server:",
            f"  interface: {self.address}",
            f"  port: {self.port}",
            "  do-ip6: no",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.dir}"',
            f'  pidfile: "{self.dir / "unbound.pid"}"',
            "  use-syslog: no",
            f'  logfile: "{self.dir / "unbound.log"}"',
            "  verbosity: 1",
            "  val-log-level: 2",  # why an answer was bogus, in the log
            "  do-not-query-localhost: no",  # our authoritative server is on loopback
            "  qname-minimisation: no",
            "  aggressive-nsec: no",
            "  trust-anchor-signaling: no",
            "  root-key-sentinel: no",
            "  access-control: 127.0.0.0/8 allow",
            "  module-config: \"validator iterator\"",
            *(f'  trust-anchor: "{z.trust_anchor}"' for z in self.signed),
            # unbound answers names under test., invalid. and the like itself (RFC 6761);
            # these tests use such names for real zones.
            *(f'  local-zone: "{tld}." nodefault' for tld in
              sorted({z.rstrip(".").rpartition(".")[2] for z in zones})),
            "remote-control:",
            "  control-enable: no",
        ]
        for zone in zones:
            lines += ["stub-zone:", f'  name: "{zone}"', f"  stub-addr: {stub}"]
        self.config = self.dir / "unbound.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen | None = None

    @property
    def nameserver(self) -> dict:
        """The product's `dns.nameservers` entry for this resolver."""
        return {"address": self.address, "port": self.port}

    def log_text(self) -> str:
        try:
            return (self.dir / "unbound.log").read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 20.0) -> ValidatingResolver:
        subprocess.run([UNBOUND + "-checkconf", str(self.config)], check=True,
                       capture_output=True, text=True)
        self._proc = subprocess.Popen([UNBOUND, "-d", "-c", str(self.config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        probe = dns.message.make_query("localhost.", "A")
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"unbound exited: {err}{self.log_text()}")
            try:
                dns.query.udp(probe, self.address, port=self.port, timeout=0.5)
                return self
            except (OSError, dns.exception.Timeout):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"unbound did not answer: {self.log_text()}") from None
                time.sleep(0.05)

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        """Ask as a stub resolver that wants the AD bit (RFC 6840 §5.7)."""
        q = dns.message.make_query(name, rdtype)
        q.flags |= dns.flags.AD
        return dns.query.udp(q, self.address, port=self.port, timeout=5)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None
