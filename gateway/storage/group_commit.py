"""Every ingest's rows, committed: one transaction per call on PostgreSQL,
group commit on SQLite.

``GroupCommit.write(fn)`` runs ``fn(rows)`` (``storage.rows``) in a committed
transaction and returns its result, after making every blob written so far
durable (one flush, see ``storage.blobs``).
"""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.storage.blobs import LocalBlobStore
from gateway.storage.db import is_sqlite, sqlite_path, transaction
from gateway.storage.rows import CoreRows, Rows, SqliteWriter

_T = TypeVar("_T")

# At most this many messages' rows in one group-committed SQLite transaction.
_MAX_GROUP = 32


class GroupCommit:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], blobs: LocalBlobStore, url: str, sqlite_synchronous: str) -> None:
        self.sessions = sessions
        self.blobs = blobs
        # (An in-memory SQLite database cannot be shared with a second connection.)
        on_disk = is_sqlite(url) and sqlite_path(url) not in ("", ":memory:")
        self.sqlite = SqliteWriter(sqlite_path(url), sqlite_synchronous) if on_disk else None
        self._pending: list[tuple[Callable[[Rows], object], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def write(self, fn: Callable[[Rows], _T]) -> _T:
        """Run ``fn(rows)`` in a committed transaction; return its result.

        The row writing is plain synchronous code, run as one piece.

        On PostgreSQL it runs through the async session's ``run_sync`` (asyncpg),
        one transaction per call; concurrent writers are fine there.

        On SQLite it runs in a worker thread on the writer's own ``sqlite3``
        connection, and calls made while a commit is under way are grouped into
        the next transaction, each inside its own SAVEPOINT (group commit).
        Measured reasons: through aiosqlite every statement is a round trip
        between the event loop and aiosqlite's thread (about ten per message),
        and SQLite has one writer at a time, so under concurrent SMTP sessions
        each transaction took 17-23 ms and writers queued behind it (in SQLite's
        busy handler, which sleeps up to 100 ms at a time). A group pays one
        BEGIN, one COMMIT and one fsync. Every caller still returns only after
        the transaction holding its rows committed, and a failure inside one
        call undoes that call's rows only.
        """
        if self.sqlite is None:
            # The blobs the rows name are made durable first (see storage.blobs).
            await asyncio.to_thread(self.blobs.flush_sync)
            async with transaction(self.sessions) as s:
                return await s.run_sync(lambda sync: fn(CoreRows(sync.connection())))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((fn, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain_writes())
        return await fut

    async def _drain_writes(self) -> None:
        while self._pending:
            batch = self._pending[:_MAX_GROUP]
            del self._pending[:_MAX_GROUP]
            try:
                results = await asyncio.to_thread(
                    self.sqlite.run_group, [fn for fn, _ in batch], self.blobs.flush_sync
                )
            except BaseException as e:  # the group's commit failed: nothing of it is stored
                cancelled = isinstance(e, asyncio.CancelledError)  # (the loop is shutting down)
                for _, fut in batch:
                    if not fut.done():
                        fut.cancel() if cancelled else fut.set_exception(e)
                if cancelled:
                    raise
                continue
            for (_, fut), (ok, value) in zip(batch, results):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)


    def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
