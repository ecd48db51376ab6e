"""Reads of the senders a queue has had verified, accepted mail from.

(Learning one is part of the ingest's commit: ``Rows.learn_sender``.)
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.storage import models as m

# A queue's look-alike comparison is built from at most this many senders.
MAX_KNOWN = 20_000


async def load(sessions: async_sessionmaker[AsyncSession], queue: str) -> list[tuple[str, str, str]]:
    """(organizational domain, display name, address) of the queue's known senders."""
    async with sessions() as s:
        rows = await s.execute(
            select(m.KnownSender.domain, m.KnownSender.display_name, m.KnownSender.address)
            .join(m.Queue, m.Queue.id == m.KnownSender.queue_id)
            .where(m.Queue.name == queue)
            .order_by(m.KnownSender.id)
            .limit(MAX_KNOWN)
        )
        return [(d, n or "", a or "") for d, n, a in rows]
