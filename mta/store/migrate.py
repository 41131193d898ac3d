"""Apply Alembic migrations programmatically (`mta db upgrade`, node start-up, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

__all__ = ["MIGRATIONS_DIR", "alembic_config", "head_revisions", "known_revisions", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is an ini parser: '%' must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (synchronous; run it in a thread
    from async code)."""
    command.upgrade(alembic_config(url), revision)


def head_revisions() -> set[str]:
    """The newest revision(s) this code knows (read from the migration files)."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config("")).get_heads())


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config("")).walk_revisions()}
