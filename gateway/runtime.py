"""What every command needs, opened once: settings, engine, sessions, blobs, ingest."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.config import Settings
from gateway.config_sync import sync_config
from gateway.ingest import Ingestor
from gateway.queue import wakeup
from gateway.storage import db
from gateway.storage.blobs import LocalBlobStore


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    blobs: LocalBlobStore
    ingestor: Ingestor


@asynccontextmanager
async def open_runtime(settings: Settings, *, migrate: bool | None = None, sync: bool = True) -> AsyncIterator[Runtime]:
    """``migrate=None`` follows the config: upgrade on start when auto_migrate is on."""
    engine = db.create_engine(
        settings.storage.database_url,
        sqlite_synchronous=settings.storage.sqlite_synchronous,
    )
    try:
        if migrate or (migrate is None and settings.storage.auto_migrate):
            await db.upgrade(engine)
        sessions = db.session_factory(engine)
        blobs = LocalBlobStore(settings.storage.root)
        blobs.ensure()
        if sync:
            await sync_config(sessions, settings)
        ingestor = Ingestor(sessions, blobs, settings)
        # Every process that ingests (serve, replay, the API, the CLI) wakes the
        # workers itself: in-process listeners, and NOTIFY on PostgreSQL for a
        # daemon running elsewhere (SQLite's workers watch data_version).
        wakeup.install(ingestor, engine)
        try:
            yield Runtime(settings, engine, sessions, blobs, ingestor)
        finally:
            await ingestor.aclose()
    finally:
        await engine.dispose()
