"""Each of the five upload statuses, reached by real processing (a real subprocess
decides each task's fate from its filename)."""

from __future__ import annotations

import pytest

from gateway import services as sv
from gateway.queue.states import UploadStatus
from gateway.queue.worker import WorkerPool

from .conftest import add_tasks, get_task, wait_status

SCRIPT = """
case "$GATEWAY_FILENAME" in
  fail*) echo "cannot read $GATEWAY_FILENAME" >&2; exit 1 ;;
  review*) echo '{"review": true}' ;;
  wait*) while [ ! -e "$FLAG" ]; do sleep 0.02; done ;;
esac
"""


@pytest.fixture
def pool_runtime(queue_runtime, tmp_path):
    queues = [
        {
            "name": "invoices",
            "organization": "acme",
            "addresses": ["invoices@ap.example.com"],
            "processors": [{"type": "command", "argv": ["/bin/sh", "-c", SCRIPT], "env": {"FLAG": str(tmp_path / "flag")}}],
        }
    ]
    return lambda: queue_runtime(queues=queues, workers={"concurrency": 4})


async def status_of(rt, task_id: int) -> UploadStatus:
    t = await get_task(rt, task_id)
    async with rt.sessions() as s:
        return (await sv.statuses_of(s, [t.upload_id]))[t.upload_id]


async def run_upload(rt, *names):
    ids = await add_tasks(rt, *names)
    pool = WorkerPool(rt)
    await pool.start()
    return ids, pool


async def test_processing_while_a_task_runs(pool_runtime, tmp_path):
    async with pool_runtime() as rt:
        ids, pool = await run_upload(rt, "ok.pdf", "wait.pdf")
        try:
            await wait_status(rt, ids[0], "completed")
            await wait_status(rt, ids[1], "processing")
            assert await status_of(rt, ids[0]) is UploadStatus.PROCESSING
            (tmp_path / "flag").touch()
            await wait_status(rt, ids[1], "completed")
            assert await status_of(rt, ids[0]) is UploadStatus.COMPLETED
        finally:
            await pool.stop(5)


async def test_reviewing_when_nothing_runs_and_one_awaits_review(pool_runtime):
    async with pool_runtime() as rt:
        ids, pool = await run_upload(rt, "review.pdf", "ok.pdf", "fail.pdf")
        try:
            tasks = await wait_status(rt, ids, "reviewing", "completed", "failed")
        finally:
            await pool.stop(5)
        assert [t.status for t in tasks] == ["reviewing", "completed", "failed"]
        assert await status_of(rt, ids[0]) is UploadStatus.REVIEWING


async def test_completed_when_all_completed(pool_runtime):
    async with pool_runtime() as rt:
        ids, pool = await run_upload(rt, "ok.pdf", "ok2.pdf")
        try:
            await wait_status(rt, ids, "completed", "failed")
        finally:
            await pool.stop(5)
        assert await status_of(rt, ids[0]) is UploadStatus.COMPLETED


async def test_failed_when_all_failed(pool_runtime):
    async with pool_runtime() as rt:
        ids, pool = await run_upload(rt, "fail1.pdf", "fail2.pdf")
        try:
            tasks = await wait_status(rt, ids, "completed", "failed")
        finally:
            await pool.stop(5)
        assert tasks[0].status == "failed" and tasks[0].last_error == "command exited 1: cannot read fail1.pdf"
        assert await status_of(rt, ids[0]) is UploadStatus.FAILED


async def test_partial_when_some_failed_and_some_completed(pool_runtime):
    from gateway.queue.steer import steer

    async with pool_runtime() as rt:
        ids, pool = await run_upload(rt, "ok.pdf", "fail.pdf")
        try:
            await wait_status(rt, ids, "completed", "failed")
        finally:
            await pool.stop(5)
        assert await status_of(rt, ids[0]) is UploadStatus.PARTIAL
        # A person drops the failed one: discarded counts as finished.
        await steer(rt.sessions, ids[1], "discard", actor="test")
        assert await status_of(rt, ids[0]) is UploadStatus.COMPLETED
