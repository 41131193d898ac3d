"""The models and the Alembic migrations describe the same schema."""

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from mta.store.migrate import upgrade
from mta.store.models import Base


async def schema_diff(url: str) -> list:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"compare_type": True,
                                                    "compare_server_default": True}),
                Base.metadata))
    finally:
        await engine.dispose()


async def test_migrations_from_empty_database_match_models(pg):
    url = pg.empty_database()
    await asyncio.to_thread(upgrade, url)
    assert await schema_diff(url) == []


async def test_a_model_change_without_migration_is_detected(pg):
    """The drift check itself works: a column the migrations lack shows up."""
    url = pg.empty_database()
    await asyncio.to_thread(upgrade, url)
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE accounts DROP COLUMN name"))
    await engine.dispose()
    diff = await schema_diff(url)
    assert any(d[0] == "add_column" and d[3].name == "name" for d in diff), diff


async def test_upgrade_is_idempotent(pg):
    url = pg.empty_database()
    await asyncio.to_thread(upgrade, url)
    await asyncio.to_thread(upgrade, url)
    assert await schema_diff(url) == []
