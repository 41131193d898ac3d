"""The suppression list on a real PostgreSQL: scopes, expiry, upsert strength, the
complaint protection, pagination, and `mta suppression add|remove|list`."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import pytest

from mta.config import Settings
from mta.store import suppression as sup
from tests.queue.test_queue import make_account

T0 = datetime(2030, 1, 1, tzinfo=UTC)


async def test_scopes_and_expiry(db):
    acct = await make_account(db)
    other = await make_account(db, "other")
    async with db.session() as s:
        await sup.add(s, acct, "Bob@Example.test", "manual", now=T0)
        await sup.add(s, acct, "carol@example.test", "manual", now=T0,
                      scope_type="sending_domain", scope_value="News.Acme.test")
        await sup.add(s, acct, "dave@example.test", "soft_bounce", now=T0,
                      expires_at=T0 + timedelta(days=1))
    async with db.session() as s:
        # Account scope blocks every sending domain, case-insensitively.
        hit = await sup.is_suppressed(s, acct, "bob@EXAMPLE.test", "acme.test", T0)
        assert hit is not None and hit.email == "bob@example.test"
        assert await sup.is_suppressed(s, other, "bob@example.test", "acme.test", T0) is None
        # A sending-domain scope only blocks mail whose MAIL FROM is on that domain.
        assert await sup.is_suppressed(s, acct, "carol@example.test", "news.acme.test", T0)
        assert await sup.is_suppressed(s, acct, "carol@example.test", "acme.test", T0) is None
        # Expiry lifts an entry.
        assert await sup.is_suppressed(s, acct, "dave@example.test", None, T0)
        later = T0 + timedelta(days=1, seconds=1)
        assert await sup.is_suppressed(s, acct, "dave@example.test", None, later) is None
        found = await sup.suppressed_among(
            s, acct, ["bob@example.test", "carol@example.test", "eve@example.test"],
            sup.sending_domain_of("x@news.acme.test"), T0)
        assert sorted(found) == ["bob@example.test", "carol@example.test"]


async def test_stronger_reasons_win_and_permanent_is_not_shortened(db):
    acct = await make_account(db)
    async with db.session() as s:
        e = await sup.add(s, acct, "x@example.test", "soft_bounce", now=T0,
                          expires_at=T0 + timedelta(days=7))
        e2 = await sup.add(s, acct, "x@example.test", "hard_bounce", now=T0)
        assert e2.id == e.id and (e2.reason, e2.expires_at) == ("hard_bounce", None)
        e3 = await sup.add(s, acct, "x@example.test", "soft_bounce", now=T0,
                           expires_at=T0 + timedelta(days=30))
        assert (e3.reason, e3.expires_at) == ("hard_bounce", None)
        e4 = await sup.add(s, acct, "x@example.test", "complaint", now=T0)
        assert (e4.reason, e4.read_only) == ("complaint", True)
        e5 = await sup.add(s, acct, "x@example.test", "manual", now=T0, note="re-added")
        assert (e5.reason, e5.read_only, e5.note) == ("complaint", True, "re-added")
    with pytest.raises(sup.SuppressionError):
        async with db.session() as s:
            await sup.add(s, acct, "not-an-address", "manual", now=T0)
    with pytest.raises(sup.SuppressionError):
        async with db.session() as s:
            await sup.add(s, acct, "y@example.test", "because", now=T0)


async def test_complaints_are_protected_from_casual_removal(db):
    acct = await make_account(db)
    async with db.session() as s:
        c = await sup.add(s, acct, "angry@example.test", "complaint", now=T0)
        m = await sup.add(s, acct, "gone@example.test", "manual", now=T0)
    async with db.session() as s:
        await sup.remove(s, acct, suppression_id=m.id)
    with pytest.raises(sup.SuppressionProtected):
        async with db.session() as s:
            await sup.remove(s, acct, email="angry@example.test")
    async with db.session() as s:
        assert await sup.is_suppressed(s, acct, "angry@example.test", None, T0)
        [gone] = await sup.remove(s, acct, suppression_id=c.id, force=True)
        assert gone.email == "angry@example.test"
    with pytest.raises(sup.SuppressionNotFound):
        async with db.session() as s:
            await sup.remove(s, acct, email="angry@example.test")


async def test_list_filters_and_cursor_pages(db):
    acct = await make_account(db)
    async with db.session() as s:
        for i in range(7):
            await sup.add(s, acct, f"u{i}@example.test",
                          "hard_bounce" if i % 2 else "manual", now=T0 + timedelta(minutes=i))
    seen, cursor = [], None
    async with db.session() as s:
        while True:
            page = await sup.list_entries(s, acct, cursor=cursor, per_page=3)
            seen += [e.email for e in page.items]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert seen == [f"u{i}@example.test" for i in reversed(range(7))]
        hard = await sup.list_entries(s, acct, reason="hard_bounce")
        assert [e.email for e in hard.items] == ["u5@example.test", "u3@example.test",
                                                 "u1@example.test"]
        assert [e.email for e in (await sup.list_entries(s, acct, search="u4")).items] == [
            "u4@example.test"]
        d = sup.to_dict(hard.items[0])
        assert set(d) == {"id", "email", "reason", "created_at", "expires_at", "read_only",
                          "note", "scope"} and d["scope"] == {"type": "account"}


def cli(settings: Settings, *argv: str):
    from mta.commands import suppression as cmd

    parser = argparse.ArgumentParser(prog="mta")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd.register(sub)
    args = parser.parse_args(list(argv))
    return _exit_code(args.func(args, settings))


async def _exit_code(run) -> int:
    """What `mta` would exit with: a CliError is its one stderr line and its code."""
    import sys

    from mta.commands._errors import CliError

    try:
        return await run
    except CliError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return exc.exit_code


async def test_cli_add_list_remove(db, db_url, capsys):
    settings = Settings()
    settings.database.url = db_url
    await make_account(db, "acme")
    assert await cli(settings, "suppression", "add", "x@example.test", "--account", "acme",
                     "--note", "asked us to stop", "--expires", "30d") == 0
    assert "suppressed x@example.test (manual, account, until" in capsys.readouterr().out
    assert await cli(settings, "suppression", "add", "y@example.test", "--account", "acme",
                     "--reason", "complaint", "--domain", "news.acme.test") == 0
    capsys.readouterr()
    assert await cli(settings, "suppression", "list", "--account", "acme", "--json") == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert {(i["email"], i["reason"], i["read_only"]) for i in items} == {
        ("x@example.test", "manual", False), ("y@example.test", "complaint", True)}
    assert [i["scope"] for i in items if i["email"] == "y@example.test"] == [
        {"type": "sending_domain", "value": "news.acme.test"}]
    assert await cli(settings, "suppression", "list", "--account", "acme") == 0
    assert "READ-ONLY" in capsys.readouterr().out
    assert await cli(settings, "suppression", "remove", "y@example.test",
                     "--account", "acme") == 1
    assert "refused" in capsys.readouterr().err
    assert await cli(settings, "suppression", "remove", "y@example.test",
                     "--account", "acme", "--force") == 0
    assert await cli(settings, "suppression", "remove", "x@example.test",
                     "--account", "acme") == 0
    assert "removed x@example.test" in capsys.readouterr().out.splitlines()[-1]
    assert await cli(settings, "suppression", "list", "--account", "nobody") == 1
