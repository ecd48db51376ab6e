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


# What keeps an original filename out of filename*: path separators, characters
# Windows refuses, and controls (C0/C1, bidi overrides that disguise an
# extension). Letters, digits, emoji and other symbols of any script are kept.
_UNSAFE_IN_NAME = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]')
_MAX_NAME_BYTES = 255


def download_name(filename: str, original: str | None) -> str:
    """The name a download offers: the name as sent when it is a safe single
    file name, else the stored (sanitized) one.

    The stored name replaces symbols too (emoji, "№", "€"), which a download
    need not do: the browser writes the file, not the gateway."""
    if (
        original
        and original == original.strip(". ")
        and not _UNSAFE_IN_NAME.search(original)
        and len(original.encode("utf-8")) <= _MAX_NAME_BYTES
    ):
        return unicodedata.normalize("NFC", original)
    return filename


def ascii_fallback(name: str, default_stem: str = "download") -> str:
    """``name`` in printable ASCII for ``filename=``: accents dropped (NFKD),
    anything else unrepresentable as one ``_``, and ``default_stem`` when no
    letter or digit survives (a CJK name must not become ".pdf")."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""

    def to_ascii(text: str) -> str:
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
        return re.sub(r'(?:[^\x20-\x7e]|["\\%;])+', "_", text)

    stem = to_ascii(stem).strip(" _.")
    ext = to_ascii(ext)
    if not re.fullmatch(r"[A-Za-z0-9]{1,10}", ext):
        ext = ""
    if not re.search(r"[A-Za-z0-9]", stem):
        stem = default_stem
    return f"{stem}.{ext}" if ext else stem


def content_disposition(filename: str, disposition: str = "attachment", *, default_stem: str = "download") -> str:
    """RFC 6266: an ASCII fallback in ``filename=`` for clients that know no
    better, and the exact name, percent-encoded UTF-8 (RFC 5987), in ``filename*``."""
    fallback = ascii_fallback(filename, default_stem)
    value = f'{disposition}; filename="{fallback}"'
    if fallback != filename:
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
            "Content-Disposition": content_disposition(
                download_name(doc.filename, doc.original_filename), default_stem=f"document-{document_id}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
        },
    )
