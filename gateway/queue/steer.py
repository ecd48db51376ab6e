"""Every task state change goes through ``transition``; people steer with ``steer``.

``transition`` checks the move against the state machine and records the event
(who, when, from, to, why) in the same transaction as the change.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.errors import IllegalTransition, NotFound
from gateway.observability import get_logger
from gateway.queue.states import TaskStatus, check_transition
from gateway.storage import models as m
from gateway.storage.db import transaction
from gateway.storage.text import storable

log = get_logger()

Action = Literal["retry", "complete", "discard"]
TARGETS: dict[str, TaskStatus] = {
    "retry": TaskStatus.QUEUED,
    "complete": TaskStatus.COMPLETED,
    "discard": TaskStatus.DISCARDED,
}
# What a person may steer from. Narrower than the state machine: processing →
# queued/completed are the worker's own moves (lease expiry, finishing), so a
# person must not yank a task from under a worker with "retry" or "complete".
STEERABLE_FROM: dict[str, frozenset[TaskStatus]] = {
    "retry": frozenset({TaskStatus.FAILED}),
    "complete": frozenset({TaskStatus.REVIEWING}),
    "discard": frozenset({TaskStatus.QUEUED, TaskStatus.FAILED, TaskStatus.REVIEWING}),
}


def transition(s: AsyncSession, task: m.Task, target: str, *, actor: str, reason: str | None = None, **fields) -> None:
    """Move ``task`` to ``target`` (IllegalTransition if the diagram forbids it)."""
    # Plain strings: an enum here would show as <TaskStatus.X: 'x'> in the 409 detail.
    target = str(target)
    check_transition(task.status, target)
    # Text from people and processors: made storable as every ingest row is.
    s.add(m.TaskEvent(task_id=task.id, from_status=task.status, to_status=target, actor=actor, reason=storable(reason)))
    task.status = target
    for k, v in fields.items():
        setattr(task, k, storable(v))
    # No process counter here: /metrics counts transitions from task_events, so
    # those made by the CLI or another instance are counted too.
    log.info("task.transition", task_id=task.id, upload_id=task.upload_id, to_status=str(target), actor=actor)


async def _locked_task(s: AsyncSession, task_id: int, organization_id: int | None) -> m.Task:
    q = select(m.Task).where(m.Task.id == task_id).with_for_update()
    if organization_id is not None:
        q = q.where(
            m.Task.upload_id.in_(select(m.Upload.id).where(m.Upload.organization_id == organization_id))
        )
    task = (await s.scalars(q)).one_or_none()
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


async def steer(
    sessions: async_sessionmaker[AsyncSession],
    task_id: int,
    action: Action,
    *,
    actor: str,
    reason: str | None = None,
    organization_id: int | None = None,
) -> m.Task:
    """retry (failed → queued), complete (reviewing → completed), discard
    (queued | failed | reviewing → discarded). Raises NotFound or ConflictStatus."""
    target = TARGETS[action]
    async with transaction(sessions) as s:
        task = await _locked_task(s, task_id, organization_id)
        if task.status not in STEERABLE_FROM[action]:
            raise IllegalTransition(str(task.status), str(target))
        fields = {}
        if action == "retry":
            # A person asked for another go: start the attempt count afresh
            # (the history keeps every earlier attempt).
            fields = {"attempts": 0, "run_after": None}
        transition(s, task, target, actor=actor, reason=reason or action, **fields)
    if target is TaskStatus.QUEUED:
        # Wake the workers (this process's, and other instances' on PostgreSQL).
        from gateway.queue import wakeup

        await wakeup.tasks_runnable(sessions.kw["bind"], [task.id])
    return task
