"""Helpers for the queue tests: a runtime with workers configured, tasks, waiting."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.ingest import UploadFile
from gateway.queue.processors import Outcome
from gateway.storage import models as m


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def write_toml(path: Path, data: dict) -> Path:
    """Enough TOML for a gateway config: tables, arrays of tables, queue processors."""
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"[[{key}]]")
                procs = item.get("processors", [])
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items() if k != "processors"]
                for p in procs:
                    lines.append(f"[[{key}.processors]]")
                    lines += [f"{k} = {toml_value(v)}" for k, v in p.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def queue_runtime(db_url, make_settings):
    """``async with queue_runtime(workers={...}, queues=[...]) as rt``: a migrated runtime."""
    from gateway.runtime import open_runtime

    @asynccontextmanager
    async def make(**sections):
        workers = {"enabled": True, "poll_seconds": 60, "backoff_seconds": 0.05, "lease_seconds": 30}
        workers.update(sections.pop("workers", {}))
        settings = make_settings(db_url, workers=workers, **sections)
        async with open_runtime(settings, migrate=True) as rt:
            yield rt

    return make


async def add_tasks(rt, *names: str, queue: str = "invoices", data: bytes | None = None) -> list[int]:
    """One upload with one task per file name; returns the task ids."""
    files = [UploadFile(n, "application/pdf", data if data is not None else f"%PDF {n} {time.time_ns()}".encode()) for n in names]
    result = await rt.ingestor.ingest_files(files, queue)
    return result.uploads[0].task_ids


async def get_task(rt, task_id: int) -> m.Task:
    async with rt.sessions() as s:
        return await s.get(m.Task, task_id)


async def events(rt, task_id: int) -> list[m.TaskEvent]:
    async with rt.sessions() as s:
        return list((await s.scalars(select(m.TaskEvent).where(m.TaskEvent.task_id == task_id).order_by(m.TaskEvent.id))).all())


async def wait_status(rt, task_ids, *statuses: str, timeout: float = 20.0) -> list[m.Task]:
    """Wait until every task is in one of ``statuses``; generous timeout, not a measurement."""
    ids = [task_ids] if isinstance(task_ids, int) else list(task_ids)
    deadline = time.monotonic() + timeout
    while True:
        async with rt.sessions() as s:
            rows = (await s.scalars(select(m.Task).where(m.Task.id.in_(ids)).order_by(m.Task.id))).all()
        if len(rows) == len(ids) and all(r.status in statuses for r in rows):
            return list(rows)
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks not {statuses}: {[(r.id, r.status, r.last_error) for r in rows]}")
        await asyncio.sleep(0.02)


class Recorder:
    """An in-process processor: records each run; ``behave(job)`` decides the outcome."""

    type = "recorder"

    def __init__(self, behave=None) -> None:
        self.runs: list[tuple[int, int]] = []  # (task_id, attempt)
        self.behave = behave

    async def run(self, job):
        self.runs.append((job.task_id, job.attempt))
        if self.behave is not None:
            r = self.behave(job)
            if asyncio.iscoroutine(r):
                r = await r
            if isinstance(r, Outcome):
                return r
        return Outcome(result={"seen": job.task_id})
