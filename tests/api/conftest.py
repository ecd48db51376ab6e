"""A real gateway HTTP server on a socket, with keys of two organizations."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import pytest

from gateway.api.keys import SCOPES, create_key
from gateway.api.server import HTTPServer
from gateway.ingest import Envelope, UploadFile
from gateway.runtime import open_runtime
from tests.conftest import free_port


@dataclass
class Api:
    rt: object
    server: HTTPServer
    base: str
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = "acme", **kw) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30, **kw)

    async def key(self, organization: str, *scopes: str) -> str:
        return (await create_key(self.rt.sessions, organization, list(scopes))).key

    async def queue_id(self, name: str) -> int:
        from gateway import services as sv

        async with self.rt.sessions() as s:
            return (await sv.queue_by_name(s, name)).id

    async def ingest_mail(self, raw: bytes, rcpt: str = "invoices@ap.example.com"):
        return await self.rt.ingestor.ingest(raw, "smtp", Envelope(mail_from="a@b.example", rcpt_to=[rcpt]))

    async def ingest_files(self, queue: str = "invoices", n: int = 1):
        files = [UploadFile(f"f{i}.pdf", "application/pdf", b"%%PDF-1.4 file %d" % i) for i in range(n)]
        return await self.rt.ingestor.ingest_files(files, queue)


@pytest.fixture
async def make_api(make_settings):
    """Start a server for ``db_url`` with [http] overrides; stopped at teardown."""
    started: list = []

    async def make(db_url: str, **http) -> Api:
        port = free_port()
        settings = make_settings(
            db_url,
            http={"enabled": True, "host": "127.0.0.1", "port": port, "base_url": f"http://127.0.0.1:{port}", **http},
        )
        cm = open_runtime(settings, migrate=True)
        rt = await cm.__aenter__()
        server = HTTPServer(rt)
        await server.start()
        started.append((cm, server))
        api = Api(rt, server, f"http://127.0.0.1:{port}")
        api.keys["acme"] = await api.key("acme", *SCOPES)
        api.keys["globex"] = await api.key("globex", *SCOPES)
        return api

    yield make

    for cm, server in reversed(started):
        await server.stop(2)
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def api(db_url, make_api):
    api = await make_api(db_url)
    yield api


def mail(subject: str = "Invoice 42", to: str = "invoices@ap.example.com", filename: str = "facture-été.pdf") -> bytes:
    """A message with a body and one PDF attachment; CRLF line ends, a non-ASCII
    filename (RFC 2231) and bytes a re-encoding would change (trailing spaces)."""
    return (
        "From: Supplier <billing@supplier.example>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{hashlib.sha256((subject + to).encode()).hexdigest()[:16]}@supplier.example>\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Please find the invoice attached.   \r\n"
        "--b1\r\n"
        "Content-Type: application/pdf\r\n"
        f"Content-Disposition: attachment; filename*=UTF-8''{quote(filename)}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        "JVBERi0xLjQKJcOkw7zDtsOfCjEgMCBvYmoKPDwvVHlwZS9DYXRhbG9nPj4KZW5kb2JqCg==\r\n"
        "--b1--\r\n"
    ).encode("utf-8")
