"""Text PostgreSQL's columns cannot hold (NUL, lone surrogates) is stored as
U+FFFD on both backends: mail over real SMTP, and a processor's output through
the worker. The raw message stays byte-exact in the blob store."""

from __future__ import annotations

import asyncio
import json
import smtplib
import sys

import pytest
from sqlalchemy import select

from gateway.queue.processors import Outcome, ProcessorFailed
from gateway.queue.worker import WorkerPool
from gateway.storage import models as m
from gateway.storage.text import storable
from tests.ingress.conftest import smtp_gateway, start_gateway  # noqa: F401  (fixtures)
from tests.queue.conftest import Recorder, add_tasks, events, queue_runtime, wait_status  # noqa: F401

pytestmark = pytest.mark.timeout(180)

R = "\ufffd"
INVOICES = "invoices@ap.example.com"


# --- the function ----------------------------------------------------------------------


def test_nul_and_lone_surrogates_become_the_replacement_character():
    assert storable("a\x00b") == f"a{R}b"
    assert storable("caf\udce9 \ud800\udc00") == f"caf{R} {R}{R}"  # a "pair" of code points is not UTF-8 either
    assert storable("été ✓ \u2400") == "été ✓ \u2400"
    assert storable(None) is None and storable(3) == 3


def test_clean_text_comes_back_as_the_same_object():
    from gateway.queue.states import TaskStatus

    s = "plain text"
    assert storable(s) is s
    assert storable(TaskStatus.QUEUED) is TaskStatus.QUEUED


def test_json_values_are_walked_keys_included():
    value = {"a\x00": ["x\x00", {"k": "\udc80", "n": 1, "none": None}], "t": ("y\x00",)}
    assert storable(value) == {f"a{R}": [f"x{R}", {"k": R, "n": 1, "none": None}], "t": [f"y{R}"]}
    # What both drivers must accept: strict UTF-8 with no NUL.
    json.dumps(storable(value), ensure_ascii=False).encode("utf-8")


# --- mail over SMTP --------------------------------------------------------------------


def _mail(*, subject: bytes = b"Invoice", msgid: bytes = b"<nul-test@supplier.example>", filename: bytes = b"invoice.pdf") -> bytes:
    return (
        b"From: Supplier <billing@supplier.example>\r\n"
        b"To: invoices@ap.example.com\r\n"
        b"Subject: " + subject + b"\r\n"
        b"Message-ID: " + msgid + b"\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n'
        b"\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Please find the invoice attached.\r\n"
        b"--b1\r\n"
        b"Content-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="' + filename + b'"\r\n'
        b"\r\n"
        b"%PDF-1.4 nul test\r\n"
        b"--b1--\r\n"
    )


def _send(port: int, raw: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=120) as c:
        c.ehlo()
        assert c.mail("billing@supplier.example")[0] == 250
        assert c.rcpt(INVOICES)[0] == 250
        code, text = c.data(raw)
        return code, text.decode()


async def _stored(gw):
    [email] = await gw.emails()
    [upload] = await gw.uploads()
    async with gw.rt.sessions() as s:
        docs = list((await s.scalars(select(m.Document).where(m.Document.upload_id == upload.id).order_by(m.Document.id))).all())
    return email, upload, docs


async def _accepted_once(gw, raw: bytes):
    code, text = await asyncio.to_thread(_send, gw.port, raw)
    assert code == 250 and text.startswith("2.0.0"), text
    # The same message again (a sender's retry) is the same upload, not an error.
    code, text = await asyncio.to_thread(_send, gw.port, raw)
    assert code == 250, text
    email, upload, docs = await _stored(gw)
    assert await gw.rt.blobs.get(email.raw_sha256) == raw  # the original, byte for byte
    return email, upload, docs


def _attachment(docs):
    [doc] = [d for d in docs if d.kind == "attachment"]
    return doc


async def test_nul_in_a_raw_attachment_filename(smtp_gateway):
    email, _, docs = await _accepted_once(smtp_gateway, _mail(filename=b"a\x00b.pdf"))
    doc = _attachment(docs)
    assert doc.original_filename == f"a{R}b.pdf"
    assert "\x00" not in doc.filename
    [part] = [p for p in email.parts if p["outcome"] == "document" and p["content_type"] == "application/pdf"]
    assert part["filename"] == f"a{R}b.pdf"


async def test_nul_in_an_rfc2047_attachment_filename(smtp_gateway):
    _, _, docs = await _accepted_once(smtp_gateway, _mail(filename=b"=?utf-8?q?a=00b.pdf?="))
    doc = _attachment(docs)
    assert doc.original_filename == f"a{R}b.pdf"
    assert "\x00" not in doc.filename


async def test_nul_in_an_rfc2047_subject(smtp_gateway):
    email, upload, _ = await _accepted_once(smtp_gateway, _mail(subject=b"=?utf-8?q?Invoice=00_42?="))
    assert email.subject == f"Invoice{R} 42"
    assert upload.name == email.subject


async def test_nul_raw_in_the_subject(smtp_gateway):
    # A raw NUL in a header line is not refused by the SMTP layer either.
    email, upload, _ = await _accepted_once(smtp_gateway, _mail(subject=b"Invoice \x00 42"))
    assert email.subject == f"Invoice {R} 42"
    assert upload.name == email.subject


async def test_nul_in_the_message_id(smtp_gateway):
    email, _, _ = await _accepted_once(smtp_gateway, _mail(msgid=b"<nul\x00id@supplier.example>"))
    assert email.message_id == f"nul{R}id@supplier.example"


# --- a processor's output --------------------------------------------------------------


async def test_processor_error_with_nul_is_stored_as_last_error(queue_runtime):
    def bad(job):
        raise ProcessorFailed("ERP said: bad\x00total")

    async with queue_runtime() as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(bad)]})
        await pool.start()
        try:
            [t] = await wait_status(rt, tid, "failed")
        finally:
            await pool.stop(5)
        assert t.last_error == f"ERP said: bad{R}total"
        assert (await events(rt, tid))[-1].reason == f"ERP said: bad{R}total"


async def test_retried_error_with_nul_is_stored(queue_runtime):
    from gateway.queue.processors import RetryLater

    def flaky(job):
        if job.attempt == 1:
            raise RetryLater("ERP down\x00")

    async with queue_runtime(workers={"backoff_seconds": 0.01}) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(flaky)]})
        await pool.start()
        try:
            [t] = await wait_status(rt, tid, "completed")
        finally:
            await pool.stop(5)
        assert t.attempts == 2
        assert any(f"ERP down{R}" in (e.reason or "") for e in await events(rt, tid))


async def test_processor_result_with_nul_and_a_lone_surrogate(queue_runtime):
    # What json.loads makes of a command's stdout {"note": "a\u0000b \udc80"}.
    result = json.loads('{"note\\u0000": "a\\u0000b \\udc80"}')

    async with queue_runtime() as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(lambda job: Outcome(result=result))]})
        await pool.start()
        try:
            [t] = await wait_status(rt, tid, "completed")
        finally:
            await pool.stop(5)
        assert t.result == {"processors": [{"type": "recorder", "result": {f"note{R}": f"a{R}b {R}"}}]}
