"""Small pieces every resource module uses: the runtime, URLs, references, paging."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from fastapi import Query, Request

from gateway.api.errors import ErrorBody, bad_request
from gateway.services import Page, Urls

PAGE_SIZE_DEFAULT = 20
# Ids are 32-bit on PostgreSQL (INTEGER); a larger number can name nothing and
# must be a 400, not a database error.
MAX_ID = 2**31 - 1
PAGE_SIZE_MAX = 100

_REF = re.compile(r"^(?:.*/)?(?P<kind>[a-z]+)/(?P<id>[0-9]{1,18})/?$")


def ref_pattern(kind: str) -> str:
    """What a ``queue=``/``upload=`` parameter looks like, for the OpenAPI document."""
    return rf"^([0-9]{{1,10}}|https?://.*/{kind}/[0-9]{{1,10}}/?)$"


def runtime(request: Request):
    return request.app.state.rt


def urls(request: Request) -> Urls:
    return request.app.state.urls


def parse_ref(value: int | str | None, kind: str, name: str) -> int | None:
    """A related object given as its id (``7``) or its URL (``.../api/v1/queues/7``)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_ID:
            raise bad_request(f"{name}: expected a {kind[:-1]} id or URL")
        return value
    text = str(value).strip()
    ident = None
    if text.isdigit() and len(text) <= 18:
        ident = int(text)
    else:
        m = _REF.match(text)
        if m and m.group("kind") == kind:
            ident = int(m.group("id"))
    if ident is None or ident > MAX_ID:
        raise bad_request(f"{name}: expected a {kind[:-1]} id or URL")
    return ident


class Paging:
    """``page_size`` and the two cursors (``before``: older, ``after``: newer)."""

    def __init__(
        self,
        page_size: int = Query(PAGE_SIZE_DEFAULT, ge=1, le=PAGE_SIZE_MAX, description="items per page"),
        before: int | None = Query(None, ge=0, le=MAX_ID, description="cursor: items with an id below this (the `next` link)"),
        after: int | None = Query(None, ge=0, le=MAX_ID, description="cursor: items with an id above this (the `previous` link)"),
    ) -> None:
        if before is not None and after is not None:
            raise bad_request("give either before or after, not both")
        self.page_size = page_size
        self.before = before
        self.after = after


def pagination(request: Request, page: Page, paging: Paging) -> dict:
    base = request.app.state.settings.http.base_url + request.url.path
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("before", "after")]

    def link(key: str, cursor: int | None) -> str | None:
        if cursor is None:
            return None
        return f"{base}?{urlencode([*kept, (key, str(cursor))])}"

    return {
        "next": link("before", page.next_cursor),
        "previous": link("after", page.previous_cursor),
        "page_size": paging.page_size,
    }


def errors(*statuses: int) -> dict:
    """OpenAPI ``responses`` entries for the error statuses an endpoint can give."""
    descriptions = {
        400: "bad_request: invalid parameters or body",
        401: "authentication_failed: no valid API key",
        403: "access_forbidden: the key lacks the scope",
        404: "not_found: no such object in the key's organization",
        409: "conflict_status: the object is not in a state that allows this",
        413: "payload_too_large: over http.max_upload_size",
        429: "rate_limited: too many requests for this key (see Retry-After)",
        500: "error: unexpected failure (logged with the request id)",
        503: "error: database or storage unavailable",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}


# Every authenticated endpoint can answer these.
AUTH_ERRORS = (400, 401, 403, 429, 500, 503)
