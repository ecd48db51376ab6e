"""Waking workers the moment tasks become runnable.

Two paths, both best-effort (a lost wake-up costs at most one ``poll_seconds``):

- in-process: listeners registered for an engine are called directly (SQLite, or
  an ingress and the workers sharing one PostgreSQL process);
- across processes on PostgreSQL: ``pg_notify(CHANNEL)`` after the commit, heard
  by every instance's dedicated LISTEN connection.

Listeners are kept per engine (weakly), not in a process-wide list, so two
runtimes in one process (tests, the benchmark) do not wake each other.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.observability import get_logger
from gateway.storage.db import is_sqlite

log = get_logger()

CHANNEL = "gateway_tasks"
NOTIFY_TIMEOUT = 2.0

_listeners: "weakref.WeakKeyDictionary[object, list[Callable[[], None]]]" = weakref.WeakKeyDictionary()


def add_listener(engine: AsyncEngine, callback: Callable[[], None]) -> None:
    _listeners.setdefault(engine.sync_engine, []).append(callback)


def remove_listener(engine: AsyncEngine, callback: Callable[[], None]) -> None:
    cbs = _listeners.get(engine.sync_engine, [])
    if callback in cbs:
        cbs.remove(callback)


async def tasks_runnable(engine: AsyncEngine, task_ids: list[int] | None = None) -> None:
    """Call after the commit that made tasks queued (ingest, retry, backoff)."""
    for cb in list(_listeners.get(engine.sync_engine, [])):
        cb()
    if is_sqlite(engine):
        return
    try:
        # Bounded: whoever calls this (an SMTP reply, an API answer) waits for it.
        await asyncio.wait_for(_notify(engine, len(task_ids or [])), NOTIFY_TIMEOUT)
    except Exception as e:  # the poll picks the tasks up anyway
        log.warning("queue.notify_failed", error=str(e) or type(e).__name__)


async def _notify(engine: AsyncEngine, count: int) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": str(count)})
        await conn.commit()


def install(ingestor, engine: AsyncEngine) -> None:
    """Make every ingest of this process wake the workers (idempotent)."""
    if getattr(ingestor, "_queue_wakeup_installed", False):
        return
    ingestor._queue_wakeup_installed = True

    async def on_created(task_ids: list[int]) -> None:
        await tasks_runnable(engine, task_ids)

    ingestor.on_tasks_created.append(on_created)
