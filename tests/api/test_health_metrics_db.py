"""/healthz and /metrics against a database that does not answer, and task
transition counts that come from the database, whoever made the transition."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import time

import pytest

from gateway.queue.steer import transition
from gateway.runtime import open_runtime
from gateway.storage import models as m
from gateway.storage.db import sqlite_path, transaction
from tests.conftest import base_config
from tests.queue.conftest import write_toml


def _transitions(metrics_text: str) -> dict[tuple[str, str], float]:
    return {
        (f, t): float(v)
        for f, t, v in re.findall(
            r'^gateway_task_transitions_total\{from_status="(\w+)",to_status="(\w+)"\} (\S+)$', metrics_text, re.M
        )
    }


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_healthz_answers_503_within_2s_while_sqlite_is_locked(db_url, api):
    await api.ingest_files("invoices", n=1)
    async with api.client(None) as c:
        assert (await c.get("/metrics")).status_code == 200  # numbers read while the database answers
        # Another process's writer (here another sqlite3 connection) holds the
        # write lock; the gateway's connections wait up to busy_timeout (30 s).
        locker = sqlite3.connect(sqlite_path(db_url), isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            for _ in range(2):  # the second probe joins the first, stuck one
                t0 = time.monotonic()
                r = await c.get("/healthz")
                elapsed = time.monotonic() - t0
                assert r.status_code == 503, r.text
                assert r.json() == {"detail": "database unavailable", "code": "error"}
                assert elapsed < 2.5, elapsed
            t0 = time.monotonic()
            r = await c.get("/metrics")
            assert r.status_code == 200 and time.monotonic() - t0 < 2.5
            assert 'gateway_tasks{status="queued"} 1.0' in r.text  # the last numbers read
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # Healthy again as soon as the lock is gone (the stuck probe gets through).
        deadline = time.monotonic() + 5
        while (r := await c.get("/healthz")).status_code != 200:
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.05)
        assert r.json() == {"status": "ok", "database": "ok", "storage": "ok"}


async def test_transitions_made_by_the_cli_and_other_runtimes_show_in_metrics(db_url, api, tmp_path, make_settings):
    t1, t2, t3 = (await api.ingest_files("invoices", n=3)).uploads[0].task_ids
    # A worker of another instance: its own runtime on the same database.
    async with open_runtime(make_settings(db_url)) as other:
        async with transaction(other.sessions) as s:
            for tid, path in ((t1, ["processing", "failed"]), (t2, ["processing", "reviewing"])):
                task = await s.get(m.Task, tid)
                for target in path:
                    transition(s, task, target, actor="other-instance")
    # A person at a shell: `gateway tasks ...` in its own process, whose counters
    # this server's process never sees.
    cfg = write_toml(tmp_path / "config.toml", base_config(db_url, tmp_path))
    for args in (["retry", str(t1)], ["complete", str(t2), "--reason", "ok"], ["discard", str(t3)]):
        p = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "--config", str(cfg), "tasks", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    async with api.client(None) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert _transitions(r.text) == {
        ("queued", "processing"): 2.0,
        ("processing", "failed"): 1.0,
        ("processing", "reviewing"): 1.0,
        ("failed", "queued"): 1.0,
        ("reviewing", "completed"): 1.0,
        ("queued", "discarded"): 1.0,
    }
