from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gateway.storage import db
from gateway.storage.models import metadata


async def test_migrated_schema_matches_models(db_url):
    engine = db.create_engine(db_url)
    try:
        await db.upgrade(engine)
        await db.upgrade(engine)  # idempotent: a second start changes nothing
        current, heads = await db.migration_state(engine)
        assert current == heads

        def diff(conn):
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            return compare_metadata(ctx, metadata)

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_sqlite_runs_in_wal_mode(sqlite_url):
    engine = db.create_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
        assert mode == "wal"
        assert sync == 2  # FULL
    finally:
        await engine.dispose()
