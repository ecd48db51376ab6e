"""Database engine, sessions and migrations for SQLite and PostgreSQL.

The backend is picked from the URL scheme; everything above this module is the same
for both. On SQLite every transaction starts with ``BEGIN IMMEDIATE``: a deferred
transaction that reads and then writes can fail at once with "database is locked"
when another writer committed in between, and busy_timeout does not cover that case.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from gateway.errors import DatabaseUnavailable

MIGRATIONS = Path(__file__).with_name("migrations")
# Held while migrating so that several instances starting at once do not race.
_PG_MIGRATION_LOCK = 0x6761_7465  # "gate"


def is_sqlite(url_or_engine) -> bool:
    dialect = getattr(url_or_engine, "dialect", None)
    if dialect is not None:  # an engine: no URL rendering (this runs per ingest)
        return dialect.name == "sqlite"
    url = str(getattr(url_or_engine, "url", url_or_engine))
    return url.startswith("sqlite")


def sqlite_pragmas(sqlite_synchronous: str) -> list[str]:
    """What every connection to the database runs first (both engines and the
    ingest's own sqlite3 writer)."""
    return [
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={sqlite_synchronous.upper()}",
        "PRAGMA foreign_keys=ON",
        "PRAGMA busy_timeout=30000",
        # Checkpoint the WAL into the database every ~40 MB of WAL instead of
        # SQLite's 4 MB: a page rewritten by many commits is copied (and the
        # database fsynced) once per checkpoint, not once per 4 MB. Measured with
        # 16 SMTP sessions of 2 KB messages: 1.6 against 1.8 ms of CPU per
        # message, about 9% more messages/s.
        "PRAGMA wal_autocheckpoint=10000",
        # Sorts, temporary indices and tables in memory: SQLite would otherwise
        # put them in the system's temp folder (about 21 MB for 163 mails was
        # seen there), outside the storage root the config promises. Their size
        # is bounded by the queries the gateway runs (paged lists, per-queue
        # lookups), not by the database.
        "PRAGMA temp_store=MEMORY",
    ]


def install_sqlite_setup(sync_engine, sqlite_synchronous: str) -> None:
    """WAL, the durability level, foreign keys, a busy timeout, and BEGIN IMMEDIATE
    for every transaction (see the module doc), on any SQLite engine."""

    @event.listens_for(sync_engine, "connect")
    def _pragmas(dbapi_conn, _record):
        # Let the begin event below issue BEGIN itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in sqlite_pragmas(sqlite_synchronous):
            cur.execute(pragma)
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_path(url: str) -> str:
    return url.partition(":///")[2]


def create_engine(url: str, *, sqlite_synchronous: str = "full", pool_size: int = 10) -> AsyncEngine:
    if is_sqlite(url):
        path = sqlite_path(url)
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        install_sqlite_setup(engine.sync_engine, sqlite_synchronous)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def as_database_error(e: BaseException) -> BaseException:
    """Driver-level outages become DatabaseUnavailable (temporary: the sender
    retries); integrity errors and the like are the caller's business and stay
    what they are."""
    if not isinstance(e, (OperationalError, DBAPIError, OSError, ConnectionError)):
        return e
    if (
        isinstance(e, DBAPIError)
        and not isinstance(e, (OperationalError, InterfaceError))
        and not e.connection_invalidated
    ):
        return e
    err = DatabaseUnavailable(f"database unavailable: {_short(e)}")
    err.__cause__ = e
    return err


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on error; DB outages become
    DatabaseUnavailable so every ingress can answer "try again later"."""
    try:
        async with sessions() as session:
            async with session.begin():
                yield session
    except (OperationalError, DBAPIError, OSError, ConnectionError) as e:
        err = as_database_error(e)
        if err is e:
            raise
        raise err from e


def _short(e: BaseException) -> str:
    msg = str(getattr(e, "orig", None) or e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade_sync(connection, revision: str = "heads") -> None:
    cfg = _alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(engine: AsyncEngine, revision: str = "heads") -> None:
    """Apply migrations; safe to call from several instances at once."""
    if is_sqlite(engine):
        async with engine.connect() as conn:
            await conn.run_sync(_upgrade_sync, revision)
            await conn.commit()
        return
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        try:
            await conn.run_sync(_upgrade_sync, revision)
            await conn.commit()
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
            await conn.commit()


def _current_sync(connection) -> tuple[set[str], set[str]]:
    ctx = MigrationContext.configure(connection)
    heads = set(ScriptDirectory.from_config(_alembic_config()).get_heads())
    return set(ctx.get_current_heads()), heads


async def migration_state(engine: AsyncEngine) -> tuple[set[str], set[str]]:
    """(revisions the database is at, head revisions of the code). Migrations
    of different areas may branch from one base; "heads" applies them all."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current_sync)


async def ping(engine: AsyncEngine) -> None:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as e:  # any driver error means "not reachable"
        raise DatabaseUnavailable(f"database unreachable: {_short(e)}") from e
