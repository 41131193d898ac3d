"""Sending domains: onboarding (keys encrypted at rest, bounce subdomain, subdomains on
their own) and the `mta domains onboard` / `mta dns` commands against real PostgreSQL and
the loopback DNS server."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from sqlalchemy import select

from mta.sending.domains import (
    DomainError,
    domain_records,
    load_signing_keys,
    onboard_sending_domain,
)
from mta.signing.keys import KeyDecryptionError, KeyVault, private_key_to_pem
from mta.store.models import DkimKey, SendingDomain
from tests.sending.test_service import add_account, make_settings, publish


async def test_onboarding_creates_encrypted_keys_and_a_bounce_subdomain(db):
    settings = make_settings()
    await add_account(db, zone="example.test")
    async with db.session() as s:
        row = await onboard_sending_domain(s, settings, "Example.TEST.", ed25519=True)
        assert (row.name, row.return_path_domain, row.status) == (
            "example.test", "mta-bounce.example.test", "pending")
    async with db.session() as s:
        keys = (await s.execute(select(DkimKey))).scalars().all()
        signing = await load_signing_keys(s, KeyVault(settings.secret_key), "example.test")
    assert sorted(k.algorithm for k in keys) == ["ed25519", "rsa"]
    assert [k.algorithm for k in signing] == ["rsa-sha256", "ed25519-sha256"]
    assert signing[0].private_key.key_size == 2048
    for k, sk in zip(sorted(keys, key=lambda k: k.algorithm, reverse=True), signing,
                     strict=True):
        der_body = private_key_to_pem(sk.private_key).split(b"\n")[1]
        assert der_body not in k.private_key_encrypted  # never stored in the clear
    with pytest.raises(KeyDecryptionError):  # another secret cannot open them
        async with db.session() as s:
            await load_signing_keys(s, KeyVault("wrong"), "example.test")


async def test_onboarding_is_idempotent_and_subdomains_are_separate(db):
    settings = make_settings()
    await add_account(db, zone="example.test")
    async with db.session() as s:
        first = await onboard_sending_domain(s, settings, "example.test")
    async with db.session() as s:
        again = await onboard_sending_domain(s, settings, "example.test")
        sub = await onboard_sending_domain(s, settings, "mail.example.test")
    assert again.id == first.id and sub.id != first.id
    assert sub.return_path_domain == "mta-bounce.mail.example.test"
    async with db.session() as s:
        assert len((await s.execute(select(DkimKey))).scalars().all()) == 2
        _, records = await domain_records(s, settings, "mail.example.test")
    names = {(r["type"], r["name"]) for r in records}
    assert names == {("MX", "mta-bounce.mail.example.test"),
                     ("TXT", "mta-bounce.mail.example.test"),
                     ("TXT", f"{sub.dkim_selector}._domainkey.mail.example.test"),
                     ("TXT", "_dmarc.mail.example.test")}


async def test_onboarding_refusals(db):
    settings = make_settings()
    with pytest.raises(DomainError, match="no zone"):
        async with db.session() as s:
            await onboard_sending_domain(s, settings, "nozone.test")
    await add_account(db, zone="example.test")
    settings.secret_key = None
    with pytest.raises(DomainError, match="secret_key"):
        async with db.session() as s:
            await onboard_sending_domain(s, settings, "example.test")


# --- the commands -------------------------------------------------------------------------------


def mta(config, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def config(tmp_path, db_url, dns_server):
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump({
        "node": {"hostname": "mta.sender.test"}, "state_dir": str(tmp_path / "state"),
        "database": {"url": db_url}, "secret_key": "test-secret-key",
        "dns": {"nameservers": [dns_server.nameserver], "timeout": "2s"}}))
    return path


async def test_cli_onboard_then_dns_reports_missing_ok_and_wrong(db, config, dns_server):
    await add_account(db, zone="sender.test")
    done = mta(config, "domains", "onboard", "sender.test", "--sending", "--ed25519")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "MX   mta-bounce.sender.test 10 mta.sender.test" in done.stdout
    assert "k=ed25519" in done.stdout
    # A new domain starts DMARC with reports and no enforcement.
    assert "v=DMARC1; p=none; rua=mailto:postmaster@sender.test" in done.stdout

    missing = mta(config, "dns", "sender.test")
    assert missing.returncode == 1, missing.stdout
    assert missing.stdout.count("missing") == 5 and "misconfigured" in missing.stdout

    await publish(db, make_settings(), dns_server, "sender.test")
    ready = mta(config, "dns", "sender.test")
    assert ready.returncode == 0, ready.stdout
    lines = [ln for ln in ready.stdout.splitlines() if ln.startswith(("ok", "missing"))]
    assert len(lines) == 5 and all(ln.startswith("ok ") for ln in lines)
    async with db.session() as s:
        assert (await s.execute(select(SendingDomain.status))).scalar_one() == "ready"

    async with db.session() as s:
        selector = (await s.execute(select(DkimKey.selector).where(
            DkimKey.algorithm == "rsa"))).scalar_one()
    dns_server.remove(f"{selector}._domainkey.sender.test", "TXT")
    dns_server.add_txt(f"{selector}._domainkey.sender.test", "v=DKIM1; k=rsa; p=AAAA")
    wrong = mta(config, "dns", "sender.test")
    assert wrong.returncode == 1 and "wrong" in wrong.stdout

    dns_server.servfail("_dmarc.sender.test")
    dns_server.remove(f"{selector}._domainkey.sender.test", "TXT")
    await publish(db, make_settings(), dns_server, "sender.test")
    unknown = mta(config, "dns", "sender.test")
    assert unknown.returncode == 3 and "unknown" in unknown.stdout


def test_cli_refuses_a_domain_without_zone(config):
    done = mta(config, "domains", "onboard", "nozone.test", "--sending")
    assert done.returncode == 1 and "no zone" in done.stderr and done.stdout == ""


async def test_cli_dns_for_a_routing_zone_and_for_the_node(db, config, dns_server, tmp_path):
    import json

    await add_account(db, zone="routed.test")
    routed = mta(config, "dns", "routed.test")  # a routing zone, no flag needed
    assert "MX   routed.test 10 mta.sender.test" in routed.stdout, routed.stdout + routed.stderr
    assert "v=spf1 include:_spf.mta.sender.test ~all" in routed.stdout
    assert "_mta-sts.routed.test" in routed.stdout and routed.returncode == 1
    unknown = mta(config, "dns", "elsewhere.test")
    assert unknown.returncode == 1 and "is not one of our domains" in unknown.stderr

    cfg = yaml.safe_load(config.read_text())
    cfg["srs"] = {"domain": "srs.sender.test", "secrets": ["s"]}
    config.write_text(yaml.safe_dump(cfg))
    node = mta(config, "dns", "--node", "--json")
    assert node.returncode == 1, node.stderr  # nothing published yet
    records = json.loads(node.stdout)
    by = {(r["type"], r["name"]): r for r in records}
    assert by[("TXT", "_spf.mta.sender.test")]["content"] == "v=spf1 a:mta.sender.test -all"
    assert by[("MX", "srs.sender.test")]["content"] == "mta.sender.test"
    assert by[("TXT", "srs.sender.test")]["content"].startswith(
        "v=spf1 include:_spf.mta.sender.test")
    dkim = by[("TXT", "mta-fwd._domainkey.srs.sender.test")]
    assert dkim["content"].startswith("v=DKIM1; k=rsa; p=")
    assert {r["state"] for r in records} == {"missing"}

    dns_server.add_txt("_spf.mta.sender.test", "v=spf1 a:mta.sender.test -all")
    dns_server.add("srs.sender.test", "MX", "10 mta.sender.test.")
    dns_server.add_txt("srs.sender.test", "v=spf1 include:_spf.mta.sender.test ~all")
    dns_server.add_txt("mta-fwd._domainkey.srs.sender.test", dkim["content"])
    ready = mta(config, "dns", "--node")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert ready.stdout.count("ok ") == 4
    # The SRS domain by name gives its part of the same records.
    assert "mta-fwd._domainkey.srs.sender.test" in mta(config, "dns", "srs.sender.test").stdout


def test_cli_dns_node_prints_the_mx_tlsa_record(config, dns_server, tls, tmp_path):
    """`3 1 1` of the MX certificate, as the usual openssl recipe computes it, checked
    live like the other records."""
    import hashlib
    import json

    cert, key = tls.write_server_files(tmp_path, "mta.sender.test")
    cfg = yaml.safe_load(config.read_text())
    cfg["listeners"] = {"mx": {"tls_cert": str(cert), "tls_key": str(key)}}
    config.write_text(yaml.safe_dump(cfg))
    pubkey = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                            capture_output=True, check=True).stdout
    spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pubkey,
                          capture_output=True, check=True).stdout
    expected = f"3 1 1 {hashlib.sha256(spki).hexdigest()}"

    out = mta(config, "dns", "--node", "--json")
    records = {(r["type"], r["name"]): r for r in json.loads(out.stdout)}
    tlsa = records[("TLSA", "_25._tcp.mta.sender.test")]
    assert tlsa["content"] == expected and tlsa["state"] == "missing"

    dns_server.add("_25._tcp.mta.sender.test", "TLSA", expected)
    text = mta(config, "dns", "--node").stdout
    assert f"ok       TLSA _25._tcp.mta.sender.test {expected}" in text, text
    assert "only in a DNSSEC-signed zone" in text
