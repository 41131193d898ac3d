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

    def start(self) -> TestPostgres:
        self.cluster.start()
        self.cluster.create_database(TEMPLATE, exist_ok=False)
        upgrade(self.cluster.url(TEMPLATE))
        return self

    def new_database(self, prefix: str = "t") -> str:
        """Create a fresh migrated database; returns its async URL."""
        name = f"{prefix}_{next(self._counter)}"
        self.cluster.create_database(name, exist_ok=False, template=TEMPLATE)
        return self.cluster.url(name)

    def empty_database(self, prefix: str = "empty") -> str:
        name = f"{prefix}_{next(self._counter)}"
        self.cluster.create_database(name, exist_ok=False)
        return self.cluster.url(name)

    def stop(self) -> None:
        self.cluster.stop(mode="immediate")
