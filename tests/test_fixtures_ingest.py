"""Each rule of the foundation, end to end: fixture file → ingest → rows."""

from __future__ import annotations

from sqlalchemy import select

from gateway.storage import models as m
from tests.conftest import FIXTURES


async def ingest_fixture(rt, name: str, queue: str = "invoices"):
    raw = (FIXTURES / name).read_bytes()
    result = await rt.ingestor.ingest(raw, "replay", queues=[queue])
    async with rt.sessions() as s:
        docs = (
            await s.scalars(select(m.Document).where(m.Document.upload_id == result.upload_ids[0]).order_by(m.Document.id))
        ).all()
        tasks = (await s.scalars(select(m.Task).where(m.Task.upload_id == result.upload_ids[0]))).all()
        email = await s.get(m.Email, result.email_id)
    return result, list(docs), {t.document_id: t for t in tasks}, email


async def test_outlook_forward_as_attachment(runtime):
    _, docs, tasks, _ = await ingest_fixture(runtime, "outlook_forward_as_attachment.eml")
    kinds = [d.kind for d in docs]
    assert kinds[0] == "body"
    # Opened (forwarded = "open"): the .eml is kept without a task; the
    # forwarded mail's own body and its PDF are documents with tasks.
    fwd = next(d for d in docs if d.content_type == "message/rfc822")
    assert fwd.kind == "forwarded" and fwd.id not in tasks
    nested = [d for d in docs if d.kind == "nested"]
    assert len(nested) == 2 and all(d.parent_id == fwd.id and d.id in tasks for d in nested)
    assert [d.sniffed_type for d in nested] == ["text/plain", "application/pdf"]


async def test_inline_logo_stays_with_body(runtime):
    _, docs, tasks, _ = await ingest_fixture(runtime, "html_inline_logo.eml")
    body = docs[0]
    assert body.kind == "body" and body.content_type == "text/html"
    # logo.png is referenced by the HTML (cid:); photo.jpg is inline too but not
    # referenced, so a person attached it.
    inline = [d for d in docs if d.kind == "inline"]
    assert [d.filename for d in inline] == ["logo.png"]
    assert all(d.parent_id == body.id and d.id not in tasks for d in inline)
    attachments = [d for d in docs if d.kind == "attachment"]
    assert sorted(d.filename for d in attachments) == ["invoice-77.pdf", "photo.jpg"]
    assert all(d.id in tasks for d in attachments)
    assert len(tasks) == 3  # body, photo, PDF; not the logo


async def test_rfc2231_and_rfc2047_filenames_are_decoded(runtime):
    _, docs, _, _ = await ingest_fixture(runtime, "rfc2231_filename.eml")
    att = [d for d in docs if d.kind == "attachment"]
    assert att and all(d.original_filename and not d.original_filename.isascii() for d in att)
    _, docs, _, _ = await ingest_fixture(runtime, "rfc2047_filename.eml")
    att = [d for d in docs if d.kind == "attachment"]
    assert att and all("=?" not in d.original_filename for d in att)


async def test_path_traversal_filename_is_neutralised(runtime):
    _, docs, _, _ = await ingest_fixture(runtime, "path_traversal_filename.eml")
    names = {d.original_filename: d.filename for d in docs if d.kind == "attachment"}
    assert names["../../etc/passwd"] == "passwd"
    assert names["..\\..\\Windows\\System32\\invoice.pdf"] == "invoice.pdf"
    assert names["CON.txt"] != "CON.txt"  # a reserved device name on Windows
    root = runtime.blobs.root
    assert all(p.resolve().is_relative_to(root) for p in root.rglob("*"))


async def test_redelivery_with_extra_received_header(runtime):
    first, *_ = await ingest_fixture(runtime, "duplicate_original.eml")
    second, *_ = await ingest_fixture(runtime, "duplicate_with_received.eml")
    assert first.status == "created" and second.status == "duplicate"
    assert second.upload_ids == first.upload_ids


async def test_message_without_body_has_no_body_task(runtime):
    # body_task = "non_empty" (the default): the body is stored, no task for it.
    _, docs, tasks, _ = await ingest_fixture(runtime, "no_body.eml")
    assert docs[0].kind == "body" and docs[0].size == 0 and docs[0].id not in tasks
    assert not tasks  # and it has nothing else: an upload with no task (status "completed")


async def test_broken_boundary_is_recorded_not_fatal(runtime):
    for name in ("broken_boundary.eml", "wrong_boundary.eml"):
        result, docs, tasks, email = await ingest_fixture(runtime, name)
        assert result.status == "created"
        assert docs[0].kind == "body" and docs[0].id in tasks
        assert email.defects, name


async def test_odd_charsets_come_out_as_utf8(runtime):
    for name in ("odd_charset.eml", "unknown_charset_body.eml"):
        _, docs, _, email = await ingest_fixture(runtime, name)
        body = await runtime.blobs.get(docs[0].sha256)
        body.decode("utf-8")  # re-encoded, never raw bytes of another charset
        assert email.subject
