"""`gateway replay` in its own process wakes the workers of a running daemon,
on SQLite (the data_version watch) and on PostgreSQL (NOTIFY from the
replay's commit): the task runs long before the workers' 60 s poll."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from gateway.queue.worker import WorkerPool
from gateway.runtime import open_runtime
from tests.test_cli import write_config
from tests.test_ingest import make_mail

from .conftest import Recorder, wait_status


async def test_replay_in_another_process_wakes_the_daemon(db_url, make_settings, tmp_path):
    workers = {"enabled": True, "poll_seconds": 60, "backoff_seconds": 0.05, "lease_seconds": 30}
    settings = make_settings(db_url, workers=workers)
    cfg = write_config(tmp_path, db_url)
    mail = tmp_path / "in" / "one.eml"
    mail.parent.mkdir()
    mail.write_bytes(make_mail())
    async with open_runtime(settings, migrate=True) as daemon:
        rec = Recorder()
        pool = WorkerPool(daemon, processors={"invoices": [rec]})
        await pool.start()
        try:
            await asyncio.sleep(0.5)  # idle: the dispatcher waits for its 60 s poll
            env = {**os.environ, "GATEWAY_CONFIG": str(cfg)}
            started = time.monotonic()
            p = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "gateway", "replay", "--json", str(mail)],
                capture_output=True, text=True, env=env, timeout=120,
            )
            assert p.returncode == 0, p.stderr
            import json

            task_ids = json.loads(p.stdout.splitlines()[0])["uploads"][0]["tasks"]
            ids = [int(str(t).rsplit("/", 1)[-1]) for t in task_ids]
            await wait_status(daemon, ids, "completed", timeout=10)
            assert time.monotonic() - started < 15  # the replay's own start-up included; the poll is 60 s
        finally:
            await pool.stop(5)
