"""Durability: `gateway serve` is killed with SIGKILL while clients are sending.

Every message that got a 250 must be there whole (email, upload, documents, tasks,
task events, raw blob); nothing may be half there; and re-sending everything (what
an MTA does for the messages it has no 250 for) ends with exactly one upload each.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.config import load_settings
from gateway.runtime import open_runtime
from gateway.storage import models as m

from .conftest import free_port, make_mail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N = 60
CONNECTIONS = 4
KILL_AFTER = 20  # 250s received before the kill


def write_config(tmp_path: Path, db_url: str, port: int) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[storage]
database_url = "{db_url}"
root = "storage"

[smtp]
host = "127.0.0.1"
port = {port}
hostname = "gw.test"
shutdown_timeout = 10

[http]
enabled = false

[workers]
enabled = false

[logging]
format = "json"
level = "info"

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["invoices@ap.example.com"]
"""
    )
    return cfg


def start_daemon(cfg: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "serve"],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"gateway serve did not listen:\n{log.read_text()}")


def message(i: int) -> bytes:
    return make_mail(msgid=f"<dur-{i}@x>", subject=f"Invoice {i}", pdf=b"%PDF-1.4\n%" + str(i).encode() * 50)


def sender(port: int, numbers: list[int], acked: dict[int, str], lock: threading.Lock) -> None:
    """Send each message on one connection; record the ones answered 250."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
            c.ehlo()
            for i in numbers:
                c.mail("billing@supplier.example")
                c.rcpt("invoices@ap.example.com")
                code, text = c.data(message(i))
                if code == 250:
                    with lock:
                        acked[i] = text.decode()
    except (OSError, smtplib.SMTPException):
        pass  # killed mid-stream: the rest have no 250


async def check_whole(settings) -> dict[str, int]:
    """Everything in the database is whole; returns message-id → upload id."""
    async with open_runtime(settings, migrate=False, sync=False) as rt:
        async with rt.sessions() as s:
            emails = (await s.scalars(select(m.Email))).all()
            out = {}
            for e in emails:
                raw = rt.blobs.open_path(e.raw_sha256).read_bytes()
                assert hashlib.sha256(raw).hexdigest() == e.raw_sha256
                uploads = (await s.scalars(select(m.Upload).where(m.Upload.email_id == e.id))).all()
                assert len(uploads) == 1, f"email {e.id} has {len(uploads)} uploads"
                docs = (await s.scalars(select(m.Document).where(m.Document.upload_id == uploads[0].id))).all()
                tasks = (await s.scalars(select(m.Task).where(m.Task.upload_id == uploads[0].id))).all()
                assert len(docs) == 2 and len(tasks) == 2, f"email {e.id}: {len(docs)} documents, {len(tasks)} tasks"
                for d in docs:
                    assert rt.blobs.open_path(d.sha256).exists()
                for t in tasks:
                    n = await s.scalar(select(func.count()).select_from(m.TaskEvent).where(m.TaskEvent.task_id == t.id))
                    assert n == 1
                out[e.message_id.strip("<>")] = uploads[0].id
            assert await s.scalar(select(func.count()).select_from(m.Upload)) == len(emails)
            assert await s.scalar(select(func.count()).select_from(m.Task)) == 2 * len(emails)
            return out


async def test_sigkill_mid_stream_loses_nothing_acknowledged_and_resend_dedupes(tmp_path, db_url):
    port = free_port()
    cfg = write_config(tmp_path, db_url, port)
    log = tmp_path / "gateway.log"
    proc = start_daemon(cfg, port, log)
    acked: dict[int, str] = {}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=sender, args=(port, list(range(k, N, CONNECTIONS)), acked, lock))
        for k in range(CONNECTIONS)
    ]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for t in threads:
            await asyncio.to_thread(t.join, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert KILL_AFTER <= len(acked) < N, f"the kill came too late to prove anything ({len(acked)} of {N} acked)"

    settings = load_settings(cfg)
    proc = start_daemon(cfg, port, log)  # restarts on what the kill left behind
    try:
        stored = await check_whole(settings)
        for i, reply in acked.items():
            assert f"dur-{i}@x" in stored, f"message {i} got 250 ({reply}) but is not stored"
            assert f"upload {stored[f'dur-{i}@x']} " in reply

        # The MTA's view: re-send all N (the acknowledged ones would not be, but
        # a lost 250 looks the same to it): every one is answered 250 again.
        again: dict[int, str] = {}
        await asyncio.to_thread(sender, port, list(range(N)), again, lock)
        assert sorted(again) == list(range(N))
        stored = await check_whole(settings)
        assert len(stored) == N

        proc.send_signal(signal.SIGTERM)  # and a clean stop says 0
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert '"event": "smtp.accepted"' in log.read_text()
