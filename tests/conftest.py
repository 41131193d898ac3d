"""Shared fixtures: every test talks to real peers on loopback.

- `pg` / `db_url` / `db`: a real PostgreSQL cluster (session) and a fresh migrated
  database per test.
- `dns_server`: an authoritative DNS server on 127.0.0.1 serving the test's records.
- `tls`: a test certificate authority (trustme) issuing server certificates.
- `smtp_sink` / `make_sink`: recording SMTP servers on 127.0.0.2, 127.0.0.3, ...
- `make_node`: an `mta serve` process started from a config the test builds.
- `validating_resolver`: unbound on loopback validating DNSSEC in front of `dns_server`,
  trusting the keys of the test's signed zones (tests/harness/dnssec.py).
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

import pytest
import trustme

from mta.store.db import Database
from tests.harness.dns_server import TestDnsServer
from tests.harness.node import NodeProcess
from tests.harness.postgres import TestPostgres
from tests.harness.smtp_sink import SmtpSink
from tests.harness.unbound import ValidatingResolver, unbound_available

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CONFORMANCE = SHARED / "conformance"


def server_owned_dir(prefix: str) -> Path:
    """A fresh directory outside pytest's tmp tree for a PostgreSQL cluster: when we are
    root the server runs as an unprivileged user that must traverse its parents, and
    pytest resets its own tmp root to mode 0700 at every start (also in parallel runs)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def pg() -> TestPostgres:
    base = server_owned_dir("mta-test-pg-")
    server = TestPostgres(base).start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def own_pg():
    """A PostgreSQL cluster of this test alone, with one migrated database `mta`
    (`own_pg.url("mta")`): for tests that stop and start the database."""
    from mta.store.embedded import EmbeddedPostgres
    from mta.store.migrate import upgrade

    base = server_owned_dir("mta-test-own-pg-")
    cluster = EmbeddedPostgres(base, database="postgres",
                               extra_settings=("fsync = off", "full_page_writes = off"))
    cluster.start()
    cluster.create_database("mta")
    upgrade(cluster.url("mta"))
    yield cluster
    cluster.stop(mode="immediate")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def db_url(pg: TestPostgres) -> str:
    url = pg.new_database()
    yield url
    pg.discard(url)


@pytest.fixture
async def db(db_url: str) -> Database:
    database = Database(db_url, pool_size=5)
    yield database
    await database.close()


@pytest.fixture
def dns_server() -> TestDnsServer:
    server = TestDnsServer().start()
    yield server
    server.stop()


class TestCA:
    """Issues server certificates from one trustme CA for the whole run."""

    def __init__(self) -> None:
        self.ca = trustme.CA()

    def server_context(self, *names: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ca.issue_cert(*(names or ("localhost",))).configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def write_server_files(self, directory: Path, *names: str) -> tuple[Path, Path]:
        """Write a certificate chain and key for `names`; returns (cert, key) paths."""
        cert = self.ca.issue_cert(*(names or ("localhost",)))
        cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        cert_path.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        key_path.write_bytes(cert.private_key_pem.bytes())
        return cert_path, key_path

    def write_ca_file(self, path: Path) -> Path:
        self.ca.cert_pem.write_to_path(str(path))
        return path


@pytest.fixture(scope="session")
def tls() -> TestCA:
    return TestCA()


@pytest.fixture
def make_sink():
    sinks: list[SmtpSink] = []

    def factory(address: str = "127.0.0.2", **kw) -> SmtpSink:
        sink = SmtpSink(address, **kw).start()
        sinks.append(sink)
        return sink

    yield factory
    for s in sinks:
        s.stop()


@pytest.fixture
def smtp_sink(make_sink) -> SmtpSink:
    return make_sink("127.0.0.2")


@pytest.fixture
def validating_resolver(dns_server):
    """Start a validating resolver: `validating_resolver(signed=[SignedZone, ...],
    insecure=["plain.test", ...])`; its `.nameserver` goes into `dns.nameservers`.
    Every zone it is to answer must be named (it reaches no other server)."""
    if not unbound_available():
        pytest.skip("unbound is not installed (scripts/test.sh installs it)")
    resolvers: list[ValidatingResolver] = []
    base = Path(tempfile.mkdtemp(prefix="mta-test-unbound-"))

    def factory(signed=(), insecure=()) -> ValidatingResolver:
        for zone in signed:
            dns_server.add_signed_zone(zone)
        resolver = ValidatingResolver(base / str(len(resolvers)), dns_server,
                                      signed=signed, insecure=insecure)
        resolvers.append(resolver)
        return resolver.start()

    yield factory
    for r in resolvers:
        r.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_node(dns_server):
    nodes: list[NodeProcess] = []
    base = server_owned_dir("mta-test-node-")

    def factory(config: dict | None = None, **kw) -> NodeProcess:
        node = NodeProcess(base / f"node{len(nodes)}", config or {},
                           dns_nameserver=dns_server.nameserver, **kw)
        node.start()
        nodes.append(node)
        return node

    yield factory
    for n in nodes:
        n.stop()
    shutil.rmtree(base, ignore_errors=True)


def conformance_file(*parts: str) -> Path:
    """A file of ../shared/conformance, or skip the test with a clear message."""
    path = CONFORMANCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"conformance suite not found at {path} (clone ../shared beside the repo)")
    return path
