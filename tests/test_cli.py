"""Conventions every `mta` command follows: global options before or after the
subcommand, `--version`, one-line errors on stderr with exit 1 (usage errors 2) and no
traceback unless `--debug`, migrations applied by the command that needs them, and
secrets generated into the state directory once."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from mta import __version__
from tests.harness.cli import ROUTING, run_mta


def mta(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_mta(*args, env=env, timeout=120)


def write_config(path: Path, db_url: str, **extra) -> Path:
    path.write_text(yaml.safe_dump({"database": {"url": db_url}, "state_dir": str(
        path.parent / "state"), **extra}))
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    assert result.returncode == code, result
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mta: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_version():
    result = mta("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"mta {__version__}"


def test_config_before_or_after_the_subcommand(tmp_path, db_url):
    cfg = write_config(tmp_path / "mta.yaml", db_url)
    assert mta("accounts", "create", "acme").returncode == 1  # no /etc/mta/mta.yaml here
    created = mta("--config", str(cfg), "accounts", "create", "acme")
    assert created.returncode == 0, created.stderr
    for argv in (["--config", str(cfg), "accounts", "list"],
                 ["accounts", "--config", str(cfg), "list"],
                 ["accounts", "list", "--config", str(cfg)],
                 ["accounts", "list", "-c", str(cfg)]):
        listed = mta(*argv)
        assert listed.returncode == 0, (argv, listed.stderr)
        assert created.stdout.strip() in listed.stdout and "acme" in listed.stdout
    via_env = mta("accounts", "list", env={"MTA_CONFIG": str(cfg)})
    assert "acme" in via_env.stdout


def test_missing_config_says_how_to_name_one(tmp_path):
    line = assert_one_line_error(mta("accounts", "list", env={"MTA_STATE_DIR": str(tmp_path)}))
    assert "/etc/mta/mta.yaml" in line and "--config" in line and "MTA_CONFIG" in line


def test_usage_errors_exit_2():
    result = mta("accounts", "frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert result.stdout == ""


def test_unreachable_database_is_one_line_and_debug_shows_the_traceback(tmp_path):
    cfg = tmp_path / "mta.yaml"
    cfg.write_text(yaml.safe_dump({
        "database": {"url": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
                     "connect_timeout": "2s"},
        "state_dir": str(tmp_path / "state")}))
    line = assert_one_line_error(mta("--config", str(cfg), "accounts", "list"))
    assert "cannot reach the database" in line and "database.url" in line
    debug = mta("accounts", "list", "--config", str(cfg), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_fresh_database_is_migrated_by_the_first_command(tmp_path, pg):
    cfg = write_config(tmp_path / "mta.yaml", pg.empty_database())
    first = mta("--config", str(cfg), "accounts", "create", "acme")
    assert first.returncode == 0, first.stderr
    assert "applied database migrations" in first.stderr
    second = mta("--config", str(cfg), "accounts", "list")
    assert second.returncode == 0 and "acme" in second.stdout
    assert "migrations" not in second.stderr


def test_secrets_are_generated_once_into_the_state_dir(tmp_path, db_url):
    cfg = write_config(tmp_path / "mta.yaml", db_url)
    listed = mta("--config", str(cfg), "accounts", "list")  # reads secrets, makes none
    assert listed.returncode == 0 and "generated" not in listed.stderr
    first = mta("--config", str(cfg), "addresses", "send-verification", "--pending")
    assert first.returncode == 0, first.stderr
    state = tmp_path / "state"
    for name in ("secret_key", "srs_secret"):
        path = state / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text().strip()) >= 40
        assert f"into {path}" in first.stderr
    kept = (state / "secret_key").read_text()
    second = mta("--config", str(cfg), "addresses", "send-verification", "--pending")
    assert second.returncode == 0 and "generated" not in second.stderr
    assert (state / "secret_key").read_text() == kept
    # A configured secret is used as given: nothing is generated or written.
    other = tmp_path / "other"
    other.mkdir()
    cfg2 = write_config(other / "mta.yaml", db_url, secret_key="given",
                        srs={"secrets": ["given-too"]})
    third = mta("--config", str(cfg2), "accounts", "list")
    assert third.returncode == 0 and "generated" not in third.stderr
    assert not (other / "state" / "secret_key").exists()


# --- accounts, zones, addresses (in-process: the same main() as the `mta` script) -------


class Cli:
    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *args: str, expect: int = 0) -> tuple[str, str]:
        import contextlib
        import io

        from mta.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([*args, "--config", str(self.config)])
            except SystemExit as exc:
                code = exc.code
        assert code == expect, (args, code, out.getvalue(), err.getvalue())
        return out.getvalue(), err.getvalue()


@pytest.fixture
def cli(tmp_path, db_url):
    return Cli(write_config(tmp_path / "mta.yaml", db_url))


def test_account_names_are_unique(cli, db_url):
    import asyncio

    from sqlalchemy.exc import IntegrityError

    from mta.store.db import Database
    from mta.store.models import Account

    first, _ = cli("accounts", "create", "acme")
    _, err = cli("accounts", "create", "acme", expect=1)
    assert f"an account named 'acme' exists ({first.strip()})" in err
    listed, _ = cli("accounts", "list")
    assert listed.count("acme") == 1

    async def insert_twin():
        db = Database(db_url, pool_size=1)
        try:
            async with db.session() as s:
                s.add(Account(name="acme"))
        finally:
            await db.close()
    with pytest.raises(IntegrityError):
        asyncio.run(insert_twin())


def test_account_rename_and_delete_say_what_happens_first(cli, tmp_path):
    account_id = cli("accounts", "create", "acme")[0].strip()
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    cli("apply", str(routing))
    cli("accounts", "create", "other")
    _, err = cli("accounts", "rename", "acme", "other", expect=1)
    assert "an account named 'other' exists" in err
    out, _ = cli("accounts", "rename", "acme", "globex")
    assert "renamed 'acme' -> 'globex'" in out
    assert "example.test" in cli("zones", "list", "--account", "globex")[0]

    out, err = cli("accounts", "delete", "globex", expect=1)
    assert "owns 1 zones, 1 routing rules, 1 destination addresses" in out
    assert "(zones: example.test)" in out and "refused (550 5.1.1)" in out
    assert "nothing deleted" in err and "--yes" in err
    assert "example.test" in cli("zones", "list")[0]  # still there
    out, _ = cli("accounts", "delete", account_id, "--yes")
    assert f"deleted account 'globex' ({account_id})" in out
    assert "example.test" not in cli("zones", "list")[0]
    assert "globex" not in cli("accounts", "list")[0]


def test_zone_rename_moves_its_rules_and_delete_lists_them(cli, tmp_path):
    cli("accounts", "create", "acme")
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    cli("apply", str(routing))
    out, err = cli("zones", "rename", "example.test", "example.org", expect=1)
    assert "rule hello: hello@example.test -> forward you@inbox.test" in out
    assert "1 rules then match @example.org instead of @example.test" in out
    assert "nothing renamed" in err
    cli("zones", "rename", "example.test", "example.org", "--yes")
    exported, _ = cli("export")
    assert "to: hello@example.org" in exported and "example.test" not in exported

    out, err = cli("zones", "delete", "example.org", expect=1)
    assert "rule hello: hello@example.org -> forward you@inbox.test" in out
    assert "nothing deleted" in err
    cli("zones", "delete", "example.org", "--yes")
    assert "example.org" not in cli("zones", "list")[0]


PATTERN_ROUTING = """
version: 1
accounts:
  - account: acme
    zones:
      - name: example.test
        routing: true
        subaddressing: true
        rules:
          - {name: eu, to: sales-eu@example.test, drop: true, priority: 10}
          - {name: sales, wildcard: 'sales-*@example.test', worker: [crm], priority: 10}
          - {name: tickets, regex: 'ticket-[0-9]+@example\\.(test|org)', drop: true,
             priority: 10}
"""


def test_rules_list_test_and_check(cli, tmp_path):
    cli("accounts", "create", "acme")
    routing = tmp_path / "routing.yaml"
    routing.write_text(PATTERN_ROUTING)
    cli("apply", str(routing))
    out, _ = cli("rules", "list", "--zone", "example.test")
    # Equal priorities: the order of the file (they were created in that order).
    kinds = [line.split()[3] for line in out.splitlines()[1:]]
    assert kinds == ["literal", "wildcard", "regex"], out
    assert "sales-*@example.test" in out and "worker crm" in out
    listed = json.loads(cli("rules", "list", "--json")[0])
    assert listed[1]["pattern"] == {"type": "wildcard", "value": "sales-*@example.test"}

    out, _ = cli("rules", "test", "Sales-EU@example.test")
    assert out.startswith("<sales-eu@example.test>: rule eu ") and ", exact," in out
    out, _ = cli("rules", "test", "sales-us@example.test")
    assert "rule sales " in out and "pattern, matching wildcard sales-*@example.test" in out
    assert "  worker crm" in out
    out, _ = cli("rules", "test", "ticket-9+x@example.test")
    assert "rule tickets " in out and "subaddress via ticket-9@example.test" in out
    _, err = cli("rules", "test", "ticket-x@example.test", expect=1)
    assert "550 5.1.1" in err
    _, err = cli("rules", "test", "a@elsewhere.test", expect=1)
    assert "550 5.7.1" in err

    out, _ = cli("rules", "check", "--wildcard", "team-?@example.test")
    assert out.startswith("wildcard team-?@example.test: ok (")
    _, err = cli("rules", "check", "--regex", "[a-z]{1000}@example\\.test", expect=1)
    assert err.startswith("mta: E_PATTERN_TOO_COMPLEX: ") and len(err.splitlines()) == 1
    _, err = cli("rules", "check", "--regex", "(a)\\1", expect=1)
    assert "E_PATTERN_INVALID" in err and "back-references" in err
    _, err = cli("rules", "check", "--regex", "a" * 300, expect=1)
    assert "E_PATTERN_TOO_LONG" in err

    # Renaming the zone carries the wildcard's domain along; a regex is only listed.
    out, err = cli("zones", "rename", "example.test", "example.org", expect=1)
    assert "rule sales: wildcard sales-*@example.test" in out
    assert "1 regex rules are not rewritten" in out and "nothing renamed" in err
    cli("zones", "rename", "example.test", "example.org", "--yes")
    exported, _ = cli("export")
    assert "wildcard: sales-*@example.org" in exported
    assert "ticket-[0-9]+@example\\.(test|org)" in exported
    out, _ = cli("rules", "test", "ticket-1@example.org")
    assert "rule tickets " in out


def test_addresses_verify_by_email(cli, tmp_path):
    cli("accounts", "create", "acme")
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    cli("apply", str(routing))
    assert "pending" in cli("addresses", "list", "--account", "acme")[0]
    _, err = cli("addresses", "verify", "--email", "nobody@inbox.test", expect=1)
    assert "no destination address nobody@inbox.test" in err
    out, _ = cli("addresses", "verify", "--email", "You@Inbox.test")
    assert out.startswith("verified you@inbox.test")
    assert "pending" not in cli("addresses", "list", "--account", "acme")[0]
    out, _ = cli("addresses", "verify", "--email", "you@inbox.test")
    assert "already verified" in out
    _, err = cli("addresses", "verify", expect=2)
    assert "give one of TOKEN, --id ID or --email ADDRESS" in err


def test_config_show_applies_the_environment_and_masks_secrets(tmp_path):
    cfg = tmp_path / "mta.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "secret_key": "file-secret-key",
        "limits": {"data_timeout": "15m", "inbound_message_size": "10MiB"},
        "delivery": {"smart_host": {"host": "relay.example.test",
                                    "password": "file-relay-password"}}}))
    shown = mta("config", "show", "--config", str(cfg), env={
        "MTA_SRS_SECRETS": "env-srs-one,env-srs-two",
        "MTA_DATABASE_URL": "postgresql+asyncpg://mta:env-db-password@db.example.test/mta"})
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    for secret in ("file-secret-key", "file-relay-password", "env-srs-one", "env-srs-two",
                   "env-db-password"):
        assert secret not in text
    tree = yaml.safe_load(text)
    assert tree["database"]["url"] == "postgresql+asyncpg://mta:***@db.example.test/mta"
    assert tree["srs"]["secrets"] == ["********", "********"]
    assert tree["secret_key"] == "********"
    assert tree["delivery"]["smart_host"] == dict(tree["delivery"]["smart_host"],
                                                  host="relay.example.test",
                                                  password="********")
    assert tree["limits"]["data_timeout"] == "15m"
    assert tree["limits"]["inbound_message_size"] == "10MiB"
    assert tree["limits"]["command_timeout"] == "5m"  # a default
    assert "# srs.secrets from $MTA_SRS_SECRETS" in text
    assert "# database.url from $MTA_DATABASE_URL" in text
    # What it prints is a configuration mta accepts (secrets aside).
    again = tmp_path / "again.yaml"
    again.write_text(text)
    assert mta("config", "check", str(again)).returncode == 0


def test_every_list_and_show_has_json():
    from mta.cli import _subparsers, build_parser

    missing = []
    for parser in _subparsers(build_parser()):
        name = parser.prog.split()[-1]
        if name in ("list", "show") and "--json" not in parser._option_string_actions:
            missing.append(parser.prog)
    assert not missing


def test_lists_as_json(cli, tmp_path):
    import json

    account_id = cli("accounts", "create", "acme")[0].strip()
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    cli("apply", str(routing))
    cli("tokens", "create", "--account", "acme", "--name", "ci", "--permission",
        "analytics:read")
    accounts = json.loads(cli("accounts", "list", "--json")[0])
    assert [(a["id"], a["name"]) for a in accounts] == [(account_id, "acme")]
    zones = json.loads(cli("zones", "list", "--json")[0])
    assert [(z["name"], z["account_id"], z["routing_enabled"]) for z in zones] == [
        ("example.test", account_id, True)]
    addresses = json.loads(cli("addresses", "list", "--account", "acme", "--json")[0])
    assert [(a["email"], a["verified_at"]) for a in addresses] == [("you@inbox.test", None)]
    tokens = json.loads(cli("tokens", "list", "--json")[0])
    assert [(t["name"], t["permissions"], t["state"]) for t in tokens] == [
        ("ci", ["analytics:read"], "active")]
    assert "token_hash" not in tokens[0] and json.loads(cli("domains", "list", "--json")[0]) == []
    config = json.loads(cli("config", "show", "--json")[0])
    assert config["secret_key"] in (None, "********")
