"""/tasks: list, read (with history) and steer (complete, discard, retry).

Steering goes through ``gateway.queue.steer.steer`` — the one place that changes
a task's status — so the API, the CLI and the workers share one state machine; a
task in the wrong state is 409 ``conflict_status``. An optional ``{"reason"}``
body is kept in the task event, as the CLI's ``--reason`` is.
"""

from __future__ import annotations

import inspect

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from gateway import services as sv
from gateway.api import schemas
from gateway.api.auth import Principal, require
from gateway.api.common import AUTH_ERRORS, MAX_ID, Paging, errors, pagination, parse_ref, ref_pattern, runtime, urls
from gateway.api.errors import bad_request
from gateway.queue.states import TaskStatus
from gateway.queue.steer import steer
from gateway.storage.db import transaction

router = APIRouter(tags=["tasks"])


@router.get(
    "/tasks",
    response_model=schemas.TaskPage,
    response_model_exclude_unset=True,
    summary="List tasks, newest first",
    responses=errors(*AUTH_ERRORS),
)
async def list_tasks(
    request: Request,
    principal: Principal = Depends(require("task.read")),
    paging: Paging = Depends(),
    status: TaskStatus | None = Query(None),
    queue: str | None = Query(None, pattern=ref_pattern("queues"), description="a queue id or URL"),
    upload: str | None = Query(None, pattern=ref_pattern("uploads"), description="an upload id or URL"),
):
    rt = runtime(request)
    queue_id = parse_ref(queue, "queues", "queue")
    upload_id = parse_ref(upload, "uploads", "upload")
    async with transaction(rt.sessions) as s:
        page = await sv.list_tasks(
            s,
            organization_id=principal.organization_id,
            status=status,
            queue_id=queue_id,
            upload_id=upload_id,
            cursor=paging.before,
            after=paging.after,
            page_size=paging.page_size,
        )
    u = urls(request)
    return {"pagination": pagination(request, page, paging), "results": [sv.task_dict(t, u) for t in page.items]}


@router.get(
    "/tasks/{task_id}",
    response_model=schemas.Task,
    summary="Read a task with its history",
    responses=errors(*AUTH_ERRORS, 404),
)
async def get_task(request: Request, principal: Principal = Depends(require("task.read")), task_id: int = Path(..., ge=0, le=MAX_ID)):
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        task = await sv.get_task(s, task_id, principal.organization_id)
        events = await sv.task_events(s, task_id)
    return sv.task_dict(task, urls(request), events)


def _steering(action: str, summary: str):
    async def endpoint(
        request: Request,
        principal: Principal = Depends(require("task.edit")),
        task_id: int = Path(..., ge=0, le=MAX_ID),
        body: schemas.SteerRequest | None = Body(None),
    ):
        rt = runtime(request)
        reason = (body.reason or "").strip() if body else ""
        if "\x00" in reason:  # PostgreSQL text cannot hold it
            raise bad_request("reason: must not contain NUL characters")
        await steer(
            rt.sessions, task_id, action, actor=principal.actor, reason=reason or None, organization_id=principal.organization_id
        )
        if action == "retry":
            # Queued again: wake the workers as a fresh ingest would.
            for callback in rt.ingestor.on_tasks_created:
                r = callback([task_id])
                if inspect.isawaitable(r):
                    await r
        async with transaction(rt.sessions) as s:
            task = await sv.get_task(s, task_id, principal.organization_id)
            events = await sv.task_events(s, task_id)
        return sv.task_dict(task, urls(request), events)

    endpoint.__name__ = f"{action}_task"
    router.add_api_route(
        f"/tasks/{{task_id}}/{action}",
        endpoint,
        methods=["POST"],
        response_model=schemas.Task,
        summary=summary,
        responses=errors(*AUTH_ERRORS, 404, 409),
    )


_steering("complete", "Complete a task that is in review (reviewing → completed)")
_steering("discard", "Discard a task (queued, failed or reviewing → discarded)")
_steering("retry", "Retry a failed task (failed → queued)")
