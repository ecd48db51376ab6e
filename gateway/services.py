"""Reading uploads, tasks, emails and documents, shared by the CLI and the HTTP API.

Every function takes an optional ``organization_id``: the API always passes the
key's organization (nothing of another tenant is visible, it is simply not found);
the CLI, run by the operator, sees everything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Select, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import ConflictStatus, NotFound, PermanentError
from gateway.queue.states import TaskStatus, UploadStatus, upload_status
from gateway.routing import Router
from gateway.storage import models as m
from gateway.storage.text import storable

T = TaskStatus


def _count(*statuses: TaskStatus):
    return func.sum(case((m.Task.status.in_([s.value for s in statuses]), 1), else_=0))


def upload_status_condition(status: UploadStatus):
    """A HAVING clause over an upload's tasks, mirroring states.upload_status."""
    active = _count(T.QUEUED, T.PROCESSING)
    reviewing = _count(T.REVIEWING)
    failed = _count(T.FAILED)
    total = func.count(m.Task.id)
    if status is UploadStatus.PROCESSING:
        return active > 0
    if status is UploadStatus.REVIEWING:
        return (active == 0) & (reviewing > 0)
    if status is UploadStatus.COMPLETED:
        return (func.coalesce(active + reviewing + failed, 0) == 0)
    if status is UploadStatus.FAILED:
        return (total > 0) & (failed == total)
    return (active + reviewing == 0) & (failed > 0) & (failed < total)


@dataclass
class Page:
    items: list
    next_cursor: int | None
    previous_cursor: int | None


async def statuses_of(s: AsyncSession, upload_ids: list[int]) -> dict[int, UploadStatus]:
    rows = (
        await s.execute(select(m.Task.upload_id, m.Task.status).where(m.Task.upload_id.in_(upload_ids)))
    ).all()
    by_upload: dict[int, list[str]] = {u: [] for u in upload_ids}
    for uid, st in rows:
        by_upload[uid].append(st)
    return {u: upload_status(sts) for u, sts in by_upload.items()}


async def get_upload(s: AsyncSession, upload_id: int, organization_id: int | None = None) -> m.Upload:
    q = select(m.Upload).where(m.Upload.id == upload_id)
    if organization_id is not None:
        q = q.where(m.Upload.organization_id == organization_id)
    row = (await s.scalars(q)).one_or_none()
    if row is None:
        raise NotFound(f"upload {upload_id} not found")
    return row


async def upload_details(s: AsyncSession, upload: m.Upload):
    """(email or None, documents, tasks) of an upload."""
    email = await s.get(m.Email, upload.email_id) if upload.email_id else None
    docs = (await s.scalars(select(m.Document).where(m.Document.upload_id == upload.id).order_by(m.Document.id))).all()
    tasks = (await s.scalars(select(m.Task).where(m.Task.upload_id == upload.id).order_by(m.Task.id))).all()
    return email, list(docs), list(tasks)


def _paginate(q: Select, id_col, cursor: int | None, page_size: int, reverse: bool = True) -> Select:
    if cursor is not None:
        q = q.where(id_col < cursor if reverse else id_col > cursor)
    return q.order_by(id_col.desc() if reverse else id_col.asc()).limit(page_size + 1)


async def _page(s: AsyncSession, q: Select, id_col, cursor: int | None, after: int | None, page_size: int) -> Page:
    """Newest first. ``cursor``: ids below it (the next page); ``after``: ids above
    it (the previous page, fetched oldest first and turned round). The cursors of
    the returned page point on in both directions (the API's next/previous links)."""
    if after is not None:
        rows = list((await s.scalars(_paginate(q, id_col, after, page_size, reverse=False))).all())
        more = len(rows) > page_size
        rows = rows[:page_size][::-1]
        return Page(rows, rows[-1].id if rows else None, rows[0].id if more and rows else None)
    rows = list((await s.scalars(_paginate(q, id_col, cursor, page_size))).all())
    more = len(rows) > page_size
    rows = rows[:page_size]
    previous = (rows[0].id if rows else max(cursor - 1, 0)) if cursor is not None else None
    return Page(rows, rows[-1].id if more and rows else None, previous)


async def list_uploads(
    s: AsyncSession,
    *,
    organization_id: int | None = None,
    queue_id: int | None = None,
    status: UploadStatus | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    cursor: int | None = None,
    page_size: int = 50,
    after: int | None = None,
) -> Page:
    """Newest first; ``cursor`` is the id of the last upload of the previous page."""
    q = select(m.Upload)
    if organization_id is not None:
        q = q.where(m.Upload.organization_id == organization_id)
    if queue_id is not None:
        q = q.where(m.Upload.queue_id == queue_id)
    if created_after is not None:
        q = q.where(m.Upload.created_at >= created_after)
    if created_before is not None:
        q = q.where(m.Upload.created_at < created_before)
    if status is not None:
        matching = (
            select(m.Upload.id)
            .outerjoin(m.Task, m.Task.upload_id == m.Upload.id)
            .group_by(m.Upload.id)
            .having(upload_status_condition(UploadStatus(status)))
        )
        q = q.where(m.Upload.id.in_(matching))
    return await _page(s, q, m.Upload.id, cursor, after, page_size)


async def get_task(s: AsyncSession, task_id: int, organization_id: int | None = None) -> m.Task:
    q = select(m.Task).where(m.Task.id == task_id)
    if organization_id is not None:
        q = q.join(m.Upload, m.Upload.id == m.Task.upload_id).where(m.Upload.organization_id == organization_id)
    row = (await s.scalars(q)).one_or_none()
    if row is None:
        raise NotFound(f"task {task_id} not found")
    return row


async def task_events(s: AsyncSession, task_id: int) -> list[m.TaskEvent]:
    return list(
        (await s.scalars(select(m.TaskEvent).where(m.TaskEvent.task_id == task_id).order_by(m.TaskEvent.id))).all()
    )


async def list_tasks(
    s: AsyncSession,
    *,
    organization_id: int | None = None,
    status: str | None = None,
    queue_id: int | None = None,
    upload_id: int | None = None,
    cursor: int | None = None,
    page_size: int = 50,
    after: int | None = None,
) -> Page:
    q = select(m.Task)
    if organization_id is not None:
        q = q.join(m.Upload, m.Upload.id == m.Task.upload_id).where(m.Upload.organization_id == organization_id)
    if status is not None:
        q = q.where(m.Task.status == TaskStatus(status).value)
    if queue_id is not None:
        q = q.where(m.Task.queue_id == queue_id)
    if upload_id is not None:
        q = q.where(m.Task.upload_id == upload_id)
    return await _page(s, q, m.Task.id, cursor, after, page_size)


async def queue_by_name(s: AsyncSession, name: str) -> m.Queue:
    row = (await s.scalars(select(m.Queue).where(m.Queue.name == name))).one_or_none()
    if row is None:
        raise NotFound(f"queue {name!r} not found")
    return row


async def get_email(s: AsyncSession, email_id: int, organization_id: int | None = None) -> m.Email:
    """An email is visible to an organization that has an upload of it."""
    q = select(m.Email).where(m.Email.id == email_id)
    if organization_id is not None:
        q = q.where(
            select(m.Upload.id)
            .where(m.Upload.email_id == m.Email.id, m.Upload.organization_id == organization_id)
            .exists()
        )
    row = (await s.scalars(q)).one_or_none()
    if row is None:
        raise NotFound(f"email {email_id} not found")
    return row


async def get_document(s: AsyncSession, document_id: int, organization_id: int | None = None) -> m.Document:
    q = select(m.Document).where(m.Document.id == document_id)
    if organization_id is not None:
        q = q.join(m.Upload, m.Upload.id == m.Document.upload_id).where(m.Upload.organization_id == organization_id)
    row = (await s.scalars(q)).one_or_none()
    if row is None:
        raise NotFound(f"document {document_id} not found")
    return row


async def upload_relatives(s: AsyncSession, upload_ids: list[int]) -> dict[int, tuple[list[int], list[int]]]:
    """(document ids, task ids) per upload, for linking without loading the rows."""
    out: dict[int, tuple[list[int], list[int]]] = {u: ([], []) for u in upload_ids}
    if not upload_ids:
        return out
    for uid, did in (
        await s.execute(
            select(m.Document.upload_id, m.Document.id).where(m.Document.upload_id.in_(upload_ids)).order_by(m.Document.id)
        )
    ).all():
        out[uid][0].append(did)
    for uid, tid in (
        await s.execute(select(m.Task.upload_id, m.Task.id).where(m.Task.upload_id.in_(upload_ids)).order_by(m.Task.id))
    ).all():
        out[uid][1].append(tid)
    return out


async def list_queues(s: AsyncSession, organization_id: int | None = None) -> list[m.Queue]:
    q = select(m.Queue).order_by(m.Queue.id)
    if organization_id is not None:
        q = q.where(m.Queue.organization_id == organization_id)
    return list((await s.scalars(q)).all())


async def get_queue(s: AsyncSession, queue_id: int, organization_id: int | None = None) -> m.Queue:
    q = select(m.Queue).where(m.Queue.id == queue_id)
    if organization_id is not None:
        q = q.where(m.Queue.organization_id == organization_id)
    row = (await s.scalars(q)).one_or_none()
    if row is None:
        raise NotFound(f"queue {queue_id} not found")
    return row


async def move_upload(s: AsyncSession, upload: m.Upload, queue: m.Queue) -> None:
    """Move an upload and its tasks to ``queue`` (same organization; the caller checks)."""
    if queue.organization_id != upload.organization_id:
        raise NotFound(f"queue {queue.id} not found")
    if not queue.active:
        raise ConflictStatus(f"queue {queue.name!r} is no longer in the configuration")
    if upload.email_id is not None and queue.id != upload.queue_id:
        # One upload per (email, queue): the email may already be in the target queue.
        clash = await s.scalar(
            select(m.Upload.id).where(m.Upload.email_id == upload.email_id, m.Upload.queue_id == queue.id)
        )
        if clash is not None:
            raise ConflictStatus(f"upload {clash} already holds this email in queue {queue.name!r}")
    await s.execute(update(m.Task).where(m.Task.upload_id == upload.id).values(queue_id=queue.id))
    upload.queue_id = queue.id
    upload.queue = queue


async def move_upload_to(s: AsyncSession, upload_id: int, queue_name: str) -> m.Upload:
    """The CLI's move, by queue name: the operator sees every organization, but an
    upload still moves only to a queue of its own organization."""
    upload = await get_upload(s, upload_id)
    queue = await queue_by_name(s, queue_name)
    if queue.organization_id != upload.organization_id:
        raise PermanentError(
            f"queue {queue_name!r} belongs to another organization than upload {upload_id}; "
            "an upload moves only within its organization"
        )
    await move_upload(s, upload, queue)
    return upload


# --- representations (the shapes the API serves and `--json` prints) ---------------


def _ts(v: dt.datetime | None) -> str | None:
    return v.isoformat().replace("+00:00", "Z") if v else None


class Urls:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"

    def __call__(self, kind: str, id_: int | None) -> str | None:
        return f"{self.base}/{kind}/{id_}" if id_ is not None else None


async def recipients_router(s: AsyncSession, organization_id: int | None) -> Router | None:
    """What an organization's own recipients are: the addresses of its queues
    (plus-addressing included), for ``email_dict``. None (everything) for the
    operator."""
    if organization_id is None:
        return None
    # Inactive queues too: mail routed to them before they left the config was
    # addressed to this organization all the same.
    return Router(await list_queues(s, organization_id))


def visible_envelope(envelope: dict | None, router: Router | None) -> dict:
    """The envelope as one organization may see it.

    One email row serves every organization it was delivered to, but the SMTP
    recipients are each delivery's own, possibly Bcc: an organization sees only
    the recipients that route to one of its queues, never another tenant's.
    """
    envelope = dict(envelope or {})
    if router is not None and "rcpt_to" in envelope:
        envelope["rcpt_to"] = [a for a in envelope["rcpt_to"] or [] if router.route(a) is not None]
    return envelope


def email_dict(e: m.Email, urls: Urls, router: Router | None = None) -> dict:
    """``router``: the viewing organization's (``recipients_router``); None
    shows every recipient (the operator's CLI)."""
    return {
        "id": e.id,
        "url": urls("emails", e.id),
        "raw": f"{urls('emails', e.id)}/raw",
        "message_id": e.message_id,
        "from": e.from_addr,
        "to": e.to,
        "cc": e.cc,
        "subject": e.subject,
        "date": _ts(e.date),
        "received_at": _ts(e.received_at),
        "source": e.source,
        "envelope": visible_envelope(e.envelope, router),
        "raw_sha256": e.raw_sha256,
        "size": e.size,
        "defects": e.defects,
        "auth_results": e.auth_results,
        "authentication": e.authentication,
    }


async def rename_upload(s: AsyncSession, upload_id: int, *, name: str | None, metadata: dict | None) -> None:
    """Name an upload and add to its metadata (an HTTP upload of an .eml)."""
    upload = await s.get(m.Upload, upload_id)
    if name:
        upload.name = storable(name)
    if metadata:
        upload.meta = storable({**(upload.meta or {}), **metadata})


async def email_detail(s: AsyncSession, email_id: int, organization_id: int | None, urls: Urls) -> dict:
    """An email with its uploads and its part ledger, each part pointing at
    the documents it became in the organization's uploads of the email."""
    email = await get_email(s, email_id, organization_id)
    router = await recipients_router(s, organization_id)
    q = select(m.Upload.id).where(m.Upload.email_id == email_id).order_by(m.Upload.id)
    if organization_id is not None:
        q = q.where(m.Upload.organization_id == organization_id)
    upload_ids = (await s.scalars(q)).all()
    docs: dict[int, list[int]] = {}
    if upload_ids:
        rows = await s.execute(
            select(m.Document.ordinal, m.Document.id)
            .where(m.Document.upload_id.in_(upload_ids), m.Document.ordinal.is_not(None))
            .order_by(m.Document.id)
        )
        for ordinal, doc_id in rows:
            docs.setdefault(ordinal, []).append(doc_id)
    return {
        **email_dict(email, urls, router),
        "uploads": [urls("uploads", i) for i in upload_ids],
        "parts": [part_dict(p, docs.get(p.get("document"), []), urls) for p in (email.parts or [])],
    }


def part_dict(p: dict, doc_ids: list[int], urls: Urls) -> dict:
    return {
        "path": p["path"],
        "content_type": p["content_type"],
        "filename": p.get("filename"),
        "size": p.get("size", 0),
        "sha256": p.get("sha256"),
        "outcome": p["outcome"],
        "reason": p.get("reason"),
        "document": urls("documents", doc_ids[0]) if doc_ids else None,
        "documents": [urls("documents", i) for i in doc_ids],
    }


def document_dict(d: m.Document, urls: Urls) -> dict:
    return {
        "id": d.id,
        "url": urls("documents", d.id),
        "content": f"{urls('documents', d.id)}/content",
        "upload": urls("uploads", d.upload_id),
        "kind": d.kind,
        "parent": urls("documents", d.parent_id),
        "filename": d.filename,
        "original_filename": d.original_filename,
        "content_type": d.content_type,
        "sniffed_type": d.sniffed_type,
        "size": d.size,
        "sha256": d.sha256,
        "duplicate_of": urls("documents", d.duplicate_of),
    }


def task_dict(t: m.Task, urls: Urls, events: list[m.TaskEvent] | None = None) -> dict:
    d = {
        "id": t.id,
        "url": urls("tasks", t.id),
        "upload": urls("uploads", t.upload_id),
        "document": urls("documents", t.document_id),
        "queue": urls("queues", t.queue_id),
        "status": t.status,
        "attempts": t.attempts,
        "last_error": t.last_error,
        "result": t.result,
        "created_at": _ts(t.created_at),
        "updated_at": _ts(t.updated_at),
    }
    if events is not None:
        d["history"] = [
            {"from": e.from_status, "to": e.to_status, "at": _ts(e.at), "by": e.actor, "reason": e.reason}
            for e in events
        ]
    return d


def upload_dict(
    u: m.Upload,
    urls: Urls,
    status: UploadStatus,
    *,
    email: m.Email | None = None,
    documents: list[m.Document] | None = None,
    tasks: list[m.Task] | None = None,
) -> dict:
    """With ``documents``/``tasks``/``email`` given they are expanded; otherwise linked."""
    d = {
        "id": u.id,
        "url": urls("uploads", u.id),
        "queue": urls("queues", u.queue_id),
        "queue_name": u.queue.name,
        "organization": urls("organizations", u.organization_id),
        "email": urls("emails", u.email_id),
        "name": u.name,
        "metadata": u.meta,
        "created_at": _ts(u.created_at),
        "status": status.value,
    }
    if documents is not None:
        d["documents"] = [document_dict(x, urls) for x in documents]
    if tasks is not None:
        d["tasks"] = [task_dict(x, urls) for x in tasks]
    if email is not None:
        d["email_detail"] = email_dict(email, urls)
    return d
