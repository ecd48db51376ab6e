"""/documents: a stored file's metadata, and its bytes with a safe filename."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse

from gateway import services as sv
from gateway.api import schemas
from gateway.api.auth import Principal, require
from gateway.api.common import AUTH_ERRORS, MAX_ID, errors, runtime, urls
from gateway.storage.db import transaction

router = APIRouter(tags=["documents"])

_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}$")


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII fallback in ``filename=`` and the exact name in ``filename*``.

    The fallback drops accents (NFKD) and replaces anything that could break out
    of the quoted string or the header (quotes, backslashes, controls, non-ASCII).
    """
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r'[^\x20-\x7e]|["\\%;]', "_", ascii_name).strip() or "download"
    value = f'{disposition}; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def safe_media_type(declared: str | None) -> str:
    """The stored type when it is a plain ``type/subtype``; octet-stream otherwise."""
    if declared and _TOKEN.match(declared.strip()):
        return declared.strip().lower()
    return "application/octet-stream"


@router.get(
    "/documents/{document_id}",
    response_model=schemas.Document,
    summary="Read a document's metadata",
    responses=errors(*AUTH_ERRORS, 404),
)
async def get_document(
    request: Request, principal: Principal = Depends(require("upload.read")), document_id: int = Path(..., ge=0, le=MAX_ID)
):
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        doc = await sv.get_document(s, document_id, principal.organization_id)
    return sv.document_dict(doc, urls(request))


@router.get(
    "/documents/{document_id}/content",
    summary="The document's bytes, with its content type",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}, "*/*": {}}},
        **errors(*AUTH_ERRORS, 404),
    },
)
async def get_document_content(
    request: Request, principal: Principal = Depends(require("upload.read")), document_id: int = Path(..., ge=0, le=MAX_ID)
):
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        doc = await sv.get_document(s, document_id, principal.organization_id)
    path = await rt.blobs.file_for(doc.sha256, f"document {document_id}")
    # Always an attachment, never sniffed: a document is mail content from
    # outside, and HTML or SVG rendered inline would run in the API's origin.
    return FileResponse(
        path,
        media_type=safe_media_type(doc.content_type),
        headers={
            "Content-Disposition": content_disposition(doc.filename),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
        },
    )
