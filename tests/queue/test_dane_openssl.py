"""OpenSSL's own DANE implementation (`openssl s_client -dane_tlsa_rrdata`) as an
independent oracle: for each TLSA record and server chain, it and `dane.verify` must
agree, on the records `tlsa_for_certificate` (and so `mta dns --node`) writes too."""

from __future__ import annotations

import datetime as dt
import shutil
import ssl
import subprocess

import pytest
import trustme

from mta.queue.dane import Tlsa, tlsa_for_certificate, verify
from tests.queue.test_dane import HOST, chain_of, der, spki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def openssl_accepts(sink, record: Tlsa) -> bool:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"{sink.address}:{sink.port}", "-starttls", "smtp",
         "-dane_tlsa_domain", HOST, "-dane_tlsa_rrdata", str(record),
         "-dane_ee_no_namechecks", "-verify_return_error", "-brief"],
        input=b"QUIT\r\n", capture_output=True, timeout=30)
    return done.returncode == 0 and b"Verification: OK" in done.stderr


def test_openssl_and_we_agree(make_sink):
    root = trustme.CA()
    intermediate = root.create_child_ca()
    old = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    leaves = {
        "good": intermediate.issue_cert(HOST),
        "wrong name": intermediate.issue_cert("other.test"),
        "expired": intermediate.issue_cert(HOST, not_before=old,
                                           not_after=old + dt.timedelta(days=1)),
    }
    issuer = der(intermediate.cert_pem.bytes())
    stranger = chain_of(trustme.CA().issue_cert(HOST))[0]
    cases = []  # (leaf, record, expected)
    for name, leaf in leaves.items():
        own = chain_of(leaf)[0]
        cases += [
            (name, tlsa_for_certificate(own), True),  # DANE-EE: names and dates ignored
            (name, tlsa_for_certificate(own, 3, 0, 2), True),
            (name, tlsa_for_certificate(issuer, 2, 0, 1), name == "good"),
            (name, tlsa_for_certificate(issuer, 2, 1, 2), name == "good"),
            (name, tlsa_for_certificate(stranger), False),
        ]
    # The root's bare key: the server does not send the root's certificate.
    cases.append(("good", Tlsa(2, 1, 0, spki(der(root.cert_pem.bytes()))), True))

    sinks = {}
    for i, (name, leaf) in enumerate(leaves.items()):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(ctx)
        sinks[name] = make_sink(f"127.0.0.{2 + i}", tls_context=ctx)
    for name, record, expected in cases:
        ours = verify([record], chain_of(leaves[name]), [HOST])
        theirs = openssl_accepts(sinks[name], record)
        assert (ours.ok, theirs) == (expected, expected), (name, record.short, ours.reason)
