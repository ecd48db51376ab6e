"""The folder processor: atomic copies, collision-free and safe names."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from gateway.config import FolderProcessor as FolderSettings
from gateway.queue.processors import Job
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
    names = sorted(o.result["name"] for o in outs)
    assert len(set(names)) == 20
    assert "invoice.pdf" in names and "invoice-1.pdf" in names and "invoice-19.pdf" in names
    assert sorted(p.read_bytes() for p in out_dir.iterdir()) == sorted(datas)


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
        assert "cannot write" in str(e)
    else:
        raise AssertionError("expected an error")
