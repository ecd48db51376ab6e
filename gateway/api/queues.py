"""/queues and /organizations: what the key's organization owns."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request

from gateway import services as sv
from gateway.api import schemas
from gateway.api.auth import Principal, require
from gateway.api.common import AUTH_ERRORS, MAX_ID, errors, runtime, urls
from gateway.errors import NotFound
from gateway.storage import models as m
from gateway.storage.db import transaction

router = APIRouter(tags=["queues"])


def queue_dict(q: m.Queue, u) -> dict:
    return {
        "id": q.id,
        "url": u("queues", q.id),
        "name": q.name,
        "organization": u("organizations", q.organization_id),
        "addresses": list(q.addresses or []),
        "review": bool(q.review),
        "active": bool(q.active),
    }


# Any valid key may list its organization's queues: an uploader needs the ids.
@router.get(
    "/queues",
    response_model=schemas.QueueList,
    summary="The queues of the key's organization",
    responses=errors(*AUTH_ERRORS),
)
async def list_queues(request: Request, principal: Principal = Depends(require(None))):
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        rows = await sv.list_queues(s, principal.organization_id)
    u = urls(request)
    return {"results": [queue_dict(q, u) for q in rows]}


@router.get(
    "/queues/{queue_id}",
    response_model=schemas.Queue,
    summary="Read a queue",
    responses=errors(*AUTH_ERRORS, 404),
)
async def get_queue(request: Request, principal: Principal = Depends(require(None)), queue_id: int = Path(..., ge=0, le=MAX_ID)):
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        q = await sv.get_queue(s, queue_id, principal.organization_id)
    return queue_dict(q, urls(request))


@router.get(
    "/organizations/{organization_id}",
    response_model=schemas.Organization,
    summary="Read the key's own organization",
    responses=errors(*AUTH_ERRORS, 404),
    tags=["organizations"],
)
async def get_organization(
    request: Request, principal: Principal = Depends(require(None)), organization_id: int = Path(..., ge=0, le=MAX_ID)
):
    if organization_id != principal.organization_id:
        raise NotFound(f"organization {organization_id} not found")
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        org = await s.get(m.Organization, organization_id)
    if org is None:
        raise NotFound(f"organization {organization_id} not found")
    return {"id": org.id, "url": urls(request)("organizations", org.id), "name": org.name}
