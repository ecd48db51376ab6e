"""`gateway tasks retry|complete|discard` as a user runs it: a real subprocess."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from gateway.queue.steer import transition
from gateway.runtime import open_runtime
from gateway.storage import models as m
from tests.conftest import base_config

from .conftest import add_tasks, write_toml

GATEWAY = [sys.executable, "-m", "gateway"]


@pytest.fixture
def setup(tmp_path, sqlite_url, make_settings):
    """Two uploads: upload A with tasks failed, failed, reviewing, queued; upload B with one failed."""
    data = base_config(sqlite_url, tmp_path)
    cfg = write_toml(tmp_path / "config.toml", data)
    settings = make_settings(sqlite_url)

    async def build():
        async with open_runtime(settings, migrate=True) as rt:
            a = await add_tasks(rt, "f1.pdf", "f2.pdf", "r.pdf", "q.pdf")
            b = await add_tasks(rt, "g.pdf")
            async with rt.sessions() as s, s.begin():
                for tid, end in zip(a + b, ["failed", "failed", "reviewing", None, "failed"]):
                    if end is None:
                        continue
                    t = await s.get(m.Task, tid)
                    transition(s, t, "processing", actor="test", attempts=1)
                    transition(s, t, end, actor="test", last_error="boom" if end == "failed" else None)
            return a, b

    a, b = asyncio.run(build())
    return cfg, a, b, settings


def gw(cfg, *args):
    return subprocess.run([*GATEWAY, "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)


def statuses(settings, ids):
    async def read():
        async with open_runtime(settings) as rt:
            async with rt.sessions() as s:
                return [(await s.get(m.Task, i)).status for i in ids]

    return asyncio.run(read())


def test_single_task_steering_and_wrong_state(setup):
    cfg, a, b, settings = setup
    r = gw(cfg, "tasks", "retry", str(a[0]), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["id"] == a[0] and d["status"] == "queued" and d["attempts"] == 0

    r = gw(cfg, "tasks", "retry", str(a[3]))  # queued: nothing to retry
    assert r.returncode == 1 and r.stdout == ""
    assert f"task {a[3]} is queued; retry applies to failed tasks only" in r.stderr

    r = gw(cfg, "tasks", "complete", str(a[2]))
    assert r.returncode == 0 and f"task {a[2]}: complete -> completed" in r.stdout
    r = gw(cfg, "tasks", "complete", str(a[2]))
    assert r.returncode == 1 and "is completed" in r.stderr

    r = gw(cfg, "tasks", "discard", "999999")
    assert r.returncode == 1 and "task 999999 not found" in r.stderr

    r = gw(cfg, "tasks", "discard")
    assert r.returncode == 2
    assert statuses(settings, a + b) == ["queued", "failed", "completed", "queued", "failed"]


def test_many_by_status_and_by_upload(setup):
    cfg, a, b, settings = setup
    r = gw(cfg, "tasks", "discard", "--upload", str(_upload_of(settings, a[0])), "--json")
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    # With --upload alone: every task of it the action applies to (failed, failed, reviewing, queued).
    assert sorted(d["id"] for d in out) == sorted(a) and {d["status"] for d in out} == {"discarded"}
    assert statuses(settings, b) == ["failed"]

    r = gw(cfg, "tasks", "retry", "--status", "failed", "--json")
    assert r.returncode == 0 and [json.loads(x)["id"] for x in r.stdout.splitlines()] == b
    assert statuses(settings, b) == ["queued"]

    # Asking for a state the action does not apply to: each one is an error, exit 1.
    r = gw(cfg, "tasks", "complete", "--status", "queued")
    assert r.returncode == 1 and f"task {b[0]} is queued" in r.stderr

    r = gw(cfg, "tasks", "retry", "--upload", "424242")
    assert r.returncode == 1 and "not found" in r.stderr


def _upload_of(settings, task_id):
    async def read():
        async with open_runtime(settings) as rt:
            async with rt.sessions() as s:
                return (await s.get(m.Task, task_id)).upload_id

    return asyncio.run(read())
