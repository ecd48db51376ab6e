"""API keys: created once (printed once), stored hashed, listed, revoked.

A key is ``gw_`` followed by 43 URL-safe random characters (256 bits). Because the
key is that random, a plain SHA-256 of it is a sufficient stored form: there is
nothing to brute-force, and a lookup is one indexed equality on ``key_hash``
(a slow password hash would cost every request a hundred milliseconds for no
gain). The first characters (``prefix``) are kept in clear so that a listing can
show which key is which.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.errors import NotFound, PermanentError
from gateway.storage import models as m
from gateway.storage.db import transaction

SCOPES = ("upload.create", "upload.read", "upload.edit", "task.read", "task.edit")
KEY_PREFIX = "gw_"
_PREFIX_LEN = 11  # "gw_" + 8 characters: enough to tell keys apart in a listing


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class CreatedKey:
    id: int
    key: str
    organization: str
    scopes: list[str]
    name: str | None

    def as_dict(self) -> dict:
        return {"id": self.id, "key": self.key, "organization": self.organization, "scopes": self.scopes}


def key_dict(k: m.ApiKey) -> dict:
    """A key as listings show it: never the key, only its prefix."""

    def ts(v):
        return v.isoformat().replace("+00:00", "Z") if v else None

    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "organization": k.organization.name,
        "scopes": list(k.scopes),
        "created_at": ts(k.created_at),
        "last_used_at": ts(k.last_used_at),
        "revoked_at": ts(k.revoked_at),
    }


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise PermanentError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not scopes:
        raise PermanentError("a key needs at least one scope")
    return list(dict.fromkeys(scopes))


async def create_key(
    sessions: async_sessionmaker[AsyncSession], organization: str, scopes: list[str], name: str | None = None
) -> CreatedKey:
    scopes = check_scopes(scopes)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    async with transaction(sessions) as s:
        org = (await s.scalars(select(m.Organization).where(m.Organization.name == organization))).one_or_none()
        if org is None:
            raise NotFound(f"organization {organization!r} not found (is it in the config?)")
        row = m.ApiKey(
            organization_id=org.id, name=name, prefix=key[:_PREFIX_LEN], key_hash=hash_key(key), scopes=scopes
        )
        s.add(row)
        await s.flush()
        key_id = row.id
    return CreatedKey(key_id, key, organization, scopes, name)


async def list_keys(sessions: async_sessionmaker[AsyncSession], *, include_revoked: bool = True) -> list[m.ApiKey]:
    async with sessions() as s:
        q = select(m.ApiKey).order_by(m.ApiKey.id)
        if not include_revoked:
            q = q.where(m.ApiKey.revoked_at.is_(None))
        return list((await s.scalars(q)).all())


async def revoke_key(sessions: async_sessionmaker[AsyncSession], key_id: int) -> m.ApiKey:
    """Idempotent: revoking a revoked key keeps its first revocation time."""
    async with transaction(sessions) as s:
        row = await s.get(m.ApiKey, key_id)
        if row is None:
            raise NotFound(f"API key {key_id} not found")
        if row.revoked_at is None:
            row.revoked_at = dt.datetime.now(dt.timezone.utc)
        await s.flush()
        return row


async def find_active_key(s: AsyncSession, key: str) -> m.ApiKey | None:
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = (await s.scalars(select(m.ApiKey).where(m.ApiKey.key_hash == hash_key(key)))).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return row
