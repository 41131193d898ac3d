"""Email Sending admin calls through the official SDK: sending subdomains with their DNS
records, and the suppression list (cursor pagination, edit, delete, bulk import)."""

from __future__ import annotations

import base64

import pytest
from cloudflare import BadRequestError, NotFoundError, PermissionDeniedError
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy import select

from mta.signing.keys import KeyVault, public_key_b64
from mta.store import suppression
from mta.store.models import DkimKey, SendingDomain

SEND_EDIT = "email_sending:edit"


def test_sending_subdomains(admin):
    cf = admin.sdk(SEND_EDIT)
    z = admin.zone_id
    sub = cf.email_sending.subdomains.create(zone_id=z, name="news.example.test")
    assert (sub.name, sub.enabled, sub.return_path_domain) == (
        "news.example.test", True, "mta-bounce.news.example.test")
    assert len(sub.tag) == 32 and sub.dkim_selector.startswith("mta")
    apex = cf.email_sending.subdomains.create(zone_id=z, name="example.test")
    assert [s.name for s in cf.email_sending.subdomains.list(zone_id=z)] == [
        "example.test", "news.example.test"]
    assert cf.email_sending.subdomains.get(sub.tag, zone_id=z).name == "news.example.test"

    with pytest.raises(BadRequestError):
        cf.email_sending.subdomains.create(zone_id=z, name="news.example.test")
    with pytest.raises(BadRequestError):
        cf.email_sending.subdomains.create(zone_id=z, name="news.elsewhere.test")
    with pytest.raises(BadRequestError):
        cf.email_sending.subdomains.create(zone_id=z, name="*.example.test")

    records = cf.email_sending.subdomains.dns.get(sub.tag, zone_id=z)
    by_name = {(r.type, r.name): r for r in records}
    assert by_name[("MX", "mta-bounce.news.example.test")].content == "mx.node.test"
    assert by_name[("TXT", "mta-bounce.news.example.test")].content.startswith(
        "v=spf1 include:_spf.mx.node.test")
    assert by_name[("TXT", "_dmarc.news.example.test")].content.startswith("v=DMARC1")
    dkim = by_name[("TXT", f"{sub.dkim_selector}._domainkey.news.example.test")].content
    p = dkim.split("p=")[1]
    assert load_der_public_key(base64.b64decode(p)).key_size == 2048

    # The stored private key decrypts with the node's secret and matches the record.
    async def key(s):
        return (await s.execute(select(DkimKey).where(
            DkimKey.domain == "news.example.test"))).scalar_one()

    row = admin.db_run(key)
    private = KeyVault(admin.settings.secret_key).decrypt(
        row.private_key_encrypted, f"news.example.test/{sub.dkim_selector}".encode())
    assert public_key_b64(private) == p

    # Once a rotation's new key takes over, the subdomain names the selector that signs.
    async def rotated(s):
        s.add(DkimKey(domain="news.example.test", selector="mta2099rot", algorithm="rsa",
                      purpose="sending", private_key_encrypted=row.private_key_encrypted,
                      public_key=row.public_key, active=True))

    admin.db_run(rotated)
    assert cf.email_sending.subdomains.get(sub.tag, zone_id=z).dkim_selector == "mta2099rot"
    assert {s.name: s.dkim_selector for s in cf.email_sending.subdomains.list(zone_id=z)} == {
        "example.test": apex.dkim_selector, "news.example.test": "mta2099rot"}

    if hasattr(SendingDomain, "preview_enabled"):
        edited = cf.email_sending.subdomains.edit(sub.tag, zone_id=z, preview_enabled=True,
                                                  drop_suppressed_recipients=True)
        assert (edited.preview_enabled, edited.drop_suppressed_recipients) == (True, True)
        assert cf.email_sending.subdomains.get(sub.tag, zone_id=z).preview_enabled is True
    else:  # the flags need migration 0003_admin; until then the call still answers
        assert cf.email_sending.subdomains.edit(sub.tag, zone_id=z).tag == sub.tag

    gone = cf.email_sending.subdomains.delete(sub.tag, zone_id=z)
    assert gone.success is True and gone.errors == []
    with pytest.raises(NotFoundError):
        cf.email_sending.subdomains.get(sub.tag, zone_id=z)
    assert admin.db_run(lambda s: _keys(s, "news.example.test")) == []
    assert [s.tag for s in cf.email_sending.subdomains.list(zone_id=z)] == [apex.tag]


async def _keys(s, domain):
    return list((await s.execute(select(DkimKey).where(DkimKey.domain == domain))).scalars())


def test_suppressions(admin):
    cf = admin.sdk(SEND_EDIT)
    a = admin.account_id
    made = [cf.email_sending.suppressions.create(account_id=a, email=f"s{i}@dest.test",
                                                 note=f"n{i}") for i in range(7)]
    assert made[0].scope.type == "account"
    scoped = cf.email_sending.suppressions.create(
        account_id=a, email="S0@Dest.test", scope={"type": "sending_domain",
                                                  "value": "News.Example.test."})
    assert (scoped.scope.type, scoped.scope.value) == ("sending_domain", "news.example.test")

    page = cf.email_sending.suppressions.list(account_id=a, per_page=3)
    assert len(page.result) == 3 and page.result_info.cursor
    every = list(cf.email_sending.suppressions.list(account_id=a, per_page=3))
    assert sorted(e.id for e in every) == sorted([m.id for m in made] + [scoped.id])
    only = list(cf.email_sending.suppressions.list(account_id=a, scope_type="sending_domain"))
    assert [e.id for e in only] == [scoped.id]
    assert [e.email for e in cf.email_sending.suppressions.list(
        account_id=a, email="s3@dest.test")] == ["s3@dest.test"]

    got = cf.email_sending.suppressions.get(made[1].id, account_id=a)
    assert (got.email, got.reason, got.note, got.read_only, got.expires_at) == (
        "s1@dest.test", "manual", "n1", False, None)
    edited = cf.email_sending.suppressions.edit(made[1].id, account_id=a, note="changed",
                                                expires_at="2030-01-01T00:00:00Z")
    assert edited.note == "changed" and edited.expires_at.year == 2030
    assert cf.email_sending.suppressions.edit(made[1].id, account_id=a,
                                              expires_at=None).expires_at is None
    with pytest.raises(BadRequestError) as exc:
        cf.email_sending.suppressions.edit(made[1].id, account_id=a, scope={"type": "account"})
    assert "scope_immutable" in exc.value.body["errors"][0]["detail"]

    assert cf.email_sending.suppressions.delete(made[2].id, account_id=a).id == made[2].id
    with pytest.raises(NotFoundError):
        cf.email_sending.suppressions.get(made[2].id, account_id=a)

    # A complaint entry (added by the bounce/ARF intake) is read-only here.
    async def complaint(s):
        return (await suppression.add(s, a, "angry@dest.test", "complaint",
                                      now=_now())).id

    cid = admin.db_run(complaint)
    with pytest.raises(PermissionDeniedError):
        cf.email_sending.suppressions.delete(cid, account_id=a)

    result = cf.email_sending.suppressions.import_(account_id=a, items=[
        {"email": "b1@dest.test"}, {"email": "B1@dest.test"}, {"email": "not-an-address"},
        {"email": "angry@dest.test"},
        {"email": "b2@dest.test", "scope": {"type": "sending_domain", "value": "x.test"},
         "note": "bulk"}])
    assert (result.total, result.processed, result.deduplicated, result.invalid,
            result.skipped, result.errors) == (5, 2, 1, 1, 1, 0)
    assert [i.status for i in result.items] == ["processed", "invalid", "skipped", "processed"]
    assert [i.index for i in result.items] == [0, 2, 3, 4]
    assert result.items[3].scope.value == "x.test"


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)
