"""Orphan blob collection: blobs written by an ingest whose transaction failed."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from gateway.storage import models as m


async def collect_orphans(rt, *, min_age: float = 3600, dry_run: bool = False) -> list[str]:
    """Delete blobs older than ``min_age`` seconds that no row references.

    The age guard keeps an ingest in flight (blobs written, rows not yet
    committed) from losing its blobs.
    """
    async with rt.sessions() as s:
        used = set((await s.scalars(select(m.Email.raw_sha256))).all())
        used |= set((await s.scalars(select(m.Document.sha256))).all())
    cutoff = time.time() - min_age

    def scan() -> list[str]:
        out = []
        for h in rt.blobs.iter_hashes():
            if h not in used and rt.blobs.open_path(h).stat().st_mtime < cutoff:
                out.append(h)
        return out

    orphans = await asyncio.to_thread(scan)
    if not dry_run:
        for h in orphans:
            await rt.blobs.delete(h)
    return orphans
