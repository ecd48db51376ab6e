"""/uploads: create (multipart or raw body), list, read, move.

Creation goes through ``Ingestor.ingest_files``, the same core as mail. The body
is never read past ``http.max_upload_size``: a Content-Length above it is answered
413 before a byte of the body is read, and a chunked body is counted as it
streams and cut off at the limit. The multipart parser is fed from that counting
stream, so it cannot buffer an unbounded body either. An empty file is a 400:
it would be a task with nothing to process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import AsyncIterator

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway import services as sv
from gateway.api import schemas
from gateway.api.auth import Principal, require, require_with_basic
from gateway.api.common import AUTH_ERRORS, MAX_ID, Paging, errors, pagination, parse_ref, ref_pattern, runtime, urls
from gateway.api.errors import ApiError, bad_request
from gateway.ingest import UploadFile
from gateway.ingress.replay import looks_like_mail
from gateway.observability import get_logger
from gateway.queue.states import UploadStatus
from gateway.sniff import sniff_content_type
from gateway.storage.db import transaction

log = get_logger()
router = APIRouter(tags=["uploads"])

FILE_FIELDS = ("content", "file", "files")
MAX_FILES = 100

_QUEUE_PARAM = Query(..., pattern=ref_pattern("queues"), description="the target queue's numeric id, or its URL")

_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "anyOf": [{"required": ["content"]}, {"required": ["file"]}, {"required": ["files"]}],
                    "properties": {
                        "content": {"type": "string", "format": "binary", "description": "a file"},
                        "file": {"type": "string", "format": "binary", "description": "a file"},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "files (repeat the field); each becomes a document and a task",
                        },
                        "name": {"type": "string", "description": "the upload's name (default: the first file's name)"},
                        "metadata": {"type": "string", "description": "a JSON object stored with the upload"},
                    },
                }
            }
        },
    }
}

_RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _too_large(limit: int) -> ApiError:
    # Connection: close — the rest of the body is not wanted, and uvicorn then
    # drops the connection instead of reading and discarding it.
    return ApiError(413, "payload_too_large", f"the upload exceeds the limit of {limit} bytes", {"Connection": "close"})


async def limited_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, cut off with 413 at ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise bad_request("invalid Content-Length")
        if int(declared) > limit:
            raise _too_large(limit)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        if chunk:
            yield chunk


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _strict_json(text: str):
    """JSON as the RFC has it: NaN, Infinity and 1e400 would be stored and then
    break every response that shows the metadata."""
    return json.loads(text, parse_float=_finite, parse_constant=_reject_constant)


# Types that say nothing about the bytes: curl's default for --data-binary
# (application/x-www-form-urlencoded), the generic octet-stream, none at all.
# Stored as declared, they would reach webhooks and downloads as the document's type.
_OPEN_EMAIL_PARAM = Query(
    True,
    description="An upload of one .eml or message/rfc822 file is opened as an email (body task, a task per "
    "file inside, the part ledger, deduplicated as mail is); false keeps the file itself as the one task.",
)
_UNINFORMATIVE_TYPES = frozenset({"", "application/octet-stream", "application/x-www-form-urlencoded"})


def _file(filename: str | None, declared: str | None, data: bytes) -> UploadFile:
    """An UploadFile whose type is the sniffed one when the declared one is uninformative."""
    if not data:
        raise bad_request(f"{filename or 'a file'}: empty (0 bytes)")
    ctype = declared
    if (declared or "").split(";")[0].strip().lower() in _UNINFORMATIVE_TYPES:
        ctype = sniff_content_type(data) or "application/octet-stream"
    return UploadFile(filename, ctype, data)


def _text(value: str | None, field: str) -> str | None:
    # A NUL cannot be stored in a PostgreSQL text column; refuse it up front.
    if value is not None and "\x00" in value:
        raise bad_request(f"{field}: must not contain NUL characters")
    return value


async def _read_multipart(request: Request, limit: int) -> tuple[list[UploadFile], str | None, dict | None]:
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise bad_request("expected a multipart/form-data body (or POST /uploads/{filename} with the raw file)")
    parser = MultiPartParser(
        request.headers, limited_body(request, limit), max_files=MAX_FILES, max_fields=MAX_FILES, max_part_size=limit
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise bad_request(f"malformed multipart body: {e.message}") from None
    try:
        files: list[UploadFile] = []
        name: str | None = None
        metadata: dict | None = None
        for key, value in form.multi_items():
            if key in FILE_FIELDS:
                if isinstance(value, StarletteUploadFile):
                    data = await value.read()
                    files.append(_file(_text(value.filename, "filename"), value.content_type, data))
                else:
                    # A part without a filename arrives as text; keep it as a file.
                    files.append(_file(None, "text/plain", value.encode("utf-8")))
            elif key == "name":
                if not isinstance(value, str):
                    raise bad_request("name: expected a text field")
                name = _text(value.strip(), "name") or None
            elif key == "metadata":
                if not isinstance(value, str):
                    value = (await value.read()).decode("utf-8", "replace")
                try:
                    metadata = _strict_json(value) if value.strip() else {}
                except (ValueError, RecursionError):  # deep nesting overflows the decoder
                    raise bad_request("metadata: not valid JSON") from None
                if not isinstance(metadata, dict):
                    raise bad_request("metadata: expected a JSON object")
            else:
                raise bad_request(f"unknown form field {key!r}; files go in content, file or files")
    finally:
        await form.close()
    if not files:
        raise bad_request("no file: send one in the content, file or files field")
    return files, name, metadata


async def _render(request: Request, s, uploads: list) -> list[dict]:
    ids = [u.id for u in uploads]
    statuses = await sv.statuses_of(s, ids)
    related = await sv.upload_relatives(s, ids)
    out = []
    u_ = urls(request)
    for u in uploads:
        d = sv.upload_dict(u, u_, statuses[u.id])
        docs, tasks = related[u.id]
        d["documents"] = [u_("documents", i) for i in docs]
        d["tasks"] = [u_("tasks", i) for i in tasks]
        out.append(d)
    return out


async def _queue_name(request: Request, principal: Principal, queue_ref: str) -> str:
    """Resolved before the body is read: a wrong queue costs the client no upload."""
    queue_id = parse_ref(queue_ref, "queues", "queue")
    async with transaction(runtime(request).sessions) as s:
        return (await sv.get_queue(s, queue_id, principal.organization_id)).name


def upload_slots(settings) -> asyncio.Semaphore:
    """Bodies are held in memory (up to max_upload_size each): bound how many are
    read at once. Twice the ingest concurrency keeps ingest busy; others wait."""
    return asyncio.Semaphore(2 * settings.storage.ingest_concurrency)


def _body_slots(request: Request) -> asyncio.Semaphore:
    return request.app.state.upload_slots


_EMAIL_TYPES = frozenset({"message/rfc822", "message/global"})


def _is_email(f: UploadFile) -> bool:
    """A mail sent as a file: declared as one, or named .eml, and shaped like one."""
    declared = (f.content_type or "").split(";")[0].strip().lower()
    named = (f.filename or "").lower().endswith((".eml", ".msg.eml"))
    return (declared in _EMAIL_TYPES or named) and looks_like_mail(f.data)


async def _create(request: Request, principal: Principal, queue_name: str, files, name, metadata,
                  open_email: bool = True) -> JSONResponse:
    rt = runtime(request)
    if open_email and len(files) == 1 and _is_email(files[0]):
        # The same path as mail that arrives: an email upload with the part
        # ledger, a body task and a task per file inside; the same mail sent
        # twice is one upload.
        result = await rt.ingestor.ingest(files[0].data, "http", queues=[queue_name])
        upload_id = result.uploads[0].id
        if result.status == "created" and (name or metadata):
            async with transaction(rt.sessions) as s:
                await sv.rename_upload(s, upload_id, name=name, metadata=metadata)
    else:
        result = await rt.ingestor.ingest_files(files, queue_name, name=name, metadata=metadata, actor=principal.actor)
        upload_id = result.uploads[0].id
    async with transaction(rt.sessions) as s:
        upload = await sv.get_upload(s, upload_id, principal.organization_id)
        body = (await _render(request, s, [upload]))[0]
    log.info("http.upload_created", upload_id=upload_id, queue=queue_name, files=len(files), key_id=principal.key_id)
    return JSONResponse(body, status_code=202, headers={"Location": body["url"]})


@router.post(
    "/uploads",
    status_code=202,
    response_model=schemas.Upload,
    summary="Create an upload from one or more files (multipart)",
    responses=errors(*AUTH_ERRORS, 404, 413),
    openapi_extra=_MULTIPART_BODY,
)
async def create_upload(
    request: Request,
    principal: Principal = Depends(require_with_basic("upload.create")),
    queue: str = _QUEUE_PARAM,
    open_email: bool = _OPEN_EMAIL_PARAM,
):
    limit = runtime(request).settings.http.max_upload_size
    queue_name = await _queue_name(request, principal, queue)
    async with _body_slots(request):
        files, name, metadata = await _read_multipart(request, limit)
        return await _create(request, principal, queue_name, files, name, metadata, open_email)


@router.post(
    "/uploads/{filename}",
    status_code=202,
    response_model=schemas.Upload,
    summary="Create an upload from the raw request body",
    responses=errors(*AUTH_ERRORS, 404, 413),
    openapi_extra=_RAW_BODY,
)
async def create_upload_raw(
    request: Request,
    principal: Principal = Depends(require_with_basic("upload.create")),
    filename: str = Path(..., min_length=1, max_length=1000, description="the file's name (UTF-8, URL-encoded)"),
    queue: str = _QUEUE_PARAM,
    name: str | None = Query(None, max_length=1000, description="the upload's name (default: the filename)"),
    open_email: bool = _OPEN_EMAIL_PARAM,
):
    limit = runtime(request).settings.http.max_upload_size
    queue_name = await _queue_name(request, principal, queue)
    filename, name = _text(filename, "filename"), _text(name, "name")
    async with _body_slots(request):
        data = b"".join([chunk async for chunk in limited_body(request, limit)])
        file = _file(filename, request.headers.get("content-type"), data)
        return await _create(request, principal, queue_name, [file], name, None, open_email)


@router.get(
    "/uploads",
    response_model=schemas.UploadPage,
    summary="List uploads, newest first",
    responses=errors(*AUTH_ERRORS),
)
async def list_uploads(
    request: Request,
    principal: Principal = Depends(require("upload.read")),
    paging: Paging = Depends(),
    queue: str | None = Query(None, pattern=ref_pattern("queues"), description="a queue id or URL"),
    status: UploadStatus | None = Query(None),
    created_after: dt.datetime | None = Query(None, description="ISO 8601; uploads created at or after"),
    created_before: dt.datetime | None = Query(None, description="ISO 8601; uploads created before"),
):
    rt = runtime(request)
    queue_id = parse_ref(queue, "queues", "queue")
    async with transaction(rt.sessions) as s:
        page = await sv.list_uploads(
            s,
            organization_id=principal.organization_id,
            queue_id=queue_id,
            status=status,
            created_after=_aware(created_after, "created_after"),
            created_before=_aware(created_before, "created_before"),
            cursor=paging.before,
            after=paging.after,
            page_size=paging.page_size,
        )
        results = await _render(request, s, page.items)
    return {"pagination": pagination(request, page, paging), "results": results}


def _aware(v: dt.datetime | None, field: str) -> dt.datetime | None:
    """UTC; a naive time is taken as UTC. Year 9999 at -05:00 is past datetime's range."""
    if v is None:
        return None
    if v.tzinfo is None:
        v = v.replace(tzinfo=dt.timezone.utc)
    try:
        return v.astimezone(dt.timezone.utc)
    except OverflowError:
        raise bad_request(f"{field}: out of range") from None


@router.get(
    "/uploads/{upload_id}",
    response_model=schemas.Upload,
    summary="Read an upload with its status and the URLs of its email, documents and tasks",
    responses=errors(*AUTH_ERRORS, 404),
)
async def get_upload(
    request: Request,
    principal: Principal = Depends(require("upload.read")),
    upload_id: int = Path(..., ge=0, le=MAX_ID),
):
    rt = runtime(request)
    async with transaction(rt.sessions) as s:
        upload = await sv.get_upload(s, upload_id, principal.organization_id)
        return (await _render(request, s, [upload]))[0]


@router.put(
    "/uploads/{upload_id}/move",
    response_model=schemas.Upload,
    summary="Move an upload and its tasks to another queue of the same organization",
    responses=errors(*AUTH_ERRORS, 404, 409),
)
async def move_upload(
    request: Request,
    principal: Principal = Depends(require("upload.edit")),
    upload_id: int = Path(..., ge=0, le=MAX_ID),
    body: schemas.MoveRequest = Body(...),
):
    rt = runtime(request)
    queue_id = parse_ref(body.queue, "queues", "queue")
    async with transaction(rt.sessions) as s:
        upload = await sv.get_upload(s, upload_id, principal.organization_id)
        queue = await sv.get_queue(s, queue_id, principal.organization_id)
        await sv.move_upload(s, upload, queue)
        await s.flush()
        rendered = (await _render(request, s, [upload]))[0]
    log.info("http.upload_moved", upload_id=upload_id, queue=queue.name, key_id=principal.key_id)
    return rendered
