"""Fixtures for the admin API: the real HTTP app served by uvicorn on a loopback port
(in a thread with its own event loop, as `mta serve` runs it), a real PostgreSQL
database, the test DNS server, the `mta` CLI run in-process for set-up, and clients:
httpx and the official SDK of the reference API (PyPI `cloudflare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from mta.cli import main as mta_main
from mta.config import Settings
from mta.config_load import load_settings
from mta.dnscache import DnsResolver
from mta.node import NodeContext
from mta.store.db import Database
from tests.harness.node import free_port

ALL_ROUTING = ("email_routing:read", "email_routing:edit")


class ApiServer:
    """The node's HTTP listener (mta.api.server.HttpListener) in a background loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.listener = None
        self.db: Database | None = None

    @property
    def base_url(self) -> str:
        http = self.settings.listeners.http
        return f"http://{http.address}:{http.port}"

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> ApiServer:
        from mta.api.server import HttpListener

        self.thread.start()

        async def up() -> None:
            s = self.settings
            assert s.database.url
            self.db = Database(s.database.url, pool_size=5)
            ctx = NodeContext(settings=s, db=self.db, resolver=DnsResolver.from_settings(s.dns),
                              node_id="api-test")
            self.listener = HttpListener(ctx)
            await self.listener.start()

        self._run(up())
        return self

    def stop(self) -> None:
        async def down() -> None:
            if self.listener is not None:
                await self.listener.stop()
            if self.db is not None:
                await self.db.close()

        self._run(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Admin:
    """One deployment under test: config file, API server, CLI, an account and a zone."""

    config_path: Path
    server: ApiServer
    account_id: str = ""
    zone_id: str = ""
    zone_name: str = "example.test"
    tokens: dict[tuple[str, ...], str] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.server.settings

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/client/v4"

    def cli(self, *args: str, expect: int = 0) -> str:
        """Run `mta --config ... ARGS` in-process; returns stdout."""
        return self.cli_streams(*args, expect=expect)[0]

    def cli_streams(self, *args: str, expect: int = 0) -> tuple[str, str]:
        """`cli`, returning stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = mta_main(["--config", str(self.config_path), *args])
            except SystemExit as exc:  # argparse refusing the arguments
                code = exc.code if isinstance(exc.code, int) else 1
        assert code == expect, f"mta {' '.join(args)} -> {code}\n{out.getvalue()}{err.getvalue()}"
        return out.getvalue(), err.getvalue()

    def db_run(self, fn):
        """Run `await fn(session)` in one transaction on the deployment's database."""
        async def run():
            db = Database(self.settings.database.url, pool_size=1)
            try:
                async with db.session() as s:
                    return await fn(s)
            finally:
                await db.close()

        return asyncio.run(run())

    def token(self, *permissions: str, account: str | None = None) -> str:
        key = (account or self.account_id, *sorted(permissions))
        if key not in self.tokens:
            perms = [a for p in permissions for a in ("--permission", p)]
            self.tokens[key] = self.cli("tokens", "create", "--account", key[0], "--name",
                                        "test", *perms).strip()
        return self.tokens[key]

    def http(self, *permissions: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(*permissions)}"} if permissions else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=10)

    def sdk(self, *permissions: str, token: str | None = None, strict: bool = True):
        from cloudflare import Cloudflare

        return Cloudflare(api_token=token or self.token(*permissions), base_url=self.api_url,
                          max_retries=0, timeout=10, _strict_response_validation=strict)


def write_config(directory: Path, db_url: str, dns_nameserver: dict, **overrides) -> Path:
    config = {
        "node": {"hostname": "mx.node.test"},
        "state_dir": str(directory / "state"),
        "database": {"url": db_url, "pool_size": 5},
        "listeners": {"http": {"address": "127.0.0.1", "port": free_port()}},
        "dns": {"nameservers": [dns_nameserver], "timeout": "2s", "cache_size": 0},
        "logging": {"level": "warning", "format": "text"},
        "secret_key": "test-secret-key-not-for-production",
        # Webhook receivers in these tests are on loopback.
        "webhooks": {"allow_private_targets": True},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value}
    path = directory / "mta.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(autouse=True)
def _no_cloudflare_env(monkeypatch):
    # CLOUDFLARE_EMAIL and friends would replace our Bearer token in the SDK.
    for k in [k for k in os.environ if k.startswith("CLOUDFLARE_")]:
        monkeypatch.delenv(k)


@pytest.fixture
def make_admin(tmp_path, db_url, dns_server):
    servers: list[ApiServer] = []

    def factory(**overrides) -> Admin:
        directory = tmp_path / f"admin{len(servers)}"
        directory.mkdir()
        path = write_config(directory, db_url, dns_server.nameserver, **overrides)
        server = ApiServer(load_settings(path)).start()
        servers.append(server)
        admin = Admin(path, server)
        admin.account_id = admin.cli("accounts", "create", "acme").strip()
        admin.zone_id = admin.cli("zones", "create", "--account", admin.account_id,
                                  admin.zone_name).strip()
        return admin

    yield factory
    for s in servers:
        s.stop()


@pytest.fixture
def admin(make_admin) -> Admin:
    return make_admin()
