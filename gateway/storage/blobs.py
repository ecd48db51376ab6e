"""Content-addressed blob storage.

Every raw message and document is stored once under its sha256. The path is built
from the hash alone, so no name taken from a mail can ever become a path, and a
write is atomic (temp file, fsync, rename, fsync of the folder): a reader sees the
whole blob or none.

Layout: ``blobs/<first two hex digits>/<sha256>``, 256 folders made once by
``ensure()`` (git's objects folder has the same shape). Earlier versions used
two levels (``blobs/ab/cd/<sha256>``): 65,536 folders, so nearly every blob of
a young store made a new folder, and a new store wrote blobs at a fraction of
its later speed. Blobs in that layout are still found (read, served,
collected); new ones go to the one-level layout.

Group durability: the ingest writes blobs with ``sync=False`` (temp file, rename,
no fsync) and calls ``flush_sync()`` once before the transaction that names them
commits. On Linux that is one ``syncfs(2)`` of the root's filesystem for a whole
group of messages instead of two to four fsyncs per blob (elsewhere, the fsyncs
deferred to that moment). A blob written that way and never flushed (a crash
before the commit) may be found truncated at its final path; ``put`` compares
the size of an existing blob and writes it again when it differs.

Orphans: a blob written by an ingest whose transaction then failed stays on disk
unreferenced. It is harmless (the retry of the same message reuses it) and
``gateway storage gc`` removes blobs no row references and older than an hour.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ctypes.util
import hashlib
import itertools
import os
import re
import tempfile
import threading
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


def _load_syncfs():
    """libc's syncfs(2) (Linux), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


class BlobStore(Protocol):
    """The seam for an object store later: local disk today."""

    async def put(self, data: bytes, sha256: str | None = None) -> str: ...
    def put_sync(self, data: bytes, sha256: str | None = None, *, sync: bool = True) -> str: ...
    def flush_sync(self) -> None: ...
    async def get(self, sha256: str) -> bytes: ...
    async def exists(self, sha256: str) -> bool: ...
    async def file_for(self, sha256: str, owner: str) -> Path: ...
    def open_path(self, sha256: str) -> Path: ...
    def iter_hashes(self) -> Iterator[str]: ...
    async def delete(self, sha256: str) -> None: ...
    async def check(self) -> None: ...


# In blobs/: written once ensure() has made the 256 folders. "one-level": every
# blob is in the one-level layout; "one-level two-level": the store was made by an
# earlier version, so a blob may also be at its two-level path.
_LAYOUT_FILE = ".layout"
_tmp_names = itertools.count()  # with the pid: unique temp names across stores and threads


class LocalBlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self._tmp = self.root / "tmp"
        self._base = self.root / "blobs"
        self._two_level: bool | None = None  # read from the layout file when first needed
        # What sync=False writes left to flush_sync: files, and folders whose
        # entries changed (only used where syncfs is not available).
        self._unsynced: list[Path] = []
        self._unsynced_lock = threading.Lock()
        # Held for a whole flush: a flush that finds nothing left to do must not
        # return while another one is still syncing what it took.
        self._flush_lock = threading.Lock()

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        base = self._base
        layout = base / _LAYOUT_FILE
        if layout.exists():
            return
        created = not base.is_dir()
        two_level = not created and any(base.iterdir())
        base.mkdir(exist_ok=True)
        for i in range(256):
            (base / f"{i:02x}").mkdir(exist_ok=True)
        tmp = self._tmp / f"layout.{os.getpid()}.{next(_tmp_names)}"
        tmp.write_text("one-level two-level\n" if two_level else "one-level\n")
        os.replace(tmp, layout)
        # A blob committed under these folders is only as durable as their entries.
        _fsync_dir(base)
        if created:
            _fsync_dir(self.root)
        self._two_level = two_level

    @property
    def two_level(self) -> bool:
        """Whether a blob may be at its two-level path (a store made by an
        earlier version; unknown counts as yes)."""
        if self._two_level is None:
            try:
                self._two_level = "two-level" in (self._base / _LAYOUT_FILE).read_text()
            except OSError:
                return True
        return self._two_level

    def _path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self._base / sha256[:2] / sha256

    def _legacy_path(self, sha256: str) -> Path:
        return self._base / sha256[:2] / sha256[2:4] / sha256

    def _existing(self, sha256: str) -> Path | None:
        """Where the blob is on disk: its path, or its two-level path; None if neither."""
        for path in self._paths(sha256):
            if path.exists():
                return path
        return None

    def _paths(self, sha256: str) -> list[Path]:
        path = self._path(sha256)
        return [path, self._legacy_path(sha256)] if self.two_level else [path]

    def _find(self, sha256: str) -> Path:
        return self._existing(sha256) or self._path(sha256)

    def open_path(self, sha256: str) -> Path:
        return self._find(sha256)

    def _stored_size(self, path: str, sha256: str) -> int | None:
        """The size of the blob already stored (at ``path``, its one-level path
        as a string, or its two-level path), or None."""
        for candidate in (path, self._legacy_path(sha256)) if self.two_level else (path,):
            try:
                return os.stat(candidate).st_size
            except (FileNotFoundError, NotADirectoryError):
                continue
        return None

    def _put_sync(self, data: bytes, sha256: str | None, sync: bool = True) -> str:
        # Plain strings and os calls: this runs for every blob of every message,
        # and pathlib's object building was a tenth of a helper's time.
        digest = sha256 or sha256_hex(data)
        if not _SHA256.match(digest):
            raise ValueError(f"not a sha256: {digest!r}")
        folder = f"{self._base}/{digest[:2]}"
        final = f"{folder}/{digest}"
        try:
            if self._stored_size(final, digest) == len(data):
                return digest
        except OSError as e:
            raise StorageUnavailable(f"cannot write blob: {e.strerror or e}") from e
        new_dirs: list[Path] = []
        tmp = f"{self._tmp}/{digest[:16]}.{os.getpid()}.{next(_tmp_names)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, 0o600)
            except FileNotFoundError:  # tmp/ removed under a running daemon
                self._tmp.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, flags, 0o600)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if sync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.replace(tmp, final)
                except FileNotFoundError:  # its folder is gone (removed under a running store)
                    new_dirs = self._make_dirs(Path(folder), sync)
                    os.replace(tmp, final)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
            if sync:
                _fsync_dir(Path(folder))
            elif _syncfs is None:
                with self._unsynced_lock:
                    self._unsynced += [Path(final), *new_dirs, Path(folder)]
            else:
                with self._unsynced_lock:
                    self._unsynced.append(Path(final))
        except OSError as e:
            raise StorageUnavailable(f"cannot write blob: {e.strerror or e}") from e
        return digest

    def _make_dirs(self, folder: Path, sync: bool) -> list[Path]:
        """Create the shard folders; a folder created here has its entry in its
        parent fsynced too (now, or by flush_sync), or a power loss could take
        the new folder, and every blob already committed under it, with it.
        Returns the parents whose entries changed."""
        if folder.is_dir():
            return []
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        changed = []
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:  # another writer made it: it fsyncs it too
                pass
            if sync:
                _fsync_dir(new.parent)
            else:
                changed.append(new.parent)
        return changed

    def mark_unsynced(self) -> None:
        """Another process wrote blobs with ``sync=False`` (it does so only where
        syncfs exists, which flushes them wherever they are): the next flush
        must not be skipped."""
        with self._unsynced_lock:
            self._unsynced.append(self.root)

    def flush_sync(self) -> None:
        """Make every blob written with ``sync=False`` so far durable."""
        with self._flush_lock:
            with self._unsynced_lock:
                pending, self._unsynced = self._unsynced, []
            if not pending:
                return
            try:
                if _syncfs is not None:
                    fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        if _syncfs(fd) != 0:
                            err = ctypes.get_errno()
                            if err not in (errno.EPERM, errno.ENOSYS, errno.EACCES):
                                raise OSError(err, os.strerror(err))
                            # Refused by a seccomp filter (a sandbox that allows
                            # sync(2) only): the whole system's flush also covers it.
                            os.sync()
                    finally:
                        os.close(fd)
                    return
                for path in dict.fromkeys(pending):
                    if path.is_dir():
                        _fsync_dir(path)
                    else:
                        with open(path, "rb") as fh:
                            os.fsync(fh.fileno())
            except OSError as e:
                with self._unsynced_lock:  # not durable: the next flush tries again
                    self._unsynced[:0] = pending
                raise StorageUnavailable(f"cannot sync blobs: {e.strerror or e}") from e

    async def put(self, data: bytes, sha256: str | None = None) -> str:
        return await asyncio.to_thread(self._put_sync, data, sha256)

    def put_sync(self, data: bytes, sha256: str | None = None, *, sync: bool = True) -> str:
        return self._put_sync(data, sha256, sync)

    async def get(self, sha256: str) -> bytes:
        try:
            return await asyncio.to_thread(lambda: self._find(sha256).read_bytes())
        except OSError as e:
            raise StorageUnavailable(f"cannot read blob {sha256}: {e.strerror or e}") from e

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self._existing, sha256) is not None

    async def file_for(self, sha256: str, owner: str) -> Path:
        """The path of a blob that a row (``owner``, for the error) names, to be
        served as a file; StorageUnavailable when it is not on disk."""
        path = await asyncio.to_thread(self._existing, sha256)
        if path is None:
            raise StorageUnavailable(f"blob {sha256} of {owner} is missing")
        return path

    def iter_hashes(self) -> Iterator[str]:
        base = self._base
        if not base.exists():
            return
        seen = set()
        for pattern in ("*/*", "*/*/*") if self.two_level else ("*/*",):
            for p in base.glob(pattern):
                if _SHA256.match(p.name) and p.name not in seen:
                    seen.add(p.name)
                    yield p.name

    async def delete(self, sha256: str) -> None:
        def unlink() -> None:
            for path in self._paths(sha256):
                try:
                    path.unlink()
                except (FileNotFoundError, NotADirectoryError):
                    pass

        await asyncio.to_thread(unlink)

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
