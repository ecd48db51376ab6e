"""Two real `gateway serve` processes on one PostgreSQL database share a backlog.

No task is lost, none runs twice — except the few the killed instance had in
flight, which the survivor runs again once their lease expires (at-least-once,
and the history shows why).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from sqlalchemy import func, select

from gateway.config import load_settings
from gateway.ingest import UploadFile
from gateway.runtime import open_runtime
from gateway.storage import models as m
from tests.conftest import base_config

from .conftest import write_toml

pytestmark = pytest.mark.slow

TASKS = 200
CONCURRENCY = 3


def start_instance(cfg, tmp_path, n):
    err = open(tmp_path / f"instance{n}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(cfg), "serve"], stdout=err, stderr=err)


async def counts(settings):
    async with open_runtime(settings, migrate=False, sync=False) as rt:
        async with rt.sessions() as s:
            return dict((await s.execute(select(m.Task.status, func.count()).group_by(m.Task.status))).all())


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_instances_share_a_backlog_and_survive_a_kill(db_url, tmp_path):
    runs = tmp_path / "runs.log"
    data = base_config(db_url, tmp_path)
    data["workers"] = {
        "enabled": True, "concurrency": CONCURRENCY, "lease_seconds": 3, "poll_seconds": 1, "backoff_seconds": 0.1,
        "shutdown_timeout": 10,
    }
    # Each run appends "task_id gateway_pid" (O_APPEND: one whole line per write).
    script = f'echo "$GATEWAY_TASK_ID $PPID" >> {runs}; sleep 0.2'
    data["queues"][0]["processors"] = [{"type": "command", "argv": ["/bin/sh", "-c", script]}]
    cfg = write_toml(tmp_path / "config.toml", data)
    settings = load_settings(cfg)

    async def backlog():
        async with open_runtime(settings, migrate=True) as rt:
            ids = []
            for u in range(TASKS // 10):
                files = [UploadFile(f"doc-{u}-{i}.pdf", "application/pdf", f"%PDF {u} {i}".encode()) for i in range(10)]
                ids += (await rt.ingestor.ingest_files(files, "invoices")).uploads[0].task_ids
            return ids

    ids = asyncio.run(backlog())
    assert len(ids) == TASKS

    a = start_instance(cfg, tmp_path, 1)
    b = start_instance(cfg, tmp_path, 2)
    try:
        # Wait until both instances are running tasks and A holds some leases.
        deadline = time.monotonic() + 60
        while True:
            lines = runs.read_text().split("\n") if runs.exists() else []
            pids = {ln.split()[1] for ln in lines if ln.strip()}
            in_flight = asyncio.run(_leased_by(settings, a.pid))
            if {str(a.pid), str(b.pid)} <= pids and len(lines) >= 40 and in_flight:
                break
            assert time.monotonic() < deadline, f"instances did not both start: {pids}"
            assert a.poll() is None and b.poll() is None, "an instance exited"
            time.sleep(0.05)
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        killed_at = time.monotonic()

        deadline = time.monotonic() + 90
        while (c := asyncio.run(counts(settings))).get("completed", 0) < TASKS:
            assert time.monotonic() < deadline, f"backlog not finished: {c}"
            assert b.poll() is None, "the surviving instance exited"
            time.sleep(0.2)
        assert c == {"completed": TASKS}
        assert time.monotonic() - killed_at >= 2  # the lost leases had to expire first
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        assert b.wait(30) == 0

    per_task = defaultdict(list)
    for ln in runs.read_text().splitlines():
        tid, pid = ln.split()
        per_task[int(tid)].append(int(pid))
    assert sorted(per_task) == sorted(ids)  # none lost

    history = asyncio.run(_events(settings))
    expired = {tid for tid, evs in history.items() if any("lease expired" in (e.reason or "") for e in evs)}
    assert expired, "the killed instance held no lease: the test proved nothing"
    assert len(expired) <= CONCURRENCY
    for tid, pids in per_task.items():
        if tid in expired:
            # Claimed by the killed instance, finished by the survivor. Its program
            # ran under the killed instance too unless the kill came between the
            # claim's commit and the program's start.
            assert pids in ([a.pid, b.pid], [b.pid]), (tid, pids)
            assert [e.to_status for e in history[tid]] == ["queued", "processing", "queued", "processing", "completed"]
            assert f":{a.pid}:" in history[tid][1].actor and history[tid][2].actor.startswith("sweeper ")
            assert f":{b.pid}:" in history[tid][3].actor
        else:
            assert len(pids) == 1, f"task {tid} ran twice: {pids}"
            assert [e.to_status for e in history[tid]] == ["queued", "processing", "completed"]
    assert {pids[0] for pids in per_task.values()} == {a.pid, b.pid}


async def _leased_by(settings, pid: int) -> int:
    async with open_runtime(settings, migrate=False, sync=False) as rt:
        async with rt.sessions() as s:
            return await s.scalar(
                select(func.count()).where(m.Task.status == "processing", m.Task.leased_by.like(f"%:{pid}:%"))
            )


async def _events(settings):
    async with open_runtime(settings, migrate=False, sync=False) as rt:
        async with rt.sessions() as s:
            rows = (await s.scalars(select(m.TaskEvent).order_by(m.TaskEvent.id))).all()
    out = defaultdict(list)
    for e in rows:
        out[e.task_id].append(e)
    return out
