"""API tokens and the error envelope: what a client sees for missing, malformed, unknown,
revoked and under-privileged tokens, bad bodies and unknown paths; the token CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cloudflare import AuthenticationError, NotFoundError, PermissionDeniedError
from sqlalchemy import select

from mta.store.models import ApiToken, AuditEntry
from mta.tokens import create_token, generate_token, hash_token

READ = "email_routing:read"


def _error(resp) -> tuple[int, int, str]:
    body = resp.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    return resp.status_code, body["errors"][0]["code"], body["errors"][0]["message"]


def test_missing_malformed_unknown_tokens(admin):
    path = f"/zones/{admin.zone_id}/email/routing"
    with admin.http() as c:
        assert _error(c.get(path)) == (
            401, 10101, "email.routing.error.authentication.unauthorized")
        assert _error(c.get(path, headers={"Authorization": "Basic dXNlcjpwdw=="}))[:2] == (
            401, 10103)
        assert _error(c.get(path, headers={"Authorization": "Bearer test-token"})) == (
            401, 10103, "email.routing.error.authentication.bad_token_type")
        assert _error(c.get(path, headers={"X-Auth-Key": "k", "X-Auth-Email": "a@b.c"}))[:2] \
            == (401, 10103)
        assert _error(c.get(path, headers={"Authorization": f"Bearer {generate_token()}"}))[:2] \
            == (401, 10101)
    with pytest.raises(AuthenticationError) as exc:
        admin.sdk(token=generate_token()).email_routing.get(zone_id=admin.zone_id)
    assert exc.value.errors[0].code == 10101


def test_wrong_permission_and_foreign_resources(admin):
    cf = admin.sdk("email_sending:send")
    with pytest.raises(PermissionDeniedError) as exc:
        cf.email_routing.get(zone_id=admin.zone_id)
    assert exc.value.errors[0].code == 10102
    # A routing error reads as one; the numeric code is the reference's.
    assert exc.value.errors[0].message == "email.routing.error.authentication.forbidden"

    reader = admin.sdk(READ)
    assert reader.email_routing.get(zone_id=admin.zone_id).name == "example.test"
    with pytest.raises(PermissionDeniedError):  # read does not imply edit
        reader.email_routing.dns.create(zone_id=admin.zone_id)
    with pytest.raises(PermissionDeniedError) as exc:  # routing does not cover sending
        reader.email_sending.subdomains.list(zone_id=admin.zone_id)
    assert (exc.value.errors[0].code, exc.value.errors[0].message) == (
        10102, "email.sending.error.authentication.forbidden")

    # Another account's token: that account's paths are forbidden, its zones invisible.
    other = admin.cli("accounts", "create", "other").strip()
    foreign = admin.sdk(token=admin.token(READ, "email_routing:edit", account=other))
    with pytest.raises(NotFoundError):
        foreign.email_routing.get(zone_id=admin.zone_id)
    with pytest.raises(PermissionDeniedError):
        foreign.email_routing.addresses.list(account_id=admin.account_id)
    assert list(foreign.email_routing.addresses.list(account_id=other)) == []


def test_revoked_and_expired_tokens(admin):
    token = admin.token(READ)
    assert admin.sdk(token=token).email_routing.get(zone_id=admin.zone_id)
    token_id = admin.db_run(lambda s: _id_of(s, token))
    assert admin.cli("tokens", "revoke", token_id).strip() == f"revoked {token_id}"
    with pytest.raises(AuthenticationError) as exc:
        admin.sdk(token=token).email_routing.get(zone_id=admin.zone_id)
    assert "revoked" in exc.value.body["errors"][0]["detail"]

    async def expired(s):
        _, secret = await create_token(s, admin.account_id, "old", [READ],
                                       expires_at=datetime.now(UTC) - timedelta(seconds=1))
        return secret

    with pytest.raises(AuthenticationError) as exc:
        admin.sdk(token=admin.db_run(expired)).email_routing.get(zone_id=admin.zone_id)
    assert "expired" in exc.value.body["errors"][0]["detail"]


async def _id_of(s, token: str) -> str:
    return (await s.execute(select(ApiToken.id).where(
        ApiToken.token_hash == hash_token(token)))).scalar_one()


def test_token_storage_list_and_last_used(admin):
    token = admin.token(READ, "analytics:read")
    row = admin.db_run(lambda s: _row(s, token))
    assert row.token_hash == hash_token(token) and token.encode() not in row.token_hash
    assert sorted(row.permissions) == ["analytics:read", READ]
    assert row.last_used_at is None
    admin.sdk(token=token).email_routing.get(zone_id=admin.zone_id)
    assert admin.db_run(lambda s: _row(s, token)).last_used_at is not None

    listing = admin.cli("tokens", "list", "--account", "acme")
    assert row.id in listing and "active" in listing and token not in listing
    admin.cli("tokens", "create", "--account", admin.account_id, "--name", "x",
              "--permission", "no:such", expect=2)
    entries = admin.db_run(lambda s: _audits(s, "api_token"))
    assert entries and all(e.actor.startswith("cli:") for e in entries)
    assert all("token_hash" not in (e.after or {}) for e in entries)


async def _row(s, token: str) -> ApiToken:
    return (await s.execute(select(ApiToken).where(
        ApiToken.token_hash == hash_token(token)))).scalar_one()


async def _audits(s, resource_type: str) -> list[AuditEntry]:
    return list((await s.execute(select(AuditEntry).where(
        AuditEntry.resource_type == resource_type))).scalars())


def test_envelope_errors(admin):
    z = admin.zone_id
    with admin.http(READ, "email_routing:edit") as c:
        bad = c.post(f"/zones/{z}/email/routing/rules", content=b"{not json",
                     headers={"Content-Type": "application/json"})
        assert _error(bad) == (400, 10001, "email.routing.error.invalid_request_schema")
        unknown = c.get(f"/zones/{z}/email/routing/rules/{'0' * 32}")
        assert _error(unknown) == (404, 10000, "email.routing.error.not_found")
        assert "JSON" in bad.json()["errors"][0]["detail"]
        not_object = c.post(f"/zones/{z}/email/routing/rules", json=[1, 2])
        assert _error(not_object)[:2] == (400, 10001)
        missing = c.post(f"/zones/{z}/email/routing/rules", json={"matchers": [
            {"type": "literal", "field": "to", "value": "a@example.test"}]})
        assert _error(missing)[:2] == (400, 10001)
        assert missing.json()["errors"][0]["source"]["pointer"] == "/actions"
        assert _error(c.get(f"/zones/{z}/email/routing/nothing-here"))[:2] == (404, 10000)
        assert _error(c.get(f"/zones/{'f' * 32}/email/routing"))[:2] == (404, 10000)
        assert _error(c.get(f"/zones/{z}/email/routing/rules", params={"per_page": 500}))[:2] \
            == (400, 10001)
        # The SDK sends numbers as floats and an empty JSON body on bodiless calls.
        ok = c.get(f"/zones/{z}/email/routing/rules", params={"page": "1.0", "per_page": "5.0"})
        assert ok.status_code == 200 and ok.json()["result_info"]["per_page"] == 5
        enable = c.post(f"/zones/{z}/email/routing/enable", content=b"",
                        headers={"Content-Type": "application/json"})
        assert enable.status_code == 200 and enable.json()["result"]["enabled"] is True
        past_end = c.get(f"/zones/{z}/email/routing/rules", params={"page": 9})
        assert past_end.status_code == 200 and past_end.json()["result"] == []


def test_cli_accounts_and_zones(admin):
    assert admin.account_id in admin.cli("accounts", "list")
    listing = admin.cli("zones", "list")
    assert admin.zone_id in listing and "example.test" in listing
    admin.cli("zones", "create", "--account", admin.account_id, "example.test", expect=1)
    admin.cli("zones", "create", "--account", admin.account_id, "not a domain", expect=2)
    entries = admin.db_run(lambda s: _audits(s, "zone"))
    assert [e.resource_id for e in entries] == [admin.zone_id]
