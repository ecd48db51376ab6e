"""Content-addressed blob storage.

Every raw message and document is stored once under its sha256. The path is built
from the hash alone, so no name taken from a mail can ever become a path, and a
write is atomic (temp file, fsync, rename, fsync of the folder): a reader sees the
whole blob or none.

Orphans: a blob written by an ingest whose transaction then failed stays on disk
unreferenced. It is harmless (the retry of the same message reuses it) and
``gateway storage gc`` removes blobs no row references and older than an hour.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Protocol

from gateway.errors import StorageUnavailable

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore(Protocol):
    """The seam for an object store later: local disk today."""

    async def put(self, data: bytes, sha256: str | None = None) -> str: ...
    async def get(self, sha256: str) -> bytes: ...
    async def exists(self, sha256: str) -> bool: ...
    def open_path(self, sha256: str) -> Path: ...
    def iter_hashes(self) -> Iterator[str]: ...
    async def delete(self, sha256: str) -> None: ...
    async def check(self) -> None: ...


class LocalBlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self._tmp = self.root / "tmp"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)

    def _path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / "blobs" / sha256[:2] / sha256[2:4] / sha256

    def open_path(self, sha256: str) -> Path:
        return self._path(sha256)

    def _put_sync(self, data: bytes, sha256: str | None) -> str:
        digest = sha256 or sha256_hex(data)
        final = self._path(digest)
        if final.exists():
            return digest
        try:
            self._make_dirs(final.parent)
            self._tmp.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=digest[:8], suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
            _fsync_dir(final.parent)
        except OSError as e:
            raise StorageUnavailable(f"cannot write blob: {e.strerror or e}") from e
        return digest

    def _make_dirs(self, folder: Path) -> None:
        """Create the shard folders; a folder created here has its entry in its
        parent fsynced too, or a power loss could take the new folder, and every
        blob already committed under it, with it."""
        if folder.is_dir():
            return
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:  # another writer made it: it fsyncs it too
                pass
            _fsync_dir(new.parent)

    async def put(self, data: bytes, sha256: str | None = None) -> str:
        return await asyncio.to_thread(self._put_sync, data, sha256)

    def put_sync(self, data: bytes, sha256: str | None = None) -> str:
        return self._put_sync(data, sha256)

    async def get(self, sha256: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(sha256).read_bytes)
        except OSError as e:
            raise StorageUnavailable(f"cannot read blob {sha256}: {e.strerror or e}") from e

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self._path(sha256).exists)

    def iter_hashes(self) -> Iterator[str]:
        base = self.root / "blobs"
        if not base.exists():
            return
        for p in base.glob("*/*/*"):
            if _SHA256.match(p.name):
                yield p.name

    async def delete(self, sha256: str) -> None:
        try:
            await asyncio.to_thread(self._path(sha256).unlink)
        except FileNotFoundError:
            pass

    def _check_sync(self) -> None:
        self.ensure()
        # A unique name per call: concurrent health probes must not race.
        fd, probe = tempfile.mkstemp(dir=self._tmp, prefix="probe-")
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)

    async def check(self) -> None:
        """Raise StorageUnavailable unless the root is writable."""
        try:
            await asyncio.to_thread(self._check_sync)
        except OSError as e:
            raise StorageUnavailable(f"storage root {self.root} not writable: {e.strerror or e}") from e
