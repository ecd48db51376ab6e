"""Response and request bodies, as the OpenAPI document describes them.

The dicts come from ``gateway.services`` (shared with the CLI's ``--json``); these
models only state their shape so that clients (and schemathesis) can rely on it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UploadStatusName = Literal["processing", "reviewing", "completed", "failed", "partial"]
TaskStatusName = Literal["queued", "processing", "reviewing", "completed", "failed", "discarded"]


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Pagination(_Out):
    next: str | None = Field(description="URL of the next (older) page, or null")
    previous: str | None = Field(description="URL of the previous (newer) page, or null")
    page_size: int


class Upload(_Out):
    id: int
    url: str
    queue: str
    queue_name: str
    organization: str
    email: str | None = Field(description="URL of the email this upload came from; null for HTTP uploads")
    name: str
    metadata: dict[str, Any]
    created_at: dt.datetime
    status: UploadStatusName
    documents: list[str] = Field(description="URLs of the upload's documents")
    tasks: list[str] = Field(description="URLs of the upload's tasks")


class UploadPage(_Out):
    pagination: Pagination
    results: list[Upload]


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queue: int | str = Field(description="the target queue's id or URL (same organization)")


class SteerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(
        None, max_length=1000, description="why; kept in the task's history (default: the action's name)"
    )


class TaskEvent(_Out):
    from_: TaskStatusName | None = Field(alias="from")
    to: TaskStatusName
    at: dt.datetime
    by: str
    reason: str | None


class Task(_Out):
    id: int
    url: str
    upload: str
    document: str
    queue: str
    status: TaskStatusName
    attempts: int
    last_error: str | None
    result: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime
    history: list[TaskEvent] | None = None


class TaskPage(_Out):
    pagination: Pagination
    results: list[Task]


class Part(_Out):
    path: str = Field(description="IMAP part number: 1, 1.2; 0 is a multipart root, 2.0 the root of the message forwarded at 2; PATH#uuN a uuencoded file in a text part")
    content_type: str
    filename: str | None
    size: int
    sha256: str | None
    outcome: Literal["body", "inline", "alternative", "document", "container", "skipped"]
    reason: str | None = Field(description="why skipped: signature, pgp_control, empty, external_body, depth_limit, too_large, unparseable")
    document: str | None = Field(description="URL of the document it became (in the first upload), if any")
    documents: list[str] = Field(description="URLs of the documents it became in each of the organization's uploads")


class Email(_Out):
    id: int
    url: str
    raw: str = Field(description="URL of the raw message (message/rfc822)")
    message_id: str | None
    from_: str | None = Field(alias="from")
    to: list[str]
    cc: list[str]
    subject: str | None
    date: dt.datetime | None
    received_at: dt.datetime
    source: Literal["smtp", "imap", "http", "replay"]
    envelope: dict[str, Any]
    raw_sha256: str
    size: int
    defects: list[str]
    auth_results: list[Any] = Field(description="Authentication-Results the mail carried (claims, not our verdict)")
    authentication: dict[str, Any] | None = Field(
        None,
        description="Our verdict ([authentication] enabled): spf {result, domain, reason}, dkim [{result, domain, "
        "selector, reason}], dmarc {result, policy, aligned, domain, reason}, arc {result, reason}; results are "
        "RFC 8601 words (pass, fail, softfail, neutral, none, temperror, permerror)",
    )
    uploads: list[str] = Field(description="URLs of this organization's uploads of the email")
    parts: list[Part] = Field(description="The part ledger: every MIME part and its outcome (empty for mail stored before it existed)")


class Document(_Out):
    id: int
    url: str
    content: str = Field(description="URL of the document's bytes")
    upload: str
    kind: Literal["body", "alternative", "inline", "attachment", "forwarded", "nested"]
    parent: str | None
    filename: str
    original_filename: str | None
    content_type: str
    sniffed_type: str | None
    size: int
    sha256: str
    duplicate_of: str | None


class Queue(_Out):
    id: int
    url: str
    name: str
    organization: str
    addresses: list[str]
    review: bool
    active: bool


class QueueList(_Out):
    results: list[Queue]


class Organization(_Out):
    id: int
    url: str
    name: str


class Health(_Out):
    status: Literal["ok"]
    database: str
    storage: str
