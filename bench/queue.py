"""Queue benchmark: pick-up latency and throughput, SQLite and PostgreSQL in one run.

    .venv/bin/python bench/queue.py [--tasks 1000] [--samples 200] [--concurrency 8]

What it measures, per backend:

- pick-up latency on an idle queue: one task at a time is committed (an HTTP-style
  upload through ``Ingestor.ingest_files``) and the time from the commit (the
  first ``on_tasks_created`` callback, which runs right after it) to the moment the
  processor starts is recorded; the next task is committed once the previous one
  started, so the queue is idle each time. It is measured twice: committed in
  the workers' own process (in-process wake-up) and committed by a second
  runtime with its own engine (the workers hear of it only through LISTEN/NOTIFY
  on PostgreSQL, or the PRAGMA data_version watch on SQLite, as with another
  process: a second instance, `gateway replay`, `gateway tasks retry`).
- throughput: a backlog of ``--tasks`` tasks is committed with the workers
  stopped, then the pool starts and the time until every task is ``completed``
  in the database gives tasks/s. The processor is a no-op registered in-process
  by this script (no built-in "noop" processor type exists), so the number is the
  queue's own cost: claim, lease, events, finish.

PostgreSQL is found at $GATEWAY_BENCH_DATABASE_URL (an admin URL; a scratch
database is created and dropped), default postgresql+asyncpg://postgres@127.0.0.1/postgres.
Run time is bounded: each phase stops at its own deadline (under 2 minutes in all).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named queue.py: drop its folder from the path before anything
# imports the standard library's ``queue`` (aiosqlite does), and use the repo.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid

from sqlalchemy import func, select  # noqa: E402

from gateway.config import settings_from_dict  # noqa: E402
from gateway.ingest import UploadFile  # noqa: E402
from gateway.observability import configure_logging  # noqa: E402
from gateway.queue import wakeup  # noqa: E402
from gateway.queue.processors import Outcome  # noqa: E402
from gateway.queue.worker import WorkerPool  # noqa: E402
from gateway.runtime import open_runtime  # noqa: E402
from gateway.storage import models as m  # noqa: E402

PG_ADMIN = os.environ.get("GATEWAY_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
PHASE_DEADLINE = 15.0  # seconds per phase and backend


class NoOp:
    """Records when each task's processing started; does nothing else."""

    type = "noop"

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.event = asyncio.Event()

    async def run(self, job):
        self.started[job.task_id] = time.perf_counter()
        self.event.set()
        return Outcome()


def config(db_url: str, root: Path, concurrency: int, synchronous: str = "full") -> dict:
    return {
        "storage": {"database_url": db_url, "root": str(root / "storage"), "sqlite_synchronous": synchronous},
        "smtp": {"enabled": False},
        "http": {"enabled": False},
        "workers": {"enabled": True, "concurrency": concurrency, "poll_seconds": 5, "lease_seconds": 60},
        "logging": {"format": "json", "level": "error"},
        "organizations": [{"name": "bench"}],
        "queues": [{"name": "bench", "organization": "bench", "addresses": ["bench@example.com"]}],
    }


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def latency(rt, ingest_rt, samples: int) -> list[float]:
    """ms from commit to processing start, one task at a time on an idle queue."""
    noop = NoOp()
    pool = WorkerPool(rt, processors={"bench": [noop]})
    await pool.start()
    committed: dict[int, float] = {}

    def mark(ids):
        now = time.perf_counter()
        for i in ids:
            committed[i] = now

    # First in the list: runs right after the commit, before any wake-up callback.
    ingest_rt.ingestor.on_tasks_created.insert(0, mark)
    out = []
    deadline = time.monotonic() + PHASE_DEADLINE
    try:
        for n in range(samples + 5):
            if time.monotonic() > deadline:
                break
            noop.event.clear()
            await asyncio.sleep(0.005)  # let the pool settle back to idle
            r = await ingest_rt.ingestor.ingest_files([UploadFile(f"l{n}.pdf", "application/pdf", uuid.uuid4().bytes)], "bench")
            [tid] = r.uploads[0].task_ids
            while tid not in noop.started:
                await asyncio.wait_for(noop.event.wait(), 30)
                noop.event.clear()
            if n >= 5:  # the first few warm connections and caches
                out.append((noop.started[tid] - committed[tid]) * 1000)
    finally:
        ingest_rt.ingestor.on_tasks_created.remove(mark)
        await pool.stop(10)
    return out


async def throughput(rt, tasks: int) -> tuple[int, float]:
    """Commit a backlog with no worker running, then time the pool through it."""
    ids: list[int] = []
    deadline = time.monotonic() + PHASE_DEADLINE
    while len(ids) < tasks and time.monotonic() < deadline:
        files = [UploadFile(f"t{len(ids) + i}.pdf", "application/pdf", uuid.uuid4().bytes) for i in range(20)]
        ids += (await rt.ingestor.ingest_files(files, "bench")).uploads[0].task_ids
    noop = NoOp()
    pool = WorkerPool(rt, processors={"bench": [noop]})
    started = time.perf_counter()
    await pool.start()
    deadline = time.monotonic() + PHASE_DEADLINE * 2
    done = 0
    try:
        while time.monotonic() < deadline:
            if len(noop.started) >= len(ids):  # all started: now wait for the commits
                async with rt.sessions() as s:
                    done = await s.scalar(
                        select(func.count()).where(m.Task.status == "completed", m.Task.id >= min(ids))
                    )
                if done >= len(ids):
                    break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        await pool.stop(10)
    return done, elapsed


async def bench_backend(name: str, db_url: str, args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_from_dict(config(db_url, Path(tmp), args.concurrency, args.sqlite_synchronous), Path(tmp))
        async with open_runtime(settings, migrate=True) as rt:
            lat = await latency(rt, rt, args.samples)
            rows.append({"backend": name, "wake": "in-process", **summary(lat)})
            # A second "instance": its own engine and ingestor; only NOTIFY
            # (PostgreSQL) or the data_version watch (SQLite) reaches the pool.
            async with open_runtime(settings, migrate=False) as other:
                wakeup.install(other.ingestor, other.engine)
                lat = await latency(rt, other, args.samples)
            rows.append({"backend": name, "wake": "LISTEN/NOTIFY" if name == "postgresql" else "data_version", **summary(lat)})
            done, elapsed = await throughput(rt, args.tasks)
            for r in rows:
                r.update({"tasks": done, "seconds": round(elapsed, 2), "tasks_per_s": round(done / elapsed, 1)})
    return rows


def summary(lat: list[float]) -> dict:
    return {
        "samples": len(lat),
        "p50_ms": round(pct(lat, 50), 2),
        "p99_ms": round(pct(lat, 99), 2),
        "max_ms": round(max(lat), 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sqlite-synchronous", choices=["full", "normal"], default="full")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-postgresql", action="store_true")
    args = ap.parse_args()
    configure_logging("json", "error")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += await bench_backend("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", args)
    if not args.skip_postgresql:
        import asyncpg

        admin = PG_ADMIN.replace("postgresql+asyncpg://", "postgresql://")
        dbname = f"gwbench_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{dbname}"')
        await conn.close()
        try:
            rows += await bench_backend("postgresql", PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}", args)
        finally:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            await conn.close()

    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"queue benchmark: concurrency {args.concurrency}, no-op processor, {os.cpu_count()} CPUs")
    print(f"{'backend':11} {'wake-up':14} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>5}   {'tasks/s':>8} ({'tasks'} in s)")
    for r in rows:
        print(
            f"{r['backend']:11} {r['wake']:14} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f} {r['samples']:5}"
            f"   {r['tasks_per_s']:8.1f} ({r['tasks']} in {r['seconds']} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
