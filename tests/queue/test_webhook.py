"""The webhook processor against a real HTTP receiver on loopback.

The receiver is a small HTTP/1.1 server written on asyncio streams: it records
each request (headers, body) and answers what the test tells it to, or hangs.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import WebhookProcessor as WebhookSettings
from gateway.queue.processors import Job, ProcessorFailed, RetryLater
from gateway.queue.processors.webhook import WebhookProcessor, parse_retry_after
from gateway.queue.worker import WorkerPool

from .conftest import add_tasks, wait_status


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def parts(self) -> dict[str, tuple[dict, bytes]]:
        """multipart/form-data → {name: (params, payload)} with the stdlib parser."""
        msg = email.message_from_bytes(
            f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode() + self.body,
            policy=email.policy.HTTP,
        )
        out = {}
        for part in msg.iter_parts():
            params = dict(part.get_params(header="content-disposition")[1:])
            params["content-type"] = part.get_content_type()
            out[params["name"]] = (params, part.get_payload(decode=True))
        return out


@dataclass
class Receiver:
    """Answers with ``status``/``headers``/``body``; ``hang`` never answers."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    handlers: set = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Request(method, path, headers, body))
            if self.hang:
                await asyncio.sleep(3600)
            reason = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error"}.get(self.status, "X")
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            writer.write(
                f"HTTP/1.1 {self.status} {reason}\r\nContent-Length: {len(self.body)}\r\n{extra}Connection: close\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver():
    r = Receiver()
    server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    r.port = server.sockets[0].getsockname()[1]
    yield r
    server.close()
    for t in r.handlers:  # a hanging answer is still waiting
        t.cancel()
    await asyncio.gather(*r.handlers, return_exceptions=True)


def make_job(tmp_path: Path, data: bytes = b"%PDF-1.7 invoice", filename: str = "invoice 7.pdf") -> Job:
    p = tmp_path / "blob"
    p.write_bytes(data)
    return Job(
        task_id=7, upload_id=3, document_id=5, queue="invoices", attempt=1, path=p, filename=filename,
        content_type="application/pdf", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        metadata={"task": {"id": 7}, "upload": {"id": 3, "name": "Invoice"}, "email": {"subject": "Invoice"}},
    )


def processor(url: str, **kw) -> WebhookProcessor:
    return WebhookProcessor(WebhookSettings(type="webhook", url=url, **kw))


async def test_200_with_json_is_done_and_sends_document_metadata_and_signature(receiver, tmp_path):
    receiver.body = b'{"extracted": {"total": "12.50"}}'
    receiver.headers = {"Content-Type": "application/json"}
    p = processor(receiver.url, secret="s3cret", headers={"X-Tenant": "acme"})
    try:
        out = await p.run(make_job(tmp_path))
    finally:
        await p.close()
    assert out.result == {"extracted": {"total": "12.50"}} and out.review is False
    [req] = receiver.requests
    assert req.method == "POST" and req.path == "/hook"
    assert req.headers["x-tenant"] == "acme" and req.headers["x-gateway-task"] == "7"
    parts = req.parts()
    params, payload = parts["file"]
    assert payload == b"%PDF-1.7 invoice"
    assert params["filename"] == "invoice 7.pdf" and params["content-type"] == "application/pdf"
    assert json.loads(parts["metadata"][1]) == {"task": {"id": 7}, "upload": {"id": 3, "name": "Invoice"}, "email": {"subject": "Invoice"}}
    ts = req.headers["x-gateway-timestamp"]
    expected = hmac.new(b"s3cret", ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-gateway-signature"] == f"sha256={expected}"


async def test_no_signature_without_a_secret(receiver, tmp_path):
    p = processor(receiver.url)
    try:
        out = await p.run(make_job(tmp_path))
    finally:
        await p.close()
    assert out.result is None
    assert "x-gateway-signature" not in receiver.requests[0].headers


async def test_json_asking_for_review(receiver, tmp_path):
    receiver.body = b'{"review": true, "why": "total unreadable"}'
    receiver.headers = {"Content-Type": "application/json; charset=utf-8"}
    p = processor(receiver.url)
    try:
        out = await p.run(make_job(tmp_path))
    finally:
        await p.close()
    assert out.review is True


async def test_429_is_retried_honouring_retry_after(receiver, tmp_path):
    receiver.status = 429
    receiver.headers = {"Retry-After": "120"}
    p = processor(receiver.url)
    try:
        with pytest.raises(RetryLater) as e:
            await p.run(make_job(tmp_path))
    finally:
        await p.close()
    assert e.value.retry_after == 120 and "429" in str(e.value)


async def test_500_is_retried(receiver, tmp_path):
    receiver.status = 500
    receiver.body = b"database is down"
    p = processor(receiver.url)
    try:
        with pytest.raises(RetryLater) as e:
            await p.run(make_job(tmp_path))
    finally:
        await p.close()
    assert e.value.retry_after is None and "500" in str(e.value) and "database is down" in str(e.value)


async def test_400_is_permanent_with_the_detail(receiver, tmp_path):
    receiver.status = 400
    receiver.body = b'{"detail": "not a PDF we can read", "code": "bad_request"}'
    receiver.headers = {"Content-Type": "application/json"}
    p = processor(receiver.url)
    try:
        with pytest.raises(ProcessorFailed) as e:
            await p.run(make_job(tmp_path))
    finally:
        await p.close()
    assert str(e.value) == "webhook answered 400: not a PDF we can read"


async def test_hanging_receiver_times_out_and_is_retried(receiver, tmp_path):
    receiver.hang = True
    p = processor(receiver.url, timeout=0.3)
    try:
        with pytest.raises(RetryLater) as e:
            await asyncio.wait_for(p.run(make_job(tmp_path)), 10)
    finally:
        await p.close()
    assert "timed out" in str(e.value)
    assert len(receiver.requests) == 1


async def test_connection_refused_is_retried(tmp_path):
    from tests.conftest import free_port

    p = processor(f"http://127.0.0.1:{free_port()}/hook")
    try:
        with pytest.raises(RetryLater) as e:
            await p.run(make_job(tmp_path))
    finally:
        await p.close()
    assert "unreachable" in str(e.value)


def test_retry_after_as_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_webhook_outcomes_through_the_worker(queue_runtime, receiver, tmp_path):
    """The worker turns answers into task states: 2xx result, 4xx last_error, 429 backoff."""
    queues = [
        {
            "name": "invoices",
            "organization": "acme",
            "addresses": ["invoices@ap.example.com"],
            "processors": [{"type": "webhook", "url": receiver.url, "timeout": 5}],
        }
    ]
    async with queue_runtime(queues=queues, workers={"backoff_seconds": 0.01}) as rt:
        pool = WorkerPool(rt)
        await pool.start()
        try:
            receiver.status, receiver.body = 200, b'{"id": "ext-1"}'
            receiver.headers = {"Content-Type": "application/json"}
            [ok] = await add_tasks(rt, "ok.pdf")
            [t] = await wait_status(rt, ok, "completed")
            assert t.result == {"processors": [{"type": "webhook", "result": {"id": "ext-1"}}]}
            meta = json.loads(receiver.requests[-1].parts()["metadata"][1])
            assert meta["task"]["id"] == ok and meta["upload"]["id"] == t.upload_id and meta["email"] is None
            assert meta["document"]["filename"] == "ok.pdf"

            receiver.status, receiver.body = 400, b'{"detail": "unknown supplier"}'
            [bad] = await add_tasks(rt, "bad.pdf")
            [t] = await wait_status(rt, bad, "failed")
            assert t.last_error == "webhook answered 400: unknown supplier" and t.attempts == 1

            receiver.status, receiver.body, receiver.headers = 429, b"", {"Retry-After": "60"}
            [later] = await add_tasks(rt, "later.pdf")
            for _ in range(500):
                t = (await wait_status(rt, later, "queued", "processing"))[0]
                if t.run_after is not None:
                    break
                await asyncio.sleep(0.02)
            assert t.status == "queued" and t.attempts == 1 and "429" in t.last_error
            assert t.run_after.timestamp() - t.updated_at.timestamp() >= 59
        finally:
            await pool.stop(5)
