"""The ingest core against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.errors import DatabaseUnavailable, MessageTooLarge, NoRoute, StorageUnavailable
from gateway.ingest import Envelope, UploadFile
from gateway.storage import models as m

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def make_mail(
    to="invoices@ap.example.com",
    subject="Invoice 42",
    attachments=(("invoice.pdf", PDF),),
    msgid="<inv-42@supplier.example>",
    cc=None,
    body="Please find the invoice attached.",
) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Supplier <billing@supplier.example>"
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = msgid
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    msg.set_content(body)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    if msg.is_multipart():
        msg.set_boundary("=====fixed-boundary=====")  # same input, same bytes
    return bytes(msg)


async def count(rt, model) -> int:
    async with rt.sessions() as s:
        return await s.scalar(select(func.count()).select_from(model))


async def test_one_upload_with_body_and_attachment_tasks(runtime):
    raw = make_mail(attachments=(("a.pdf", PDF), ("b.pdf", PDF + b"2")))
    result = await runtime.ingestor.ingest(raw, "replay")
    assert result.status == "created"
    assert len(result.uploads) == 1
    up = result.uploads[0]
    assert up.queue == "invoices" and len(up.task_ids) == 3
    async with runtime.sessions() as s:
        docs = (await s.scalars(select(m.Document).where(m.Document.upload_id == up.id).order_by(m.Document.id))).all()
        email = await s.get(m.Email, result.email_id)
        events = (await s.scalars(select(m.TaskEvent))).all()
    assert [d.kind for d in docs] == ["body", "attachment", "attachment"]
    assert [d.filename for d in docs[1:]] == ["a.pdf", "b.pdf"]
    assert docs[1].sniffed_type == "application/pdf"
    assert email.subject == "Invoice 42" and email.message_id == "inv-42@supplier.example"
    assert email.size == len(raw)
    # The raw message is stored byte for byte under its hash.
    assert await runtime.blobs.get(email.raw_sha256) == raw
    assert await runtime.blobs.get(docs[1].sha256) == PDF
    assert {(e.from_status, e.to_status) for e in events} == {(None, "queued")}
    assert len(events) == 3


async def test_same_message_twice_is_one_upload(runtime):
    raw = make_mail()
    first = await runtime.ingestor.ingest(raw, "smtp")
    second = await runtime.ingestor.ingest(raw, "smtp")
    assert second.status == "duplicate"
    assert second.upload_ids == first.upload_ids
    assert second.uploads[0].task_ids == first.uploads[0].task_ids
    assert await count(runtime, m.Upload) == 1
    assert await count(runtime, m.Task) == 2


async def test_redelivery_with_added_trace_headers_is_a_duplicate(runtime):
    raw = make_mail()
    relayed = (
        b"Received: from mx2.example.net (mx2 [192.0.2.7]) by gw; Mon, 23 Nov 2026 10:01:00 +0000\r\n"
        b"Return-Path: <billing@supplier.example>\r\n"
        b"Delivered-To: invoices@ap.example.com\r\n"
        + raw.replace(b"\n", b"\r\n")
    )
    first = await runtime.ingestor.ingest(raw, "replay")
    second = await runtime.ingestor.ingest(relayed, "smtp")
    assert second.status == "duplicate" and second.upload_ids == first.upload_ids
    assert await count(runtime, m.Email) == 1


async def test_a_changed_body_is_a_new_message(runtime):
    await runtime.ingestor.ingest(make_mail(), "replay")
    r = await runtime.ingestor.ingest(make_mail(body="A different text."), "replay")
    assert r.status == "created"
    assert await count(runtime, m.Upload) == 2


async def test_two_queues_give_two_uploads_and_a_later_third_queue_adds_one(runtime):
    raw = make_mail(to="invoices@ap.example.com", cc="orders+q4@globex.example.com")
    r = await runtime.ingestor.ingest(raw, "replay")
    assert sorted(u.queue for u in r.uploads) == ["invoices", "orders"]
    async with runtime.sessions() as s:
        orders = (await s.scalars(select(m.Upload).join(m.Queue).where(m.Queue.name == "orders"))).one()
    assert orders.meta == {"tag": "q4"}
    # Delivered again over SMTP to a third queue address: only that upload is new.
    env = Envelope(rcpt_to=["invoices@ap.example.com", "receipts@ap.example.com"])
    r2 = await runtime.ingestor.ingest(raw, "smtp", env)
    assert r2.status == "created"
    assert {(u.queue, u.created) for u in r2.uploads} == {("invoices", False), ("receipts", True)}
    assert await count(runtime, m.Upload) == 3
    assert await count(runtime, m.Email) == 1


async def test_document_seen_before_in_queue_is_marked_duplicate_of(runtime):
    r1 = await runtime.ingestor.ingest(make_mail(msgid="<a@x>"), "replay")
    r2 = await runtime.ingestor.ingest(make_mail(msgid="<b@x>", subject="Reminder"), "replay")
    async with runtime.sessions() as s:
        first = (await s.scalars(select(m.Document).where(m.Document.upload_id == r1.upload_ids[0], m.Document.kind == "attachment"))).one()
        second = (await s.scalars(select(m.Document).where(m.Document.upload_id == r2.upload_ids[0], m.Document.kind == "attachment"))).one()
    assert first.duplicate_of is None
    assert second.duplicate_of == first.id
    # Still a task of its own.
    assert len(r2.uploads[0].task_ids) == 2


async def test_duplicate_content_in_another_queue_is_not_marked(runtime):
    await runtime.ingestor.ingest(make_mail(msgid="<a@x>"), "replay")
    r = await runtime.ingestor.ingest(make_mail(msgid="<b@x>", to="receipts@ap.example.com"), "replay")
    async with runtime.sessions() as s:
        doc = (await s.scalars(select(m.Document).where(m.Document.upload_id == r.upload_ids[0], m.Document.kind == "attachment"))).one()
    assert doc.duplicate_of is None


async def test_no_route_is_permanent_and_stores_no_rows(runtime):
    with pytest.raises(NoRoute):
        await runtime.ingestor.ingest(make_mail(to="nobody@example.com"), "replay")
    assert await count(runtime, m.Email) == 0


async def test_explicit_queue_overrides_routing(runtime):
    r = await runtime.ingestor.ingest(make_mail(to="nobody@example.com"), "replay", queues=["receipts"])
    assert [u.queue for u in r.uploads] == ["receipts"]
    with pytest.raises(NoRoute):
        await runtime.ingestor.ingest(make_mail(), "replay", queues=["nope"])


async def test_too_large(make_settings, db_url):
    from gateway.runtime import open_runtime

    settings = make_settings(db_url, smtp={"max_message_size": 2048})
    async with open_runtime(settings, migrate=True) as rt:
        with pytest.raises(MessageTooLarge):
            await rt.ingestor.ingest(make_mail(attachments=(("big.pdf", PDF * 100),)), "replay")


async def test_concurrent_identical_deliveries_yield_one_upload(runtime):
    raw = make_mail()
    results = await asyncio.gather(*(runtime.ingestor.ingest(raw, "smtp") for _ in range(8)))
    assert len({tuple(r.upload_ids) for r in results}) == 1
    assert sorted(r.status for r in results).count("created") == 1
    assert await count(runtime, m.Upload) == 1
    assert await count(runtime, m.Task) == 2


async def test_storage_failure_is_temporary_and_writes_no_rows(runtime):
    # A regular file where the blob folder should be: every write fails.
    blobs_dir = runtime.blobs.root / "blobs"
    if blobs_dir.exists():
        import shutil

        shutil.rmtree(blobs_dir)
    blobs_dir.write_bytes(b"not a folder")
    with pytest.raises(StorageUnavailable):
        await runtime.ingestor.ingest(make_mail(), "smtp")
    assert await count(runtime, m.Email) == 0
    blobs_dir.unlink()
    r = await runtime.ingestor.ingest(make_mail(), "smtp")
    assert r.status == "created"


async def test_database_failure_is_temporary(make_settings, tmp_path):
    from gateway.runtime import open_runtime

    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    async with open_runtime(make_settings(url), migrate=True) as rt:
        async with rt.engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE task_events")
        with pytest.raises(DatabaseUnavailable):
            await rt.ingestor.ingest(make_mail(), "smtp")
        # Nothing half-written: the email row rolled back with the rest.
        assert await count(rt, m.Email) == 0


async def test_http_files_make_one_upload_without_body(runtime):
    r = await runtime.ingestor.ingest_files(
        [UploadFile("../../etc/passwd", "text/plain", b"root:x:0:0"), UploadFile("scan.pdf", None, PDF)],
        "invoices",
        name="Scans",
        metadata={"batch": 7},
    )
    up = r.uploads[0]
    assert len(up.task_ids) == 2 and r.email_id is None
    async with runtime.sessions() as s:
        docs = (await s.scalars(select(m.Document).where(m.Document.upload_id == up.id).order_by(m.Document.id))).all()
        upload = await s.get(m.Upload, up.id)
    assert [d.filename for d in docs] == ["passwd", "scan.pdf"]
    assert docs[0].original_filename == "../../etc/passwd"
    assert docs[1].sniffed_type == "application/pdf"
    assert upload.meta == {"batch": 7} and upload.name == "Scans"
    # Nothing was written outside the storage root.
    assert not (Path(runtime.blobs.root).parent / "etc").exists()


async def test_on_tasks_created_callback_gets_new_task_ids(runtime):
    seen = []
    runtime.ingestor.on_tasks_created.append(seen.append)
    r = await runtime.ingestor.ingest(make_mail(), "smtp")
    await runtime.ingestor.ingest(make_mail(), "smtp")  # duplicate: no call
    assert seen == [r.uploads[0].task_ids]


async def test_only_messages_over_64_kib_wait_for_an_ingest_slot(db_url, make_settings, monkeypatch):
    """storage.ingest_concurrency bounds the large messages being stored; a small
    one is stored while every slot is held by large ones, which queue."""
    from gateway.ingest import SMALL_MESSAGE_BYTES
    from gateway.runtime import open_runtime

    settings = make_settings(db_url, storage={"ingest_concurrency": 1})
    async with open_runtime(settings, migrate=True) as rt:
        ingestor = rt.ingestor
        release = asyncio.Event()
        started = []
        real_prepare = ingestor._prepare

        async def prepare(raw, source, envelope, queues):
            started.append(len(raw))
            if len(raw) > SMALL_MESSAGE_BYTES:
                await release.wait()
            return await real_prepare(raw, source, envelope, queues)

        monkeypatch.setattr(ingestor, "_prepare", prepare)
        big = [make_mail(msgid=f"<big-{i}@x>", attachments=(("a.pdf", PDF + bytes(100_000)),)) for i in range(2)]
        assert all(len(b) > SMALL_MESSAGE_BYTES for b in big)
        first = asyncio.create_task(ingestor.ingest(big[0], "replay"))
        second = asyncio.create_task(ingestor.ingest(big[1], "replay"))
        await asyncio.sleep(0.05)
        assert len(started) == 1  # the second large message waits for the slot
        small = await asyncio.wait_for(ingestor.ingest(make_mail(msgid="<small@x>"), "replay"), 30)
        assert small.status == "created" and len(started) == 2 and not first.done()
        release.set()
        assert (await first).status == "created" and (await second).status == "created"
        assert await count(rt, m.Email) == 3
