"""Make the organizations and queues rows match the config."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.storage import models as m
from gateway.storage.db import transaction


async def sync_config(sessions: async_sessionmaker[AsyncSession], settings) -> None:
    """Make organizations and queues rows match the config (upsert by name).

    Queues that left the config are kept (their uploads stay readable) but marked
    inactive, so nothing new routes to them.
    """
    async with transaction(sessions) as s:
        orgs = {o.name: o for o in (await s.scalars(select(m.Organization))).all()}
        for o in settings.organizations:
            if o.name not in orgs:
                orgs[o.name] = m.Organization(name=o.name)
                s.add(orgs[o.name])
        await s.flush()
        existing = {q.name: q for q in (await s.scalars(select(m.Queue))).all()}
        for q in settings.queues:
            row = existing.pop(q.name, None)
            if row is None:
                row = m.Queue(name=q.name)
                s.add(row)
            row.organization_id = orgs[q.organization].id
            row.addresses = list(q.addresses)
            row.review = q.review
            row.active = True
        for row in existing.values():
            row.active = False
