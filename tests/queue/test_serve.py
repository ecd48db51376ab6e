"""The workers inside `gateway serve`: wired in, and a SIGTERM releases stuck work."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.config import load_settings
from gateway.ingest import UploadFile
from gateway.runtime import open_runtime
from gateway.storage import models as m
from tests.conftest import base_config

from .conftest import write_toml


def test_sigterm_finishes_quick_tasks_and_releases_stuck_ones(sqlite_url, tmp_path):
    started = tmp_path / "started"
    data = base_config(sqlite_url, tmp_path)
    data["workers"] = {"enabled": True, "concurrency": 2, "poll_seconds": 60, "shutdown_timeout": 1}
    # "stuck*" never ends on its own; the others take a moment.
    script = f'echo "$GATEWAY_TASK_ID" >> {started}; case "$GATEWAY_FILENAME" in stuck*) exec sleep 613;; esac'
    data["queues"][0]["processors"] = [{"type": "command", "argv": ["/bin/sh", "-c", script]}]
    cfg = write_toml(tmp_path / "config.toml", data)
    settings = load_settings(cfg)

    async def ingest(*names):
        async with open_runtime(settings, migrate=True) as rt:
            files = [UploadFile(n, "application/pdf", n.encode()) for n in names]
            return (await rt.ingestor.ingest_files(files, "invoices")).uploads[0].task_ids

    async def state(ids):
        async with open_runtime(settings) as rt:
            async with rt.sessions() as s:
                tasks = [await s.get(m.Task, i) for i in ids]
        return [t.status for t in tasks], [t.attempts for t in tasks]

    ids = asyncio.run(ingest("ok.pdf", "stuck.pdf"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        # Poll far longer than an hour away: only the start-up claim can have run them.
        while not (started.exists() and len(started.read_text().split()) == 2):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read().decode() if proc.poll() is not None else "timeout"
            time.sleep(0.05)
        while asyncio.run(state(ids))[0][0] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    statuses, attempts = asyncio.run(state(ids))
    assert statuses == ["completed", "queued"]  # released, never left processing
    assert attempts == [1, 0]
    # The stuck program was killed with its worker, not left running.
    assert not any("sleep\x00613" in _cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit())


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_text()
    except OSError:
        return ""
