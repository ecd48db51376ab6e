"""/healthz (database and storage reachable) and /metrics (Prometheus).

Both read the database with a deadline: /healthz answers 503 and /metrics the
last numbers it read when the database does not answer in time (a locked SQLite
would otherwise hold them for its whole busy_timeout).

Both are open by default, as probes and scrapers usually carry no credentials;
``http.protect_health_and_metrics = true`` makes them need a key (any scope).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy import func, select

from gateway.api import schemas
from gateway.api.auth import bearer_scheme, header_scheme, require
from gateway.api.common import errors, runtime
from gateway.api.errors import ApiError
from gateway.errors import GatewayError
from gateway.observability import TASK_TRANSITIONS, get_logger
from gateway.queue.states import TaskStatus
from gateway.storage import db
from gateway.storage import models as m

log = get_logger()
router = APIRouter(tags=["health"])

TASKS_BY_STATUS = Gauge("gateway_tasks", "Tasks by status (read from the database at scrape time)", ["status"])
# /healthz answers within this, whatever the database does: a probe that waits
# out SQLite's 30 s busy_timeout is reported down by the orchestrator anyway,
# and only later.
HEALTH_DEADLINE = 1.5
METRICS_DEADLINE = 1.5


def _in_flight(request: Request, name: str, start) -> asyncio.Future:
    """The app's running ``name`` probe, or a new one from ``start()``.

    Awaited through ``asyncio.shield`` and never cancelled on a timeout: a query
    stuck in aiosqlite's thread cannot be interrupted, and cancelling it only
    makes the session's clean-up queue behind it, so the answer would still take
    the whole busy_timeout. Later requests join the running probe, so a stuck
    database holds one connection, not one per request, and two storage probes
    never race on the probe file."""
    probes = getattr(request.app.state, "probes", None)
    if probes is None:
        probes = request.app.state.probes = {}
    task = probes.get(name)
    if task is None or task.done():
        task = probes[name] = asyncio.ensure_future(start())
        # Retrieve the outcome even if every waiter timed out (no "never retrieved" noise).
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


async def _wait(task: asyncio.Future, deadline: float):
    remaining = deadline - asyncio.get_running_loop().time()
    return await asyncio.wait_for(asyncio.shield(task), max(remaining, 0.001))


async def _maybe_auth(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
    header_key: str | None = Security(header_scheme),
) -> None:
    if request.app.state.settings.http.protect_health_and_metrics:
        await require(None)(request, bearer, header_key)


@router.get(
    "/healthz",
    response_model=schemas.Health,
    summary="Liveness and readiness: the database and the storage root are reachable",
    responses=errors(401, 429, 500, 503),
)
async def healthz(request: Request, _auth: None = Depends(_maybe_auth)):
    rt = runtime(request)
    deadline = asyncio.get_running_loop().time() + HEALTH_DEADLINE
    # Both probes run at once, against one deadline.
    database = _in_flight(request, "database", lambda: db.ping(rt.engine))
    storage = _in_flight(request, "storage", rt.blobs.check)
    for part, task in (("database", database), ("storage", storage)):
        try:
            await _wait(task, deadline)
        except (GatewayError, asyncio.TimeoutError) as e:
            log.warning("http.unhealthy", part=part, error=str(e) or f"no answer within {HEALTH_DEADLINE:g}s")
            raise ApiError(503, "error", f"{part} unavailable") from None
    return {"status": "ok", "database": "ok", "storage": "ok"}


async def _read_counts(rt) -> None:
    async with rt.sessions() as s:
        by_status = dict((await s.execute(select(m.Task.status, func.count()).group_by(m.Task.status))).all())
        # At most 6 x 6 rows, however long the history: grouped in the database.
        transitions = (
            await s.execute(
                select(m.TaskEvent.from_status, m.TaskEvent.to_status, func.count())
                .where(m.TaskEvent.from_status.is_not(None))
                .group_by(m.TaskEvent.from_status, m.TaskEvent.to_status)
            )
        ).all()
    for status in TaskStatus:
        TASKS_BY_STATUS.labels(status.value).set(by_status.get(status.value, 0))
    TASK_TRANSITIONS.update(transitions)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(401, 429, 500)},
)
async def metrics(request: Request, _auth: None = Depends(_maybe_auth)):
    rt = runtime(request)
    try:
        await _wait(_in_flight(request, "metrics", lambda: _read_counts(rt)), asyncio.get_running_loop().time() + METRICS_DEADLINE)
    except Exception as e:  # a scrape still answers, with the last numbers read
        log.warning("http.metrics_tasks_unavailable", error=str(e) or type(e).__name__)
    body = await run_in_threadpool(generate_latest)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
