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


def test_new_shard_folders_are_fsynced_in_their_parents(tmp_path, monkeypatch):
    """A blob's rename is made durable by fsyncing its folder; a folder the
    write created must itself be made durable in its parent, up to the root."""
    import itertools

    import gateway.storage.blobs as blobs

    synced = []
    real = blobs._fsync_dir
    monkeypatch.setattr(blobs, "_fsync_dir", lambda folder: (synced.append(folder), real(folder)))
    store = LocalBlobStore(tmp_path / "root")
    store.ensure()
    h = store.put_sync(b"first")
    leaf = store.open_path(h).parent
    # blobs/ in the root, ab/ in blobs/, cd/ in ab/, then the blob's own entry in cd/.
    assert synced == [store.root, store.root / "blobs", leaf.parent, leaf]

    synced.clear()
    store.put_sync(b"first")  # already there: nothing written, nothing synced
    assert synced == []

    # Same first folder, new second one: only the new folder and the blob.
    data = next(d for d in (str(i).encode() for i in itertools.count())
                if sha256_hex(d)[:2] == h[:2] and sha256_hex(d)[2:4] != h[2:4])
    new_leaf = store.open_path(store.put_sync(data)).parent
    assert synced == [leaf.parent, new_leaf]
