"""Email Routing through the official SDK (`cloudflare`), with strict response
validation: settings, DNS, rules, catch-all, destination addresses."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from cloudflare import BadRequestError, NotFoundError, PermissionDeniedError
from sqlalchemy import select
from sqlalchemy.engine import make_url

from mta.routing.destinations import verification_token
from mta.store.db import Database
from mta.store.models import AuditEntry, RoutingDomain

EDIT = ("email_routing:read", "email_routing:edit")


def _publish_routing_records(dns_server, name: str) -> None:
    dns_server.add(name, "MX", "10 mx.node.test.")
    dns_server.add_txt(name, "v=spf1 include:_spf.mx.node.test ~all")


def _audit(admin, **where) -> list[AuditEntry]:
    async def q():
        db = Database(admin.settings.database.url, pool_size=1)
        try:
            async with db.session() as s:
                stmt = select(AuditEntry).order_by(AuditEntry.id)
                for k, v in where.items():
                    stmt = stmt.where(getattr(AuditEntry, k) == v)
                return list((await s.execute(stmt)).scalars())
        finally:
            await db.close()

    return asyncio.run(q())


def test_settings_and_dns_lifecycle(admin, dns_server):
    cf = admin.sdk(*EDIT)
    z = admin.zone_id
    s = cf.email_routing.get(zone_id=z)
    assert (s.id, s.name, s.enabled, s.status) == (z, "example.test", False, "unconfigured")

    records = cf.email_routing.dns.get(zone_id=z)
    assert {(r.type, r.name, r.content) for r in records} == {
        ("MX", "example.test", "mx.node.test"),
        ("TXT", "example.test", "v=spf1 include:_spf.mx.node.test ~all")}

    # Enabling with no records published: locked but misconfigured, from live DNS.
    s = cf.email_routing.dns.create(zone_id=z)
    assert (s.enabled, s.status) == (True, "misconfigured/locked")
    _publish_routing_records(dns_server, "example.test")
    assert cf.email_routing.get(zone_id=z).status == "ready"

    assert cf.email_routing.dns.edit(zone_id=z).status == "unlocked"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert cf.email_routing.disable(zone_id=z).status == "unconfigured"
        s = cf.email_routing.enable(zone_id=z)
        assert (s.enabled, s.status) == (True, "ready")
        assert cf.email_routing.unlock(zone_id=z).status == "unlocked"

    # SPF record changed to one without our include: misconfigured (still unlocked).
    dns_server.remove("example.test", "TXT")
    dns_server.add_txt("example.test", "v=spf1 -all")
    assert cf.email_routing.get(zone_id=z).status == "misconfigured"

    assert cf.email_routing.update(zone_id=z, support_subaddress=False).support_subaddress is False
    assert cf.email_routing.get(zone_id=z).support_subaddress is False
    assert cf.email_routing.edit(zone_id=z, support_subaddress=True).support_subaddress is True
    # `enabled` is a no-op on update, as the reference documents.
    assert cf.email_routing.update(zone_id=z, enabled=False).enabled is True

    s = cf.email_routing.dns.delete(zone_id=z)
    assert (s.enabled, s.status) == (False, "unconfigured")
    assert cf.email_routing.get(zone_id=z).enabled is False

    actions = [e.action for e in _audit(admin, resource_type="routing_settings")]
    assert actions == ["enable", "unlock", "disable", "enable", "unlock", "update", "update",
                       "disable"]
    assert all(e.actor.startswith("token:") for e in _audit(admin,
                                                            resource_type="routing_settings"))


def test_dns_subdomain_reports_live_state(admin, dns_server):
    cf = admin.sdk(*EDIT)
    s = cf.email_routing.dns.create(zone_id=admin.zone_id, name="mail")
    assert s.enabled is True
    dns_server.add("mail.example.test", "MX", "10 mx.node.test.")
    with admin.http(*EDIT) as c:
        body = c.get(f"/zones/{admin.zone_id}/email/routing/dns",
                     params={"subdomain": "mail.example.test"}).json()
    assert body["success"] is True
    assert [r["name"] for r in body["result"]["record"]] == ["mail.example.test"] * 2
    # The MX is there; the SPF TXT is what is missing.
    assert [(e["code"], e["missing"]["type"]) for e in body["result"]["errors"]] == [
        ("missing", "TXT")]

    async def domains():
        db = Database(admin.settings.database.url, pool_size=1)
        try:
            async with db.session() as s:
                return sorted((await s.execute(select(RoutingDomain.name))).scalars())
        finally:
            await db.close()

    assert asyncio.run(domains()) == ["example.test", "mail.example.test"]


def _verify(admin, address) -> None:
    token = verification_token(admin.settings, address.id, address.email)
    assert admin.cli("addresses", "verify", token).startswith(f"verified {address.email}")


def test_rules_crud_and_pagination(admin):
    cf = admin.sdk(*EDIT)
    z = admin.zone_id
    dest = cf.email_routing.addresses.create(account_id=admin.account_id, email="me@dest.test")
    created = []
    for i in range(12):
        rule = cf.email_routing.rules.create(
            zone_id=z, name=f"rule {i}", enabled=True, priority=i,
            matchers=[{"type": "literal", "field": "to", "value": f"user{i}@example.test"}],
            actions=[{"type": "forward", "value": ["me@dest.test"]}])
        assert len(rule.id) == 32 and rule.tag == rule.id
        created.append(rule)

    page = cf.email_routing.rules.list(zone_id=z, per_page=5)
    assert [r.name for r in page.result] == [f"rule {i}" for i in range(5)]
    assert (page.result_info.total_count, page.result_info.total_pages) == (12, 3)
    every = list(cf.email_routing.rules.list(zone_id=z, per_page=5))  # iterates every page
    assert [r.id for r in every] == [r.id for r in created]
    assert list(cf.email_routing.rules.list(zone_id=z, enabled=False)) == []

    # Account-wide listing carries the zone of each rule (both SDK spellings).
    acct = list(cf.email_routing.rules.list(account_id=admin.account_id, per_page=50))
    assert len(acct) == 12 and {(r.zone.name, r.zone.tag) for r in acct} == {("example.test", z)}
    assert len(list(cf.email_routing.account_rules.list(account_id=admin.account_id))) == 12

    got = cf.email_routing.rules.get(created[3].id, zone_id=z)
    assert (got.name, got.priority, got.matchers[0].value, got.actions[0].value) == (
        "rule 3", 3, "user3@example.test", ["me@dest.test"])

    upd = cf.email_routing.rules.update(
        created[3].id, zone_id=z, name="renamed", enabled=False, priority=100,
        matchers=[{"type": "literal", "field": "to", "value": "other@example.test"}],
        actions=[{"type": "drop"}])
    assert (upd.name, upd.enabled, upd.priority, upd.actions[0].type) == (
        "renamed", False, 100, "drop")
    again = cf.email_routing.rules.get(created[3].id, zone_id=z)
    assert (again.matchers[0].value, again.enabled) == ("other@example.test", False)
    assert [r.id for r in cf.email_routing.rules.list(zone_id=z, enabled=False)] == [upd.id]

    deleted = cf.email_routing.rules.delete(created[0].id, zone_id=z)
    assert deleted.id == created[0].id
    with pytest.raises(NotFoundError) as exc:
        cf.email_routing.rules.get(created[0].id, zone_id=z)
    assert exc.value.errors[0].code == 10000
    assert cf.email_routing.rules.list(zone_id=z).result_info.total_count == 11
    assert dest.verified is None


def test_rule_validation_errors(admin):
    cf = admin.sdk(*EDIT)
    z = admin.zone_id
    with pytest.raises(BadRequestError) as exc:  # destination not added to the account
        cf.email_routing.rules.create(
            zone_id=z, matchers=[{"type": "literal", "field": "to", "value": "a@example.test"}],
            actions=[{"type": "forward", "value": ["nobody@dest.test"]}])
    assert exc.value.errors[0].code == 10001
    assert exc.value.body["errors"][0]["source"]["pointer"] == "/actions/0/value"
    with pytest.raises(BadRequestError):  # an address outside the zone
        cf.email_routing.rules.create(
            zone_id=z, matchers=[{"type": "literal", "field": "to", "value": "a@elsewhere.test"}],
            actions=[{"type": "drop"}])
    with pytest.raises(NotFoundError):
        cf.email_routing.rules.get("0" * 32, zone_id=z)
    with pytest.raises(NotFoundError):
        cf.email_routing.rules.get("not-an-id", zone_id=z)


def test_rules_per_zone_limit(make_admin):
    admin = make_admin(limits={"rules_per_zone": 3})
    cf = admin.sdk(*EDIT)
    for i in range(3):
        cf.email_routing.rules.create(
            zone_id=admin.zone_id, actions=[{"type": "drop"}],
            matchers=[{"type": "literal", "field": "to", "value": f"u{i}@example.test"}])
    with pytest.raises(BadRequestError) as exc:
        cf.email_routing.rules.create(
            zone_id=admin.zone_id, actions=[{"type": "drop"}],
            matchers=[{"type": "literal", "field": "to", "value": "u9@example.test"}])
    assert exc.value.errors[0].code == 10001
    assert "3 rules" in exc.value.body["errors"][0]["detail"]


def test_catch_all(admin):
    cf = admin.sdk(*EDIT)
    z = admin.zone_id
    ca = cf.email_routing.rules.catch_alls.get(zone_id=z)
    assert (ca.enabled, ca.matchers[0].type, ca.actions[0].type) == (False, "all", "drop")
    cf.email_routing.addresses.create(account_id=admin.account_id, email="all@dest.test")
    upd = cf.email_routing.rules.catch_alls.update(
        zone_id=z, enabled=True, name="everything", matchers=[{"type": "all"}],
        actions=[{"type": "forward", "value": ["all@dest.test"]}])
    assert upd.id == ca.id
    got = cf.email_routing.rules.catch_alls.get(zone_id=z)
    assert (got.enabled, got.name, got.actions[0].value) == (True, "everything", ["all@dest.test"])
    # The catch-all is not one of the rules.
    assert list(cf.email_routing.rules.list(zone_id=z)) == []
    with pytest.raises(BadRequestError):
        cf.email_routing.rules.catch_alls.update(
            zone_id=z, matchers=[{"type": "literal"}], actions=[{"type": "drop"}])  # type: ignore[list-item]


def test_addresses(admin):
    cf = admin.sdk(*EDIT)
    a = admin.account_id
    made = [cf.email_routing.addresses.create(account_id=a, email=f"p{i}@dest.test")
            for i in range(7)]
    assert all(m.verified is None and m.email == f"p{i}@dest.test" for i, m in enumerate(made))
    with pytest.raises(BadRequestError):  # already there, in any case
        cf.email_routing.addresses.create(account_id=a, email="P0@Dest.test")

    _verify(admin, made[2])
    _verify(admin, made[5])
    verified = list(cf.email_routing.addresses.list(account_id=a, verified=True, per_page=5))
    assert [v.email for v in verified] == ["p2@dest.test", "p5@dest.test"]
    assert all(v.verified is not None for v in verified)
    pending = cf.email_routing.addresses.list(account_id=a, verified=False, per_page=5)
    assert pending.result_info.total_count == 5 and len(pending.result) == 5
    newest_first = list(cf.email_routing.addresses.list(account_id=a, direction="desc",
                                                        per_page=5))
    assert [x.email for x in newest_first] == [f"p{i}@dest.test" for i in reversed(range(7))]

    got = cf.email_routing.addresses.get(made[2].id, account_id=a)
    assert got.verified is not None and got.email == "p2@dest.test"
    assert cf.email_routing.addresses.edit(made[2].id, account_id=a,
                                           status="unverified").verified is None
    with pytest.raises(PermissionDeniedError) as exc:  # an editor cannot verify
        cf.email_routing.addresses.edit(made[3].id, account_id=a, status="verified")
    assert exc.value.errors[0].code == 10102 and "account:admin" in exc.value.response.text
    assert cf.email_routing.addresses.get(made[3].id, account_id=a).verified is None
    # "requires admin privileges": a token with account:admin marks it verified.
    operator = admin.sdk("account:admin")
    done = operator.email_routing.addresses.edit(made[3].id, account_id=a, status="verified")
    assert done.verified is not None and done.email == "p3@dest.test"
    assert cf.email_routing.addresses.get(made[3].id, account_id=a).verified is not None
    assert "p3@dest.test" in [v.email for v in cf.email_routing.addresses.list(
        account_id=a, verified=True)]
    # account:admin includes the editor's permissions.
    assert operator.email_routing.addresses.edit(made[3].id, account_id=a,
                                                 status="unverified").verified is None

    # A rule forwarding to an address is disabled when the address is deleted.
    rule = cf.email_routing.rules.create(
        zone_id=admin.zone_id, enabled=True, actions=[{"type": "forward", "value": ["p5@dest.test"]}],
        matchers=[{"type": "literal", "field": "to", "value": "x@example.test"}])
    assert cf.email_routing.addresses.delete(made[5].id, account_id=a).email == "p5@dest.test"
    assert cf.email_routing.rules.get(rule.id, zone_id=admin.zone_id).enabled is False
    with pytest.raises(NotFoundError):
        cf.email_routing.addresses.get(made[5].id, account_id=a)
    entries = _audit(admin, resource_type="destination_address")
    assert [e.action for e in entries].count("verify") == 3  # two by the CLI, one by the account:admin token
    assert any(e.action == "delete" and e.after is None and e.before["email"] == "p5@dest.test"
               for e in entries)
    assert any(e.action == "disable" and e.resource_id == rule.id
               for e in _audit(admin, resource_type="routing_rule"))


def test_addresses_per_account_limit(make_admin):
    admin = make_admin(limits={"addresses_per_account": 2})
    cf = admin.sdk(*EDIT)
    for i in range(2):
        cf.email_routing.addresses.create(account_id=admin.account_id, email=f"l{i}@dest.test")
    with pytest.raises(BadRequestError) as exc:
        cf.email_routing.addresses.create(account_id=admin.account_id, email="l9@dest.test")
    assert "addresses_per_account" in exc.value.body["errors"][0]["detail"]


def test_domains_per_zone_limit(make_admin):
    admin = make_admin(limits={"domains_per_zone": 2})  # the apex counts
    cf = admin.sdk(*EDIT)
    cf.email_routing.dns.create(zone_id=admin.zone_id, name="a.example.test")
    with pytest.raises(BadRequestError) as exc:
        cf.email_routing.dns.create(zone_id=admin.zone_id, name="b.example.test")
    assert "domains_per_zone" in exc.value.body["errors"][0]["detail"]


def test_cli_address_verification(admin):
    cf = admin.sdk(*EDIT)
    a = admin.account_id
    one = cf.email_routing.addresses.create(account_id=a, email="one@dest.test")
    two = cf.email_routing.addresses.create(account_id=a, email="two@dest.test")
    token = verification_token(admin.settings, one.id, one.email)
    admin.cli("addresses", "verify", token[:-2] + "xx", expect=1)  # forged signature
    other = verification_token(admin.settings, two.id, one.email)  # right id, wrong address
    admin.cli("addresses", "verify", other, expect=1)
    assert cf.email_routing.addresses.get(one.id, account_id=a).verified is None
    admin.cli("addresses", "verify", token)
    admin.cli("addresses", "verify", "--id", two.id)
    assert all(x.verified for x in cf.email_routing.addresses.list(account_id=a))
    listing = admin.cli("addresses", "list", "--account", "acme")
    assert "one@dest.test" in listing and "pending" not in listing
    assert {e.actor[:4] for e in _audit(admin, action="verify")} == {"cli:"}


def test_dns_failure_keeps_last_known_status(admin, dns_server):
    cf = admin.sdk(*EDIT)
    _publish_routing_records(dns_server, "example.test")
    assert cf.email_routing.dns.create(zone_id=admin.zone_id).status == "ready"
    dns_server.servfail("example.test")  # SERVFAIL is not "records missing"
    assert cf.email_routing.get(zone_id=admin.zone_id).status == "ready"
    dns_server.servfail("example.test", on=False)
    dns_server.remove("example.test", "MX")
    assert cf.email_routing.get(zone_id=admin.zone_id).status == "misconfigured/locked"


def test_creating_an_address_queues_its_verification_mail(make_admin, pg):
    """The address owner gets the signed link as soon as the address is added."""
    admin = make_admin(srs={"domain": "fwd.example.test", "secrets": ["srs-secret"]})
    cf = admin.sdk(*EDIT)
    made = cf.email_routing.addresses.create(account_id=admin.account_id,
                                             email="Owner@Dest.test")
    token = verification_token(admin.settings, made.id, made.email)
    db = make_url(admin.settings.database.url).database
    rows = pg.cluster.psql(
        "SELECT m.mail_from, d.recipient, d.status, encode(m.raw, 'escape') FROM messages m "
        "JOIN deliveries d ON d.message_id = m.id WHERE m.source = 'verification'", db)
    mail_from, recipient, status, raw = rows.strip().split("|", 3)
    assert recipient == "owner@dest.test" and status == "queued"
    assert mail_from.endswith("@fwd.example.test")
    assert token in raw and "DKIM-Signature:" in raw
