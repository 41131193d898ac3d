"""`mta keys rotate | import` (issue 16): the new key is published before it signs, the old
one stays published for its grace period, for sending domains and for forwarded mail.

Real parts: the keys are made and stored by the `mta` command on the test's PostgreSQL,
the records are served by the loopback DNS server, mail is signed by the real sending
pipeline and forwarder, and Perl Mail::DKIM (dkimpy for Ed25519) verifies it."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import dkim
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import update

from mta.checks.results import AuthResults
from mta.config import Settings
from mta.routing.forward import Forwarder, ensure_forwarding_key
from mta.sending.domains import domain_records
from mta.signing.keys import generate_private_key, private_key_to_pem
from mta.store.models import DkimKey
from tests.sending.test_service import SENDER, make_settings, world  # noqa: F401
from tests.signing.test_dkim_sign import dns_txt_func, mail_dkim_verify

LATER = timedelta(hours=1, minutes=1)  # past the --delay 1h of the rotations below


def mta(config, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args, "--config", str(config)],
                          capture_output=True, timeout=120, input=stdin)


def ok_json(done: subprocess.CompletedProcess):
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def selectors(data: bytes, field: str = "DKIM-Signature") -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    values = re.findall(rf"^{field}:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.M | re.I)
    return [re.search(r"\bs=([^;\s]+)", v).group(1) for v in values]


@pytest.fixture
def config(tmp_path, db_url, dns_server):
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump({
        "node": {"hostname": "mta.sender.test"}, "state_dir": str(tmp_path / "state"),
        "database": {"url": db_url}, "secret_key": "test-secret-key",
        "srs": {"domain": "fwd.test", "secrets": ["srs-secret"]},
        "dns": {"nameservers": [dns_server.nameserver], "timeout": "2s"}}))
    return path


def service_with_clock(world, shift: list[timedelta]):  # noqa: F811
    world.ctx = dataclasses.replace(world.ctx, clock=lambda: datetime.now(UTC) + shift[0])
    return world.service()


async def test_sending_rotation_publishes_first_switches_at_not_before_and_both_verify(
        world, config, tmp_path):  # noqa: F811
    before = ok_json(mta(config, "keys", "show", "sender.test", "--json"))
    old = {k["algorithm"]: k["selector"] for k in before}
    assert [k["state"] for k in before] == ["active", "active"]

    rotated = ok_json(mta(config, "keys", "rotate", "sender.test", "--delay", "1h",
                          "--grace", "1d", "--json"))
    assert {r["algorithm"] for r in rotated} == {"rsa", "ed25519"}
    new = {r["algorithm"]: r["selector"] for r in rotated}
    for r in rotated:
        assert r["state"] == "pending" and new[r["algorithm"]] != old[r["algorithm"]]
        not_before = datetime.fromisoformat(r["not_before"])
        [replaced] = r["replaces"]
        assert replaced["selector"] == old[r["algorithm"]]
        assert datetime.fromisoformat(replaced["retired_at"]) == not_before + timedelta(days=1)
        world.dns.add_txt(r["name"], r["content"])  # what the operator is told to publish
    text = mta(config, "keys", "show", "sender.test").stdout.decode()
    assert text.count("pending  TXT") == 2 and text.count("active   TXT") == 2, text

    # During the grace period `mta dns` lists both selectors, and both are live.
    records = ok_json(mta(config, "dns", "sender.test", "--json"))
    dkim_records = {r["name"].split(".")[0]: r["state"] for r in records
                    if "._domainkey." in r["name"]}
    assert dkim_records == {s: "ok" for s in [*old.values(), *new.values()]}

    shift = [timedelta(0)]
    service = service_with_clock(world, shift)
    await service.send(world.account, {"from": SENDER, "to": ["bob@rcpt.test"],
                                       "subject": "before the switch", "text": "one\n"})
    shift[0] = LATER  # the same service (its key cache too), after not_before
    await service.send(world.account, {"from": SENDER, "to": ["bob@rcpt.test"],
                                       "subject": "after the switch", "text": "two\n"})
    first, second = world.sink.wait_for(2)[:2]
    assert selectors(first.data) == [old["rsa"], old["ed25519"]]
    assert selectors(second.data) == [new["rsa"], new["ed25519"]]
    for got, sels in ((first, old), (second, new)):
        out = mail_dkim_verify(got.data, world.dns, tmp_path)
        assert f"sig pass sender.test {sels['rsa']}" in out, out
        d = dkim.DKIM(got.data)
        assert d.verify(idx=0, dnsfunc=dns_txt_func(world.dns))
        assert d.verify(idx=1, dnsfunc=dns_txt_func(world.dns))  # Ed25519

    # After the grace period the old records are no longer asked for.
    async with world.db.session() as s:
        _, records = await domain_records(s, make_settings(), "sender.test",
                                          now=datetime.now(UTC) + timedelta(days=2))
    names = {r["name"].split(".")[0] for r in records if "._domainkey." in r["name"]}
    assert names == set(new.values())


async def test_a_second_rotation_waits_for_the_first(world, config):  # noqa: F811
    ok_json(mta(config, "keys", "rotate", "sender.test", "--algorithm", "rsa", "--json"))
    again = mta(config, "keys", "rotate", "sender.test", "--algorithm", "rsa")
    assert again.returncode == 1 and again.stdout == b""
    err = again.stderr.decode()
    assert err.count("\n") == 1 and "already under way" in err, err


async def test_the_sending_domain_names_the_selector_that_signs_now(world, config):  # noqa: F811
    def listed() -> str:
        [domain] = [d for d in ok_json(mta(config, "domains", "list", "--json"))
                    if d["name"] == "sender.test"]
        return domain["dkim_selector"]

    old = listed()
    pending = ok_json(mta(config, "keys", "rotate", "sender.test", "--algorithm", "rsa",
                          "--delay", "1h", "--json"))
    assert listed() == old  # published, but the old key still signs
    async with world.db.session() as s:  # the rotation takes over: make it due now
        await s.execute(update(DkimKey).where(DkimKey.selector == pending[0]["selector"])
                        .values(not_before=datetime.now(UTC) - timedelta(seconds=1)))
    assert listed() == pending[0]["selector"] != old


async def test_imported_keys_sign_and_verify(world, config, tmp_path):  # noqa: F811
    rsa_pem = tmp_path / "rsa.pem"
    rsa_pem.write_bytes(private_key_to_pem(generate_private_key("rsa-sha256", 2048)))
    imported = ok_json(mta(config, "keys", "import", "sender.test", "--selector", "Imp1",
                           "--key", str(rsa_pem), "--delay", "0", "--json"))
    ed = private_key_to_pem(ed25519.Ed25519PrivateKey.generate())
    imported += ok_json(mta(config, "keys", "import", "sender.test", "--selector", "imp1ed",
                            "--key", "-", "--delay", "0", "--json", stdin=ed))
    assert [(r["selector"], r["state"]) for r in imported] == [("imp1", "active"),
                                                               ("imp1ed", "active")]
    for r in imported:
        world.dns.add_txt(r["name"], r["content"])
    states = {k["selector"]: k["state"]
              for k in ok_json(mta(config, "keys", "list", "--domain", "sender.test",
                                   "--json"))}
    assert sorted(states.values()) == ["active", "active", "retiring", "retiring"]

    await world.service().send(world.account, {"from": SENDER, "to": ["bob@rcpt.test"],
                                                "subject": "imported", "text": "hi\n"})
    [got] = world.sink.wait_for(1)
    assert selectors(got.data) == ["imp1", "imp1ed"]
    assert "sig pass sender.test imp1" in mail_dkim_verify(got.data, world.dns, tmp_path)
    assert dkim.DKIM(got.data).verify(idx=1, dnsfunc=dns_txt_func(world.dns))


async def test_bad_input_is_one_line_and_exit_1(world, config, tmp_path):  # noqa: F811
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n"
                       "-----END PRIVATE KEY-----\n")
    small = tmp_path / "small.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(small), "512"], check=True,
                   capture_output=True)
    good = tmp_path / "good.pem"
    good.write_bytes(private_key_to_pem(generate_private_key("rsa-sha256", 2048)))
    ed = tmp_path / "ed.pem"
    ed.write_bytes(private_key_to_pem(ed25519.Ed25519PrivateKey.generate()))
    cases = [
        (["import", "sender.test", "--selector", "x1", "--key", str(garbage)],
         "is not a PEM private key"),
        (["import", "sender.test", "--selector", "x1", "--key", str(small)],
         "RSA key of 512 bits is refused"),
        (["import", "sender.test", "--selector", "x1", "--key", str(tmp_path / "none")],
         "cannot read"),
        (["import", "nowhere.test", "--selector", "x1", "--key", str(good)],
         "unknown domain nowhere.test"),
        (["rotate", "nowhere.test"], "unknown domain nowhere.test"),
        (["import", "sender.test", "--selector", "bad_sel", "--key", str(good)],
         "invalid selector"),
        (["import", "fwd.test", "--selector", "x1", "--key", str(ed)], "RSA only"),
        (["rotate", "sender.test", "--grace", "soon"], "expected a duration"),
    ]
    for args, expected in cases:
        done = mta(config, "keys", *args)
        err = done.stderr.decode()
        assert done.returncode == 1 and done.stdout == b"", (args, err)
        assert err.startswith("mta: ") and err.count("\n") == 1 and expected in err, (args,
                                                                                     err)


async def test_forwarding_rotation_signs_dkim_and_arc_with_the_new_key_after_not_before(
        db, config, dns_server, tmp_path):
    settings = Settings()
    settings.node.hostname = "mx.fwd.test"
    settings.secret_key = "test-secret-key"
    settings.srs.domain, settings.srs.secrets = "fwd.test", ["srs-secret"]
    first = await ensure_forwarding_key(db, settings)  # what a node does at start
    dns_server.add_txt(first.dns_name, first.dns_txt_value())

    [rotated] = ok_json(mta(config, "keys", "rotate", "fwd.test", "--delay", "1h",
                            "--json"))
    assert rotated["purpose"] == "forwarding" and rotated["replaces"][0]["selector"] == \
        first.selector == "mta-fwd"
    dns_server.add_txt(rotated["name"], rotated["content"])
    # (exit 1: the SRS domain's MX and SPF are not published in this test)
    records = json.loads(mta(config, "dns", "fwd.test", "--forwarding", "--json").stdout)
    assert {(r["name"], r["state"]) for r in records if "._domainkey." in r["name"]} == {
        (first.dns_name, "ok"), (rotated["name"], "ok")}

    shift = [timedelta(0)]
    forwarder = Forwarder(settings, db, clock=lambda: datetime.now(UTC) + shift[0])
    raw = (b"From: alice@sender.test\r\nTo: hello@example.test\r\nSubject: fwd\r\n"
           b"Message-ID: <f1@sender.test>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n"
           b"\r\nhello\r\n")
    copies = []
    for delta in (timedelta(0), LATER):
        shift[0] = delta
        copies.append((await forwarder.copy(raw, "alice@sender.test", AuthResults())).raw)
    for data, selector in zip(copies, ("mta-fwd", rotated["selector"]), strict=True):
        assert selectors(data) == [selector]
        assert selectors(data, "ARC-Message-Signature") == [selector]
        assert selectors(data, "ARC-Seal") == [selector]
        out = mail_dkim_verify(data, dns_server, tmp_path)
        assert f"sig pass fwd.test {selector}" in out, out
        assert "result pass" in mail_dkim_verify(data, dns_server, tmp_path, mode="arc")
