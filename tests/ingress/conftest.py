"""Fixtures for the SMTP tests: a live listener on a free port, TLS material,
a throwaway Postfix relay, and small raw-socket/database helpers."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.ingress.smtp import SMTPListener
from gateway.runtime import Runtime, open_runtime
from gateway.storage import models as m
from tests.peers import postfix
from tests.peers.postfix import PostfixRelay

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def make_mail(
    *,
    to: str = "invoices@ap.example.com",
    subject: str = "Invoice 42",
    msgid: str = "<inv-42@supplier.example>",
    pdf: bytes | None = PDF,
    body: str = "Please find the invoice attached.",
) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Supplier <billing@supplier.example>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = msgid
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    msg.set_content(body)
    if pdf is not None:
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="invoice.pdf")
        msg.set_boundary("=====fixed-boundary=====")
    # CRLF line ends, as on the wire.
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


@dataclass
class LiveGateway:
    rt: Runtime
    listener: SMTPListener

    @property
    def port(self) -> int:
        return self.listener.port

    async def count(self, model) -> int:
        async with self.rt.sessions() as s:
            return await s.scalar(select(func.count()).select_from(model))

    async def emails(self) -> list[m.Email]:
        async with self.rt.sessions() as s:
            return list((await s.scalars(select(m.Email).order_by(m.Email.id))).all())

    async def uploads(self) -> list[m.Upload]:
        async with self.rt.sessions() as s:
            return list((await s.scalars(select(m.Upload).order_by(m.Upload.id))).all())


@pytest.fixture
async def start_gateway(db_url, make_settings):
    """``await start_gateway(**smtp_keys)``: a live SMTP listener on a free port over
    a fresh database of each backend; stopped at teardown."""
    stack = AsyncExitStack()

    async def start(storage: dict | None = None, **smtp) -> LiveGateway:
        settings = make_settings(db_url, smtp={"enabled": True, "port": 0, "hostname": "gw.test", **smtp},
                                 storage=storage or {})
        rt = await stack.enter_async_context(open_runtime(settings, migrate=True))
        listener = SMTPListener(rt)
        await listener.start()
        stack.push_async_callback(listener.stop, 2)
        return LiveGateway(rt, listener)

    async with stack:
        yield start


@pytest.fixture
async def smtp_gateway(start_gateway) -> LiveGateway:
    return await start_gateway()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost, made with openssl."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class RawSMTP:
    """A bare SMTP client over an asyncio socket: sends bytes exactly as given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> "RawSMTP":
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def reply(self, timeout: float = 30) -> tuple[int, str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                raise ConnectionError("closed by server")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def rest(self, timeout: float = 10) -> bytes:
        """Everything the server sends until it hangs up (TimeoutError if it does not)."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout)
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postfix_relay():
    """Start a throwaway Postfix relaying to a target port: ``start(target) -> (port, dir)``."""
    started: list[PostfixRelay] = []

    def start(target: int) -> tuple[int, Path]:
        if reason := postfix.missing():
            pytest.skip(reason)
        # Not under pytest's tmp folders: they are root-only, and Postfix's own
        # user must reach DIR.
        d = Path(tempfile.mkdtemp(prefix="gw-postfix-"))
        try:
            relay = PostfixRelay.create(d, target)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            shutil.rmtree(d, ignore_errors=True)
            pytest.fail(f"postfix relay did not start: {e}")
        started.append(relay)
        return relay.port, relay.dir

    yield start
    for relay in started:
        relay.stop()
        shutil.rmtree(relay.dir, ignore_errors=True)
