"""Workers on both backends: claims, leases, expiry, backoff, attempts, review, stop."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import pytest
import structlog.testing

from gateway.queue import steer as steering
from gateway.queue.processors import Outcome, ProcessorFailed, RetryLater
from gateway.queue.retry import RetryStrategy
from gateway.queue.worker import WorkerPool, claim_next_task, sweep_expired_leases

from .conftest import Recorder, add_tasks, events, get_task, wait_status


async def test_each_task_claimed_once_by_competing_pools(queue_runtime):
    async with queue_runtime(workers={"concurrency": 3}) as rt:
        ids = await add_tasks(rt, *[f"doc{i}.pdf" for i in range(30)])
        rec = Recorder()
        pools = [WorkerPool(rt, processors={"invoices": [rec]}) for _ in range(2)]
        for p in pools:
            await p.start()
        try:
            tasks = await wait_status(rt, ids, "completed")
        finally:
            for p in pools:
                await p.stop(5)
        assert sorted(t for t, _ in rec.runs) == sorted(ids)  # each exactly once
        assert {t.attempts for t in tasks} == {1}
        assert tasks[0].result == {"processors": [{"type": "recorder", "result": {"seen": ids[0]}}]}
        assert tasks[0].leased_by is None and tasks[0].lease_expires_at is None
        evs = await events(rt, ids[0])
        assert [(e.from_status, e.to_status) for e in evs] == [
            (None, "queued"),
            ("queued", "processing"),
            ("processing", "completed"),
        ]
        assert evs[1].actor in {p.worker for p in pools}


async def test_new_task_is_picked_up_without_waiting_for_the_poll(queue_runtime):
    # poll_seconds = 60: only the wake-up can make this finish within the wait.
    async with queue_runtime(workers={"poll_seconds": 60}) as rt:
        pool = WorkerPool(rt, processors={"invoices": [Recorder()]})
        await pool.start()
        try:
            await asyncio.sleep(0.2)  # the dispatcher is idle, waiting
            [tid] = await add_tasks(rt, "late.pdf")
            await wait_status(rt, tid, "completed", timeout=10)
        finally:
            await pool.stop(5)


async def test_temporary_errors_back_off_then_complete(queue_runtime):
    def flaky(job):
        if job.attempt < 3:
            raise RetryLater(f"busy {job.attempt}")

    async with queue_runtime(workers={"backoff_seconds": 0.05}) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(flaky)]})
        await pool.start()
        try:
            [t] = await wait_status(rt, tid, "completed")
        finally:
            await pool.stop(5)
        assert t.attempts == 3
        evs = await events(rt, tid)
        assert [e.to_status for e in evs] == ["queued", "processing", "queued", "processing", "queued", "processing", "completed"]
        assert evs[2].reason.startswith("retry in") and "busy 1" in evs[2].reason


async def test_retry_after_is_honoured(queue_runtime):
    def slow_down(job):
        raise RetryLater("429", retry_after=30)

    async with queue_runtime(workers={"backoff_seconds": 0.01}) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(slow_down)]})
        await pool.start()
        try:
            for _ in range(500):
                t = await get_task(rt, tid)
                if t.run_after is not None:
                    break
                await asyncio.sleep(0.02)
        finally:
            await pool.stop(5)
        assert t.attempts == 1 and t.last_error == "429"
        wait = (t.run_after - dt.datetime.now(dt.timezone.utc)).total_seconds()
        assert 25 < wait <= 30


def test_backoff_doubles_with_jitter():
    r = RetryStrategy(max_attempts=5, backoff_seconds=10)
    for attempt, base in ((1, 10), (2, 20), (3, 40)):
        delays = [r.delay(attempt) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 100  # jittered
    assert r.delay(1, retry_after=120) >= 120
    assert r.should_retry(4) and not r.should_retry(5)


async def test_max_attempts_then_failed_with_last_error(queue_runtime):
    def always(job):
        raise RetryLater(f"still down (attempt {job.attempt})")

    async with queue_runtime(workers={"max_attempts": 3, "backoff_seconds": 0.01}) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        rec = Recorder(always)
        pool = WorkerPool(rt, processors={"invoices": [rec]})
        await pool.start()
        try:
            [t] = await wait_status(rt, tid, "failed")
        finally:
            await pool.stop(5)
        assert t.attempts == 3 and len(rec.runs) == 3
        assert t.last_error == "still down (attempt 3)"


async def test_permanent_error_fails_at_once(queue_runtime):
    def bad(job):
        raise ProcessorFailed("not an invoice")

    async with queue_runtime() as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        rec = Recorder(bad)
        pool = WorkerPool(rt, processors={"invoices": [rec]})
        await pool.start()
        try:
            [t] = await wait_status(rt, tid, "failed")
        finally:
            await pool.stop(5)
        assert t.attempts == 1 and t.last_error == "not an invoice" and len(rec.runs) == 1


async def test_crashing_processor_is_retried_not_stuck(queue_runtime):
    def crash(job):
        if job.attempt == 1:
            raise KeyError("bug")

    async with queue_runtime() as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(crash)]})
        await pool.start()
        try:
            [t] = await wait_status(rt, tid, "completed")
        finally:
            await pool.stop(5)
        assert t.attempts == 2
        assert any("crashed: KeyError" in (e.reason or "") for e in await events(rt, tid))


async def test_processors_run_in_order_and_stop_at_first_failure(queue_runtime):
    order = []

    def first(job):
        order.append("first")

    def second(job):
        order.append("second")
        raise ProcessorFailed("second refused")

    def third(job):
        order.append("third")

    async with queue_runtime() as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(first), Recorder(second), Recorder(third)]})
        await pool.start()
        try:
            await wait_status(rt, tid, "failed")
        finally:
            await pool.stop(5)
        assert order == ["first", "second"]


async def test_expired_lease_of_a_dead_worker_is_queued_again(queue_runtime):
    async with queue_runtime(workers={"lease_seconds": 0.5}) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        # A worker of another instance claims it and dies: nobody renews.
        claimed = await claim_next_task(rt.sessions, "dead-instance:1", await _queue_ids(rt), 0.5, "http://x")
        assert claimed.job.task_id == tid
        assert (await get_task(rt, tid)).status == "processing"
        rec = Recorder()
        pool = WorkerPool(rt, processors={"invoices": [rec]})
        await pool.start()
        try:
            [t] = await wait_status(rt, tid, "completed")
        finally:
            await pool.stop(5)
        assert rec.runs == [(tid, 2)]
        evs = await events(rt, tid)
        assert [e.to_status for e in evs] == ["queued", "processing", "queued", "processing", "completed"]
        assert evs[2].actor.startswith("sweeper ") and "dead-instance:1" in evs[2].reason


async def _queue_ids(rt) -> dict[int, str]:
    from sqlalchemy import select

    from gateway.storage import models as m

    async with rt.sessions() as s:
        return {qid: name for qid, name in (await s.execute(select(m.Queue.id, m.Queue.name))).all()}


async def test_expired_lease_after_last_attempt_fails(queue_runtime):
    async with queue_runtime(workers={"max_attempts": 1}) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        await claim_next_task(rt.sessions, "dead", await _queue_ids(rt), 0.01, "http://x")
        await asyncio.sleep(0.05)
        with structlog.testing.capture_logs() as logs:
            assert await sweep_expired_leases(rt.sessions, "sweeper", RetryStrategy(max_attempts=1)) == []
        t = await get_task(rt, tid)
        assert t.status == "failed" and t.last_error == "lease expired (worker dead stopped renewing)"
        [line] = [x for x in logs if x["event"] == "task.lease_expired"]
        assert line["task_id"] == tid and line["worker"] == "dead"


async def test_lease_is_renewed_while_a_long_task_runs(queue_runtime):
    async def slow(job):
        await asyncio.sleep(2.5)  # two lease lengths: it needs renewing twice at least

    async with queue_runtime(workers={"lease_seconds": 1.2}) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        rec = Recorder(slow)
        pool = WorkerPool(rt, processors={"invoices": [rec]})
        # A second pool sweeps too: had the lease lapsed, it would have queued
        # the task again and one of the pools would have run it a second time.
        other = WorkerPool(rt, processors={"invoices": [rec]})
        await pool.start()
        await other.start()
        try:
            [t] = await wait_status(rt, tid, "completed")
        finally:
            await pool.stop(5)
            await other.stop(5)
        assert rec.runs == [(tid, 1)]
        assert [e.to_status for e in await events(rt, tid)] == ["queued", "processing", "completed"]


async def test_graceful_stop_lets_tasks_in_flight_finish(queue_runtime):
    started = asyncio.Event()

    async def slow(job):
        started.set()
        await asyncio.sleep(0.5)

    async with queue_runtime() as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(slow)]})
        await pool.start()
        await asyncio.wait_for(started.wait(), 10)
        await pool.stop(10)
        t = await get_task(rt, tid)
        assert t.status == "completed"


async def test_graceful_stop_releases_what_does_not_finish(queue_runtime):
    started = asyncio.Event()

    async def stuck(job):
        started.set()
        await asyncio.Event().wait()

    async with queue_runtime(workers={"concurrency": 2}) as rt:
        ids = await add_tasks(rt, "a.pdf", "b.pdf", "c.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(stuck)]})
        await pool.start()
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.1)
        await pool.stop(0.2)
        tasks = [await get_task(rt, i) for i in ids]
        assert [t.status for t in tasks] == ["queued"] * 3
        assert all(t.attempts == 0 and t.leased_by is None for t in tasks)
        evs = await events(rt, ids[0])
        assert evs[-1].reason == "released: worker stopping"


async def test_review_queue_ends_in_reviewing(queue_runtime, tmp_path):
    queues = [{"name": "invoices", "organization": "acme", "addresses": ["invoices@ap.example.com"], "review": True}]
    async with queue_runtime(queues=queues) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder()]})
        await pool.start()
        try:
            await wait_status(rt, tid, "reviewing")
        finally:
            await pool.stop(5)
        await steering.steer(rt.sessions, tid, "complete", actor="cli")
        assert (await get_task(rt, tid)).status == "completed"


async def test_result_asking_for_review_ends_in_reviewing(queue_runtime):
    async with queue_runtime() as rt:
        ids = await add_tasks(rt, "check.pdf", "fine.pdf")
        rec = Recorder(lambda job: Outcome({"review": True}, review=True) if job.filename == "check.pdf" else None)
        pool = WorkerPool(rt, processors={"invoices": [rec]})
        await pool.start()
        try:
            await wait_status(rt, ids[0], "reviewing")
            await wait_status(rt, ids[1], "completed")
        finally:
            await pool.stop(5)


async def test_retry_by_a_person_wakes_the_workers(queue_runtime):
    fail = {"on": True}

    def maybe(job):
        if fail["on"]:
            raise ProcessorFailed("no")

    async with queue_runtime(workers={"poll_seconds": 60}) as rt:
        [tid] = await add_tasks(rt, "a.pdf")
        pool = WorkerPool(rt, processors={"invoices": [Recorder(maybe)]})
        await pool.start()
        try:
            await wait_status(rt, tid, "failed")
            fail["on"] = False
            await steering.steer(rt.sessions, tid, "retry", actor="cli")
            [t] = await wait_status(rt, tid, "completed", timeout=10)
        finally:
            await pool.stop(5)
        assert t.attempts == 1  # a person's retry starts the count afresh
        assert Counter(e.to_status for e in await events(rt, tid))["processing"] == 2


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_another_instance_wakes_the_workers_through_notify(queue_runtime):
    """Work committed by another process's engine arrives by LISTEN/NOTIFY, not the poll."""
    from gateway.queue import wakeup
    from gateway.runtime import open_runtime

    fail = {"on": True}

    def maybe(job):
        if fail["on"]:
            raise ProcessorFailed("no")

    async with queue_runtime(workers={"poll_seconds": 60}) as rt:
        pool = WorkerPool(rt, processors={"invoices": [Recorder(maybe)]})
        await pool.start()
        try:
            async with open_runtime(rt.settings, migrate=False) as other:
                assert other.engine is not rt.engine
                wakeup.install(other.ingestor, other.engine)
                await asyncio.sleep(0.2)  # the pool is idle, its poll an hour away
                [tid] = await add_tasks(other, "from-elsewhere.pdf")
                await wait_status(rt, tid, "failed", timeout=10)
                fail["on"] = False
                await steering.steer(other.sessions, tid, "retry", actor="api")
                await wait_status(rt, tid, "completed", timeout=10)
        finally:
            await pool.stop(5)


async def test_stop_during_a_claim_hands_the_claimed_tasks_back(queue_runtime, monkeypatch):
    from gateway.queue import worker as worker_module

    real = worker_module.claim_tasks
    committed = asyncio.Event()

    async def slow_claim(*args, **kwargs):
        claimed = await real(*args, **kwargs)  # committed: the tasks are ours now
        if claimed:
            committed.set()
            await asyncio.sleep(0.5)  # the stop arrives here
        return claimed

    monkeypatch.setattr(worker_module, "claim_tasks", slow_claim)
    async with queue_runtime() as rt:
        rec = Recorder()
        pool = WorkerPool(rt, processors={"invoices": [rec]})
        await pool.start()
        ids = await add_tasks(rt, "a.pdf", "b.pdf")
        await asyncio.wait_for(committed.wait(), 10)
        await pool.stop(5)
        tasks = [await get_task(rt, i) for i in ids]
        assert [t.status for t in tasks] == ["queued", "queued"] and rec.runs == []
        assert all(t.attempts == 0 for t in tasks)
        assert (await events(rt, ids[0]))[-1].reason == "released: worker stopping"


async def test_sqlite_work_committed_by_another_process_is_picked_up_without_the_poll(sqlite_url, make_settings):
    """`gateway replay` or `gateway tasks retry` in another process, a running
    daemon on the same SQLite file: no in-process wake-up reaches the workers;
    the data_version watch must, long before the 60 s poll."""
    import time

    from gateway.runtime import open_runtime

    from .conftest import Recorder

    workers = {"enabled": True, "poll_seconds": 60, "backoff_seconds": 0.05, "lease_seconds": 30}
    settings = make_settings(sqlite_url, workers=workers)
    async with open_runtime(settings, migrate=True) as daemon, open_runtime(settings) as other:
        assert daemon.engine is not other.engine
        rec = Recorder()
        pool = WorkerPool(daemon, processors={"invoices": [rec]})
        await pool.start()
        try:
            await asyncio.sleep(0.5)  # idle: the dispatcher waits for the 60 s poll
            started = time.monotonic()
            [tid] = await add_tasks(other, "from-elsewhere.pdf")
            await wait_status(daemon, tid, "completed", timeout=5)
            assert time.monotonic() - started < 2
        finally:
            await pool.stop(5)
