"""The folder processor: atomic copies, collision-free and safe names."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import FolderProcessor as FolderSettings
from gateway.queue.processors import Job, ProcessorFailed
from gateway.queue.processors.folder import FolderProcessor


def make_job(tmp_path: Path, data: bytes, filename: str = "invoice.pdf", task_id: int = 7) -> Job:
    p = tmp_path / f"blob-{hashlib.sha256(data).hexdigest()[:8]}"
    p.write_bytes(data)
    return Job(
        task_id=task_id, upload_id=3, document_id=task_id + 100, queue="invoices", attempt=1, path=p,
        filename=filename, content_type="application/pdf", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
    )


def folder(path: Path, pattern: str | None = None) -> FolderProcessor:
    kw = {"name_pattern": pattern} if pattern else {}
    return FolderProcessor(FolderSettings(type="folder", path=path, **kw))


async def test_copy_with_the_default_pattern_leaves_no_temp_file(tmp_path):
    out_dir = tmp_path / "outbox" / "invoices"
    out = await folder(out_dir).run(make_job(tmp_path, b"%PDF one"))
    assert out.result == {"path": str(out_dir / "3-7-invoice.pdf"), "name": "3-7-invoice.pdf"}
    assert (out_dir / "3-7-invoice.pdf").read_bytes() == b"%PDF one"
    assert sorted(p.name for p in out_dir.iterdir()) == ["3-7-invoice.pdf"]


async def test_same_name_different_content_never_overwrites(tmp_path):
    out_dir = tmp_path / "out"
    f = folder(out_dir, "{filename}")
    datas = [f"%PDF version {i}".encode() for i in range(20)]
    # Twenty workers at once, all wanting "invoice.pdf".
    outs = await asyncio.gather(*(f.run(make_job(tmp_path, d, task_id=i)) for i, d in enumerate(datas)))
    names = [o.result["name"] for o in outs]
    assert len(set(names)) == 20
    # One of them got the name; every other one its own, from its task id.
    assert names.count("invoice.pdf") == 1
    assert all(n in ("invoice.pdf", f"invoice-{i}.pdf") for i, n in enumerate(names))
    assert sorted(p.read_bytes() for p in out_dir.iterdir()) == sorted(datas)


async def test_a_thousand_and_more_files_of_the_same_name_all_land_quickly(tmp_path):
    out_dir = tmp_path / "out"
    f = folder(out_dir, "{filename}")
    jobs = [make_job(tmp_path, f"%PDF invoice number {i:05d}".encode(), task_id=i) for i in range(1, 1106)]
    started = time.perf_counter()
    for job in jobs:  # one after the other, as the clashes pile up
        await f.run(job)
    elapsed = time.perf_counter() - started
    print(f"\n1105 deliveries of invoice.pdf: {elapsed:.2f}s")
    names = sorted(p.name for p in out_dir.iterdir())
    assert len(names) == 1105 and "invoice.pdf" in names and "invoice-1105.pdf" in names
    # Each clash costs a try or two, not a walk over every earlier file.
    assert elapsed < 30


async def test_a_retried_task_finds_its_own_file_after_a_clash(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "invoice.pdf").write_bytes(b"someone else's invoice")
    f = folder(out_dir, "{filename}")
    job = make_job(tmp_path, b"%PDF ours", task_id=42)
    first = await f.run(job)
    second = await f.run(job)  # a retry after a crash
    assert first.result["name"] == second.result["name"] == "invoice-42.pdf"
    assert sorted(p.name for p in out_dir.iterdir()) == ["invoice-42.pdf", "invoice.pdf"]


async def test_every_name_taken_fails_without_the_folders_path(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    job = make_job(tmp_path, b"%PDF ours", task_id=7)
    for name in ("invoice.pdf", "invoice-7.pdf", f"invoice-7-{job.sha256[:12]}.pdf"):
        (out_dir / name).write_bytes(b"not ours")
    with pytest.raises(ProcessorFailed) as e:
        await folder(out_dir, "{filename}").run(job)
    assert "no free name for 'invoice.pdf' in the drop folder" in str(e.value)
    assert str(tmp_path) not in str(e.value)
    assert len(list(out_dir.iterdir())) == 3  # nothing overwritten, no temp file left


async def test_files_get_the_configured_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        default = await folder(tmp_path / "a").run(make_job(tmp_path, b"%PDF a"))
        chosen = await FolderProcessor(FolderSettings(type="folder", path=tmp_path / "b", mode=0o604)).run(
            make_job(tmp_path, b"%PDF b")
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(default.result["path"]).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(chosen.result["path"]).st_mode) == 0o604


def test_mode_is_read_as_octal():
    parsed = tomllib.loads('type = "folder"\npath = "/x"\nmode = 0o660')
    assert FolderSettings(**parsed).mode == 0o660
    assert FolderSettings(type="folder", path="/x", mode="0750").mode == 0o750
    assert FolderSettings(type="folder", path="/x", mode="0o600").mode == 0o600
    for bad in (640, "rw-r-----", "0999", 0o1777):
        with pytest.raises(ValidationError):
            FolderSettings(type="folder", path="/x", mode=bad)


async def test_retried_delivery_of_the_same_content_is_not_copied_twice(tmp_path):
    out_dir = tmp_path / "out"
    f = folder(out_dir)
    job = make_job(tmp_path, b"%PDF same")
    first = await f.run(job)
    second = await f.run(job)
    assert first.result == second.result
    assert len(list(out_dir.iterdir())) == 1


async def test_hostile_names_stay_inside_the_folder(tmp_path):
    out_dir = tmp_path / "out"
    f = folder(out_dir, "{filename}")
    for i, name in enumerate(["../../etc/passwd", "..", "a/b\\c.pdf", "CON", "\x00evil\x1b.pdf", ".hidden"]):
        out = await f.run(make_job(tmp_path, f"data {i}".encode(), filename=name, task_id=i))
        final = Path(out.result["path"])
        assert final.parent == out_dir and not final.name.startswith(".")
    assert not (tmp_path / "etc").exists()
    # A pattern with slashes does not make sub-folders either.
    out = await folder(out_dir, "{upload_id}/../{filename}").run(make_job(tmp_path, b"x", filename="ok.pdf"))
    assert Path(out.result["path"]).parent == out_dir


async def test_unwritable_folder_fails_clearly(tmp_path):
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    from gateway.queue.processors import RetryLater

    try:
        await folder(target / "sub").run(make_job(tmp_path, b"d"))
    except RetryLater as e:
        assert "cannot write to the drop folder" in str(e) and str(tmp_path) not in str(e)
    else:
        raise AssertionError("expected an error")
