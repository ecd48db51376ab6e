import os

import pytest

from gateway.errors import StorageUnavailable
from gateway.storage.blobs import LocalBlobStore, sha256_hex


async def test_put_is_content_addressed_and_idempotent(tmp_path):
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    h = await store.put(b"hello")
    assert h == sha256_hex(b"hello")
    path = store.open_path(h)
    assert path.is_relative_to(store.root) and path.name == h
    mtime = path.stat().st_mtime_ns
    assert await store.put(b"hello") == h
    assert path.stat().st_mtime_ns == mtime  # stored once
    assert await store.get(h) == b"hello"
    # No temporary file is left behind.
    assert os.listdir(store.root / "tmp") == []


def test_only_a_hash_can_name_a_path(tmp_path):
    store = LocalBlobStore(tmp_path)
    for bad in ("../../etc/passwd", "a" * 63, "A" * 64, "/" + "a" * 63):
        with pytest.raises(ValueError):
            store.open_path(bad)


async def test_unwritable_root_is_storage_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = LocalBlobStore(blocker / "root")
    with pytest.raises(StorageUnavailable):
        await store.put(b"data")
    with pytest.raises(StorageUnavailable):
        await store.check()


async def test_gc_removes_only_old_unreferenced_blobs(runtime):
    from gateway.storage.gc import collect_orphans
    from tests.test_ingest import make_mail

    await runtime.ingestor.ingest(make_mail(), "replay")
    orphan = await runtime.blobs.put(b"left by a failed ingest")
    young = await runtime.blobs.put(b"an ingest in flight")
    old = runtime.blobs.open_path(orphan)
    os.utime(old, (1, 1))
    removed = await collect_orphans(runtime, min_age=3600)
    assert removed == [orphan]
    assert not old.exists()
    assert runtime.blobs.open_path(young).exists()
    # Referenced blobs survive even when old.
    for h in list(runtime.blobs.iter_hashes()):
        os.utime(runtime.blobs.open_path(h), (1, 1))
    assert await collect_orphans(runtime, min_age=3600) == [young]


async def test_concurrent_checks_do_not_race(tmp_path):
    import asyncio

    store = LocalBlobStore(tmp_path / "root")
    await asyncio.gather(*(store.check() for _ in range(200)))


def test_shard_folders_are_made_once_and_fsynced_in_their_parents(tmp_path, monkeypatch):
    """A blob's rename is made durable by fsyncing its folder; the folders
    themselves are made by ensure() (all 256 at once, their entries fsynced up
    to the root), and one removed under a running store is made again by the
    write that needs it, its entry fsynced too."""
    import itertools

    import gateway.storage.blobs as blobs

    synced = []
    real = blobs._fsync_dir
    monkeypatch.setattr(blobs, "_fsync_dir", lambda folder: (synced.append(folder), real(folder)))
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    base = store.root / "blobs"
    assert sorted(p.name for p in base.iterdir()) == [".layout", *(f"{i:02x}" for i in range(256))]
    assert synced == [base, store.root]
    synced.clear()
    store.ensure()  # already made: nothing to do
    assert synced == []

    h = store.put_sync(b"first")
    assert store.open_path(h) == base / h[:2] / h
    assert synced == [base / h[:2]]  # only the blob's own entry
    synced.clear()
    store.put_sync(b"first")  # already there: nothing written, nothing synced
    assert synced == []

    data = next(d for d in (str(i).encode() for i in itertools.count()) if sha256_hex(d)[:2] != h[:2])
    shard = base / sha256_hex(data)[:2]
    shard.rmdir()
    assert store.put_sync(data) == sha256_hex(data)
    assert synced == [base, shard]
    assert store.open_path(sha256_hex(data)).read_bytes() == data


async def test_blobs_in_the_two_level_layout_are_still_found(tmp_path):
    """Earlier versions stored blobs/ab/cd/<sha256>: in a store they made, such a
    blob is read, served, deduplicated, listed and deleted where it is."""
    data = b"stored by an earlier version"
    h = sha256_hex(data)
    root = tmp_path / "root"
    legacy = root / "blobs" / h[:2] / h[2:4] / h
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(data)
    store = LocalBlobStore(root)
    store.ensure()
    assert (root / "blobs" / ".layout").read_text() == "one-level two-level\n"
    assert store.two_level
    assert store.open_path(h) == legacy
    assert await store.exists(h) and await store.get(h) == data
    assert await store.file_for(h, "document 1") == legacy
    assert await store.put(data) == h
    assert not (root / "blobs" / h[:2] / h).exists()  # not written twice
    new = await store.put(b"written by this version")
    assert store.open_path(new) == root / "blobs" / new[:2] / new
    assert set(store.iter_hashes()) == {h, new}
    # A second process (a parser helper) reads the same answer from the layout file.
    assert LocalBlobStore(root).two_level
    await store.delete(h)
    assert not legacy.exists() and not await store.exists(h)
    with pytest.raises(StorageUnavailable, match="document 1"):
        await store.file_for(h, "document 1")


def test_a_new_store_never_looks_for_two_level_paths(tmp_path):
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    assert (store.root / "blobs" / ".layout").read_text() == "one-level\n"
    assert not LocalBlobStore(store.root).two_level
    data = b"x"
    h = sha256_hex(data)
    stray = store.root / "blobs" / h[:2] / h[2:4] / h
    stray.parent.mkdir()
    stray.write_bytes(data)
    assert store.open_path(h) == store.root / "blobs" / h[:2] / h
    assert list(store.iter_hashes()) == []
    assert store.put_sync(data) == h and store.open_path(h).read_bytes() == data


def _count_fsyncs(monkeypatch):
    import gateway.storage.blobs as blobs

    synced = []  # file descriptors (files) and paths (folders)
    real_fsync = os.fsync

    def fsync_dir(folder):
        synced.append(folder)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            real_fsync(fd)
        finally:
            os.close(fd)

    monkeypatch.setattr(blobs.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    monkeypatch.setattr(blobs, "_fsync_dir", fsync_dir)
    return synced


def test_unsynced_puts_are_made_durable_by_one_syncfs(tmp_path, monkeypatch):
    """sync=False defers durability to flush_sync, which is one syncfs(2) of the
    root's filesystem for every blob written since the last flush."""
    import gateway.storage.blobs as blobs

    if blobs._syncfs is None:
        pytest.skip("no syncfs(2) on this platform (the fallback is tested below)")
    synced = _count_fsyncs(monkeypatch)
    calls = []
    real_syncfs = blobs._syncfs
    monkeypatch.setattr(blobs, "_syncfs", lambda fd: (calls.append(fd), real_syncfs(fd))[1])
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    synced.clear()  # ensure()'s own folder fsyncs
    hashes = [store.put_sync(f"blob {i}".encode(), sync=False) for i in range(20)]
    assert synced == [] and calls == []
    store.flush_sync()
    assert len(calls) == 1 and synced == []
    store.flush_sync()  # nothing written since: nothing to do
    assert len(calls) == 1
    assert [store.open_path(h).read_bytes() for h in hashes] == [f"blob {i}".encode() for i in range(20)]


def test_flush_without_syncfs_fsyncs_each_file_and_changed_folder(tmp_path, monkeypatch):
    import gateway.storage.blobs as blobs

    monkeypatch.setattr(blobs, "_syncfs", None)
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    synced = _count_fsyncs(monkeypatch)
    h = store.put_sync(b"first", sync=False)
    assert synced == []
    store.flush_sync()
    # The file (by fd), then the folder whose entries changed (ensure() made it).
    assert len([s for s in synced if isinstance(s, int)]) == 1
    assert {s for s in synced if not isinstance(s, int)} == {store.open_path(h).parent}

    # A folder made again by the write (removed under a running store) too.
    synced.clear()
    shard = store.root / "blobs" / sha256_hex(b"second")[:2]
    if shard != store.open_path(h).parent:
        shard.rmdir()
    h2 = store.put_sync(b"second", sync=False)
    store.flush_sync()
    assert {s for s in synced if not isinstance(s, int)} >= {store.open_path(h2).parent}


def test_flush_failure_is_storage_unavailable_and_is_retried(tmp_path, monkeypatch):
    import gateway.storage.blobs as blobs

    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    store.put_sync(b"data", sync=False)

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blobs, "_syncfs", None)
    monkeypatch.setattr(blobs, "_fsync_dir", failing)
    monkeypatch.setattr(blobs.os, "fsync", failing)
    with pytest.raises(StorageUnavailable, match="cannot sync blobs"):
        store.flush_sync()
    monkeypatch.undo()
    synced = _count_fsyncs(monkeypatch)
    monkeypatch.setattr(blobs, "_syncfs", None)
    store.flush_sync()  # what failed is still pending
    assert synced


def test_a_truncated_blob_is_written_again(tmp_path):
    """An unsynced blob cut short by a crash (its row never committed) must not
    satisfy the next put of the same content."""
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    h = store.put_sync(b"the whole content", sync=False)
    store.open_path(h).write_bytes(b"")
    assert store.put_sync(b"the whole content", sync=False) == h
    assert store.open_path(h).read_bytes() == b"the whole content"


def test_put_recreates_a_removed_tmp_folder(tmp_path):
    import shutil

    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    shutil.rmtree(store.root / "tmp")
    h = store.put_sync(b"still stored", sync=False)
    assert store.open_path(h).read_bytes() == b"still stored"
    assert list((store.root / "tmp").iterdir()) == []


def test_a_refused_syncfs_falls_back_to_sync(tmp_path, monkeypatch):
    """A seccomp filter that refuses syncfs (EPERM) must not turn every message
    into a 451: sync(2) flushes the same blobs."""
    import ctypes
    import errno

    import gateway.storage.blobs as blobs

    def refused(fd):
        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(blobs, "_syncfs", refused)
    monkeypatch.setattr(blobs.ctypes, "get_errno", lambda: errno.EPERM)
    synced = []
    monkeypatch.setattr(blobs.os, "sync", lambda: synced.append(1))
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    store.put_sync(b"x", sync=False)
    store.flush_sync()
    assert synced == [1]


async def test_file_for_names_what_is_missing(tmp_path):
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    h = store.put_sync(b"served")
    assert (await store.file_for(h, "email 1")).read_bytes() == b"served"
    store.open_path(h).unlink()
    with pytest.raises(StorageUnavailable, match=f"blob {h} of email 1 is missing"):
        await store.file_for(h, "email 1")
