"""Steering over the API: a reason in the body reaches the task's history, and a
409 names the states as words."""

from __future__ import annotations

from gateway.queue.steer import transition
from gateway.storage import models as m
from gateway.storage.db import transaction


async def _force(api, task_id: int, *path: str) -> None:
    async with transaction(api.rt.sessions) as s:
        task = await s.get(m.Task, task_id)
        for target in path:
            transition(s, task, target, actor="test-worker")


async def test_complete_and_discard_keep_the_reason_from_the_body(db_url, api):
    t1, t2, t3, t4 = (await api.ingest_files("invoices", n=4)).uploads[0].task_ids
    await _force(api, t1, "processing", "reviewing")
    await _force(api, t3, "processing", "failed")
    async with api.client() as c:
        r = await c.post(f"/api/v1/tasks/{t1}/complete", json={"reason": "checked by hand: total matches PO 4711"})
        assert r.status_code == 200, r.text
        r = await c.post(f"/api/v1/tasks/{t2}/discard", json={"reason": "  duplicate of upload 12 — ignore  "})
        assert r.status_code == 200, r.text
        r = await c.post(f"/api/v1/tasks/{t3}/retry", json={"reason": "receiver fixed"})
        assert r.status_code == 200, r.text
        # No body, or no reason in it: the action's name, as before.
        r = await c.post(f"/api/v1/tasks/{t4}/discard", json={})
        assert r.status_code == 200, r.text

        # Read back through GET, not the steering answer: the reason was stored.
        got = {}
        for tid in (t1, t2, t3, t4):
            last = (await c.get(f"/api/v1/tasks/{tid}")).json()["history"][-1]
            got[tid] = (last["from"], last["to"], last["reason"])
        assert got == {
            t1: ("reviewing", "completed", "checked by hand: total matches PO 4711"),
            t2: ("queued", "discarded", "duplicate of upload 12 — ignore"),
            t3: ("failed", "queued", "receiver fixed"),
            t4: ("queued", "discarded", "discard"),
        }


async def test_a_bad_reason_body_is_400_and_changes_nothing(db_url, api):
    (t1,) = (await api.ingest_files("invoices", n=1)).uploads[0].task_ids
    async with api.client() as c:
        for body in ({"reason": 7}, {"reason": "x" * 1001}, {"why": "typo"}, {"reason": "a\x00b"}, ["reason"]):
            r = await c.post(f"/api/v1/tasks/{t1}/discard", json=body)
            assert (r.status_code, r.json()["code"]) == (400, "bad_request"), (body, r.text)
            assert set(r.json()) == {"detail", "code"}
        assert (await c.get(f"/api/v1/tasks/{t1}")).json()["status"] == "queued"


async def test_409_detail_names_states_as_words(db_url, api):
    (t1,) = (await api.ingest_files("invoices", n=1)).uploads[0].task_ids
    await _force(api, t1, "processing", "reviewing", "completed")
    async with api.client() as c:
        for action in ("complete", "discard", "retry"):
            r = await c.post(f"/api/v1/tasks/{t1}/{action}")
            assert (r.status_code, r.json()["code"]) == (409, "conflict_status")
            detail = r.json()["detail"]
            assert "TaskStatus" not in detail and "<" not in detail, detail
            target = {"complete": "completed", "discard": "discarded", "retry": "queued"}[action]
            assert detail == f"a task in state 'completed' cannot move to '{target}'"
