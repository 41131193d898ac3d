"""A real PostgreSQL cluster for the test session, with a migrated template database
so each test gets a fresh, fully migrated database in a fraction of a second."""

from __future__ import annotations

import itertools
from pathlib import Path

from mta.store.embedded import EmbeddedPostgres
from mta.store.migrate import upgrade

__all__ = ["TestPostgres"]

TEMPLATE = "mta_template"


class TestPostgres:
    def __init__(self, base_dir: Path) -> None:
        # Extra settings trade durability for speed: this data is thrown away.
        self.cluster = EmbeddedPostgres(
            base_dir, database="postgres",
            extra_settings=("fsync = off", "synchronous_commit = off",
                            "full_page_writes = off", "max_connections = 300"))
        self._counter = itertools.count(1)
        self._finished: list[str] = []

    def start(self) -> TestPostgres:
        self.cluster.start()
        self.cluster.create_database(TEMPLATE, exist_ok=False)
        upgrade(self.cluster.url(TEMPLATE))
        return self

    def new_database(self, prefix: str = "t") -> str:
        """Create a fresh migrated database; returns its async URL."""
        if len(self._finished) >= 25:
            self.drop_finished()
        name = f"{prefix}_{next(self._counter)}"
        self.cluster.create_database(name, exist_ok=False, template=TEMPLATE)
        return self.cluster.url(name)

    def empty_database(self, prefix: str = "empty") -> str:
        name = f"{prefix}_{next(self._counter)}"
        self.cluster.create_database(name, exist_ok=False)
        return self.cluster.url(name)

    def discard(self, url: str) -> None:
        """Mark a test's database for dropping. A full run creates over a thousand
        databases; leaving them all to the final directory removal costs gigabytes of
        disk and minutes at teardown. They are dropped in batches (one psql run for many)
        when the next database is made, so never while the finishing test's own node may
        still be shutting down."""
        self._finished.append(url.rsplit("/", 1)[1].split("?", 1)[0])

    def drop_finished(self) -> None:
        names, self._finished = self._finished, []
        if not names:
            return
        statements: list[str] = []
        for name in names:
            # FORCE: a node a test started may still hold a connection at this point.
            statements += ["-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']
        cluster = self.cluster
        cluster._run([str(cluster.bin / "psql"), "-h", str(cluster.socket_dir),
                      "-U", cluster.role, "-d", "postgres", *statements])

    def stop(self) -> None:
        self.cluster.stop(mode="immediate")
