"""The part ledger, the per-queue policy and deduplication, end to end:
fixture → ingest → rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from gateway.runtime import open_runtime
from gateway.storage import models as m
from tests.conftest import FIXTURES

QUEUES = [
    {"name": "invoices", "organization": "acme", "addresses": ["invoices@ap.example.com"]},
    {"name": "texts", "organization": "acme", "addresses": ["texts@ap.example.com"], "body_format": "text"},
    {"name": "keepers", "organization": "acme", "addresses": ["keep@ap.example.com"], "forwarded": "keep"},
    {"name": "always", "organization": "acme", "addresses": ["always@ap.example.com"], "body_task": "always"},
    {"name": "never", "organization": "acme", "addresses": ["never@ap.example.com"], "body_task": "never"},
]


@pytest.fixture
async def rt(db_url, make_settings):
    async with open_runtime(make_settings(db_url, queues=QUEUES), migrate=True) as runtime:
        yield runtime


async def ingest(rt, raw: bytes, queue: str = "invoices", source: str = "replay"):
    result = await rt.ingestor.ingest(raw, source, queues=[queue])
    async with rt.sessions() as s:
        upload_id = result.upload_ids[0]
        docs = (await s.scalars(select(m.Document).where(m.Document.upload_id == upload_id).order_by(m.Document.id))).all()
        tasks = (await s.scalars(select(m.Task).where(m.Task.upload_id == upload_id))).all()
        email = await s.get(m.Email, result.email_id)
    return result, list(docs), {t.document_id: t for t in tasks}, email


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


async def test_ledger_is_stored_with_the_email_and_points_at_documents(rt):
    _, docs, tasks, email = await ingest(rt, fixture("apple_mail_fragments.eml"))
    by_ordinal = {d.ordinal: d for d in docs}
    outcomes = [(p["path"], p["content_type"], p["outcome"]) for p in email.parts]
    assert outcomes == [
        ("0", "multipart/mixed", "container"),
        ("1", "text/plain", "body"),
        ("2", "image/png", "document"),
        ("3", "text/plain", "body"),
        ("4", "application/pdf", "document"),
        ("5", "text/html", "body"),
    ]
    for p in email.parts:
        if p["document"] is not None:
            assert by_ordinal[p["document"]].sha256 == p["sha256"] or p["outcome"] == "body"
    # Apple Mail's text, image, text, file, html: every text fragment is in the body, in order.
    body = await rt.blobs.get(docs[0].sha256)
    assert body.index(b"the invoice is below") < body.index(b"Sent from my iPhone") < body.index(b"Jane Doe")
    assert docs[0].id in tasks and len(tasks) == 3  # body, scan.png, invoice-88.pdf


async def test_report_parts_are_stored_with_their_bytes_external_body_skipped(rt):
    _, docs, tasks, email = await ingest(rt, fixture("delivery_status_report.eml"))
    status = next(d for d in docs if d.filename == "status.txt")
    data = await rt.blobs.get(status.sha256)
    assert b"Final-Recipient: rfc822; nobody@example.com" in data and status.size == len(data) > 0
    skipped = [(p["path"], p["reason"]) for p in email.parts if p["outcome"] == "skipped"]
    assert skipped == [("5", "external_body")]
    assert all(d.size > 0 for d in docs if d.kind != "body")


async def test_empty_parts_make_no_task(rt):
    _, docs, tasks, email = await ingest(rt, fixture("empty_parts.eml"))
    assert [d.filename for d in docs if d.kind == "attachment"] == ["real.pdf"]
    assert {p["path"]: (p["outcome"], p["reason"]) for p in email.parts}["2"] == ("skipped", "empty")
    assert {p["path"]: (p["outcome"], p["reason"]) for p in email.parts}["3"] == ("skipped", "empty")
    assert len(tasks) == 2


@pytest.mark.parametrize("queue, body_task", [("invoices", False), ("always", True), ("never", False)])
async def test_body_task_setting(rt, queue, body_task):
    _, docs, tasks, _ = await ingest(rt, fixture("attachment_only.eml"), queue=queue)
    assert docs[0].kind == "body" and (docs[0].id in tasks) == body_task
    assert [d.filename for d in docs if d.id in tasks and d.kind == "attachment"] == ["scan.pdf"]


async def test_body_task_never_even_with_text(rt):
    _, docs, tasks, _ = await ingest(rt, fixture("apple_mail_fragments.eml"), queue="never")
    assert docs[0].id not in tasks and len(tasks) == 2


async def test_encrypted_mail_has_no_body_task_and_control_part_is_skipped(rt):
    _, docs, tasks, email = await ingest(rt, fixture("pgp_encrypted.eml"))
    assert [d.filename for d in docs if d.id in tasks] == ["encrypted.asc"]
    assert ("1", "skipped", "pgp_control") in [(p["path"], p["outcome"], p["reason"]) for p in email.parts]


@pytest.mark.parametrize("queue, body_type, other_type", [
    ("invoices", "text/html", "text/plain"), ("texts", "text/plain", "text/html"),
])
async def test_body_format_chooses_the_rendering(rt, queue, body_type, other_type):
    _, docs, tasks, _ = await ingest(rt, fixture("html_inline_logo.eml"), queue=queue)
    body = next(d for d in docs if d.kind == "body")
    alternative = next(d for d in docs if d.kind == "alternative")
    assert (body.content_type, alternative.content_type) == (body_type, other_type)
    assert body.id in tasks and alternative.id not in tasks


async def test_forwarded_mail_open_and_keep(rt):
    raw = fixture("outlook_forward_as_attachment.eml")
    _, docs, tasks, _ = await ingest(rt, raw, queue="invoices")
    opened = {(d.kind, d.content_type, d.id in tasks) for d in docs}
    assert ("forwarded", "message/rfc822", False) in opened
    assert ("nested", "application/pdf", True) in opened and ("nested", "text/plain", True) in opened
    _, docs, tasks, _ = await ingest(rt, raw, queue="keepers")
    kept = [(d.kind, d.content_type, d.id in tasks) for d in docs if d.kind not in ("body", "alternative")]
    assert kept == [("attachment", "message/rfc822", True)]


# --- dedup: the author's message, not the relays' headers ------------------------------

RELAY_HEADERS = [
    b"X-Spam-Status: No, score=-0.1 required=5.0 tests=DKIM_SIGNED\r\n",
    b"X-Virus-Scanned: amavisd-new at relay.example.net\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=relay.example.net; s=sel; b=abc\r\n",
    b"X-MS-Exchange-Organization-SCL: 1\r\nX-MS-Exchange-CrossTenant-Id: 42\r\n",
    b"Received: from second-mx.example.net by mx.ap.example.com; Tue, 01 Dec 2026 09:01:00 +0000\r\n",
]


@pytest.mark.parametrize("added", RELAY_HEADERS, ids=lambda h: h.split(b":")[0].decode())
async def test_relay_headers_do_not_make_a_new_upload(rt, added):
    raw = fixture("apple_mail_fragments.eml")
    first, *_ = await ingest(rt, raw)
    again, *_ = await ingest(rt, added + raw, source="smtp")
    assert again.status == "duplicate" and again.upload_ids == first.upload_ids
    lf, *_ = await ingest(rt, (added + raw).replace(b"\r\n", b"\n"), source="imap")
    assert lf.status == "duplicate" and lf.upload_ids == first.upload_ids
    async with rt.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(m.Email)) == 1


async def test_second_relay_path_with_rewritten_header_order_is_one_upload(rt):
    raw = fixture("apple_mail_fragments.eml")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    reordered = b"\r\n".join([b"Received: from relay2.example.net"] + list(reversed(lines))) + b"\r\n\r\n" + body
    first, *_ = await ingest(rt, raw)
    again, *_ = await ingest(rt, reordered, source="smtp")
    assert again.status == "duplicate" and again.upload_ids == first.upload_ids


async def test_same_message_id_different_mail_is_a_new_upload(rt):
    raw = fixture("apple_mail_fragments.eml")
    first, *_ = await ingest(rt, raw)
    other, *_ = await ingest(rt, raw.replace(b"Sent from my iPhone", b"Sent from my iPad"))
    assert other.status == "created" and other.upload_ids != first.upload_ids
    changed_from, *_ = await ingest(rt, raw.replace(b"billing@supplier.example", b"billing@supp1ier.example"))
    assert changed_from.status == "created"
