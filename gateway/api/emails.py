"""/emails: a received message's metadata, and its raw bytes exactly as stored."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse

from gateway import services as sv
from gateway.api import schemas
from gateway.api.auth import Principal, require
from gateway.api.common import AUTH_ERRORS, MAX_ID, errors, runtime, urls
from gateway.storage.db import transaction

router = APIRouter(tags=["emails"])


@router.get(
    "/emails/{email_id}",
    response_model=schemas.Email,
    summary="Read a received email's metadata",
    responses=errors(*AUTH_ERRORS, 404),
)
async def get_email(request: Request, principal: Principal = Depends(require("upload.read")), email_id: int = Path(..., ge=0, le=MAX_ID)):
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        return await sv.email_detail(s, email_id, principal.organization_id, urls(request))


@router.get(
    "/emails/{email_id}/raw",
    summary="The raw message, byte for byte as received",
    response_class=FileResponse,
    responses={200: {"content": {"message/rfc822": {"schema": {"type": "string", "format": "binary"}}}}, **errors(*AUTH_ERRORS, 404)},
)
async def get_email_raw(request: Request, principal: Principal = Depends(require("upload.read")), email_id: int = Path(..., ge=0, le=MAX_ID)):
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        email = await sv.get_email(s, email_id, principal.organization_id)
    path = await rt.blobs.file_for(email.raw_sha256, f"email {email_id}")
    # FileResponse streams the file in chunks off the event loop; no re-encoding.
    return FileResponse(
        path,
        media_type="message/rfc822",
        headers={"Content-Disposition": f'attachment; filename="email-{email_id}.eml"', "X-Content-Type-Options": "nosniff"},
    )
