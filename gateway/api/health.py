"""/healthz (database and storage reachable) and /metrics (Prometheus).

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
from gateway.observability import get_logger
from gateway.queue.states import TaskStatus
from gateway.storage import db
from gateway.storage import models as m

log = get_logger()
router = APIRouter(tags=["health"])

TASKS_BY_STATUS = Gauge("gateway_tasks", "Tasks by status (read from the database at scrape time)", ["status"])
_PROBE_TIMEOUT = 5.0


def _storage_probe(request: Request) -> asyncio.Lock:
    """LocalBlobStore.check() writes and unlinks one probe file per process: two
    probes at once race on it (one sees FileNotFoundError) and a healthy storage
    would be reported down. One probe at a time, per app (and so per loop)."""
    lock = getattr(request.app.state, "storage_probe", None)
    if lock is None:
        lock = request.app.state.storage_probe = asyncio.Lock()
    return lock


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
    try:
        await asyncio.wait_for(db.ping(rt.engine), _PROBE_TIMEOUT)
    except (GatewayError, asyncio.TimeoutError) as e:
        log.warning("http.unhealthy", part="database", error=str(e) or "timeout")
        raise ApiError(503, "error", "database unavailable") from None
    try:
        async with _storage_probe(request):
            await asyncio.wait_for(rt.blobs.check(), _PROBE_TIMEOUT)
    except (GatewayError, asyncio.TimeoutError) as e:
        log.warning("http.unhealthy", part="storage", error=str(e) or "timeout")
        raise ApiError(503, "error", "storage unavailable") from None
    return {"status": "ok", "database": "ok", "storage": "ok"}


async def _count_tasks(rt) -> None:
    async with rt.sessions() as s:
        rows = dict((await s.execute(select(m.Task.status, func.count()).group_by(m.Task.status))).all())
    for status in TaskStatus:
        TASKS_BY_STATUS.labels(status.value).set(rows.get(status.value, 0))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(401, 429, 500)},
)
async def metrics(request: Request, _auth: None = Depends(_maybe_auth)):
    try:
        await asyncio.wait_for(_count_tasks(runtime(request)), _PROBE_TIMEOUT)
    except Exception as e:  # a scrape still answers with what the process knows
        log.warning("http.metrics_tasks_unavailable", error=str(e) or type(e).__name__)
    body = await run_in_threadpool(generate_latest)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
