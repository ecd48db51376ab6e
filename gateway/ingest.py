"""The one core every ingress calls: route, dedupe, store, one commit.

``Ingestor.ingest(raw, source, envelope)`` is what SMTP, IMAP and replay call;
``Ingestor.ingest_files`` is the HTTP upload's variant (no email, one document and
task per file). Order matters for durability: blobs are written and fsynced first,
then every row (email, uploads, documents, tasks, task events) is written in one
transaction. Whoever calls this may acknowledge the message only after it returns.

Deduplication is left to the database: ``emails.fingerprint`` and
``uploads (email_id, queue_id)`` are unique, so two deliveries racing each other
end with one row, and the loser of the race re-reads and reports ``duplicate``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable, Iterable, Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import parse
from gateway.errors import MessageTooLarge, NoRoute, PermanentError
from gateway.observability import (
    INGEST_SECONDS,
    MESSAGES_RECEIVED,
    UPLOADS_CREATED,
    get_logger,
)
from gateway.queue.states import TaskStatus
from gateway.routing import Route, Router
from gateway.storage import models as m
from gateway.storage.blobs import LocalBlobStore
from gateway.storage.db import transaction

log = get_logger()

Source = Literal["smtp", "imap", "http", "replay"]
# Documents of these kinds become tasks; "inline" parts stay with the body.
TASK_KINDS = frozenset({"body", "attachment", "nested"})


@dataclass
class Envelope:
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    peer: str | None = None
    helo: str | None = None
    tls: bool = False
    # Free-form facts an ingress wants on record (IMAP account, folder, uid...).
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


@dataclass
class UploadResult:
    id: int
    queue: str
    task_ids: list[int]
    created: bool


@dataclass
class IngestResult:
    status: Literal["created", "duplicate"]
    email_id: int | None
    uploads: list[UploadResult]

    @property
    def upload_ids(self) -> list[int]:
        return [u.id for u in self.uploads]


@dataclass
class UploadFile:
    """One file of an HTTP upload."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class _QueueRow:
    id: int
    name: str
    organization_id: int


async def sync_config(sessions: async_sessionmaker[AsyncSession], settings) -> None:
    """Make organizations and queues rows match the config (upsert by name).

    Queues that left the config are kept (their uploads stay readable) but marked
    inactive, so nothing new routes to them.
    """
    async with transaction(sessions) as s:
        orgs = {o.name: o for o in (await s.scalars(select(m.Organization))).all()}
        for o in settings.organizations:
            if o.name not in orgs:
                orgs[o.name] = m.Organization(name=o.name)
                s.add(orgs[o.name])
        await s.flush()
        existing = {q.name: q for q in (await s.scalars(select(m.Queue))).all()}
        for q in settings.queues:
            row = existing.pop(q.name, None)
            if row is None:
                row = m.Queue(name=q.name)
                s.add(row)
            row.organization_id = orgs[q.organization].id
            row.addresses = list(q.addresses)
            row.review = q.review
            row.active = True
        for row in existing.values():
            row.active = False


class Ingestor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        blobs: LocalBlobStore,
        settings,
    ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.settings = settings
        self.router = Router(settings.queues)
        self.max_size = settings.smtp.max_message_size
        self.max_depth = settings.storage.max_nesting_depth
        self._limit = asyncio.Semaphore(settings.storage.ingest_concurrency)
        self._queues: dict[str, _QueueRow] = {}
        # Called after every commit that created tasks (the queue's wake-up).
        self.on_tasks_created: list[Callable[[list[int]], Awaitable[None] | None]] = []

    # --- routing ---------------------------------------------------------------

    def routes_for(self, addresses: Iterable[str]) -> list[Route]:
        return self.router.route_all(addresses)

    def _routes(self, parsed: parse.ParsedMail, envelope: Envelope, queues: list[str] | None) -> list[Route]:
        if queues:
            unknown = [q for q in queues if self.settings.queue(q) is None]
            if unknown:
                raise NoRoute(f"unknown queue: {', '.join(unknown)}")
            return [Route(q, "", None) for q in dict.fromkeys(queues)]
        # The envelope is authoritative when there is one (SMTP); a message read
        # from disk or a mailbox only has its headers to go by.
        addresses = envelope.rcpt_to or [*parsed.delivered_to, *parsed.to, *parsed.cc]
        routes = self.router.route_all(addresses)
        if not routes:
            raise NoRoute("no recipient routes to a queue")
        return routes

    async def _queue_row(self, s: AsyncSession, name: str) -> _QueueRow:
        row = self._queues.get(name)
        if row is None:
            q = (await s.scalars(select(m.Queue).where(m.Queue.name == name))).one_or_none()
            if q is None:
                raise NoRoute(f"queue {name!r} is not in the database; run sync_config")
            row = self._queues[name] = _QueueRow(q.id, q.name, q.organization_id)
        return row

    # --- mail -------------------------------------------------------------------

    async def ingest(
        self,
        raw: bytes,
        source: Source,
        envelope: Envelope | None = None,
        *,
        queues: list[str] | None = None,
    ) -> IngestResult:
        """Store one message durably; return the uploads it made or already had.

        Raises NoRoute / MessageTooLarge (permanent: tell the sender) or
        StorageUnavailable / DatabaseUnavailable (temporary: the sender retries).
        """
        envelope = envelope or Envelope()
        if len(raw) > self.max_size:
            MESSAGES_RECEIVED.labels(source, "rejected").inc()
            raise MessageTooLarge(f"message of {len(raw)} bytes exceeds the limit of {self.max_size}")
        started = time.perf_counter()
        async with self._limit:
            try:
                parsed = await asyncio.to_thread(parse.parse_message, raw, max_depth=self.max_depth)
                routes = self._routes(parsed, envelope, queues)
                raw_sha, docs = await asyncio.to_thread(self._store_blobs, raw, parsed)
                result = await self._commit_mail(raw, raw_sha, parsed, docs, source, envelope, routes)
            except PermanentError:
                MESSAGES_RECEIVED.labels(source, "rejected").inc()
                raise
            except Exception:
                MESSAGES_RECEIVED.labels(source, "error").inc()
                raise
        INGEST_SECONDS.labels(source).observe(time.perf_counter() - started)
        MESSAGES_RECEIVED.labels(source, result.status).inc()
        await self._wake(result)
        return result

    def _store_blobs(self, raw: bytes, parsed: parse.ParsedMail):
        """Off the event loop: hash and write every blob (fsynced) before any row."""
        raw_sha = self.blobs.put_sync(raw)
        docs = [(d, self.blobs.put_sync(d.data)) for d in parsed.documents]
        return raw_sha, docs

    async def _commit_mail(self, raw, raw_sha, parsed, docs, source, envelope, routes) -> IngestResult:
        for attempt in (1, 2):
            try:
                return await self._write_mail(raw, raw_sha, parsed, docs, source, envelope, routes)
            except IntegrityError:
                # Lost a race with the same message arriving at once: the rows
                # are there now; the second pass finds them.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _write_mail(self, raw, raw_sha, parsed, docs, source, envelope, routes) -> IngestResult:
        uploads: list[UploadResult] = []
        new_task_ids: list[int] = []
        async with transaction(self.sessions) as s:
            email = (
                await s.scalars(select(m.Email).where(m.Email.fingerprint == parsed.fingerprint))
            ).one_or_none()
            if email is None:
                email = m.Email(
                    fingerprint=parsed.fingerprint,
                    message_id=parsed.message_id,
                    from_addr=parsed.from_addr,
                    to=parsed.to,
                    cc=parsed.cc,
                    subject=parsed.subject,
                    date=parsed.date,
                    source=source,
                    envelope=envelope.as_dict(),
                    raw_sha256=raw_sha,
                    size=len(raw),
                    defects=parsed.defects,
                    auth_results=parsed.auth_results,
                )
                s.add(email)
                await s.flush()
            for route in routes:
                q = await self._queue_row(s, route.queue)
                existing = (
                    await s.execute(
                        select(m.Upload.id).where(m.Upload.email_id == email.id, m.Upload.queue_id == q.id)
                    )
                ).scalar_one_or_none()
                if existing is not None:
                    task_ids = (
                        await s.scalars(select(m.Task.id).where(m.Task.upload_id == existing).order_by(m.Task.id))
                    ).all()
                    uploads.append(UploadResult(existing, q.name, list(task_ids), created=False))
                    continue
                meta = {"tag": route.tag} if route.tag else {}
                upload = m.Upload(
                    queue_id=q.id,
                    organization_id=q.organization_id,
                    email_id=email.id,
                    name=parsed.subject or "(no subject)",
                    meta=meta,
                )
                s.add(upload)
                await s.flush()
                task_ids = await self._add_documents(s, upload, q, docs, actor=source)
                new_task_ids += task_ids
                uploads.append(UploadResult(upload.id, q.name, task_ids, created=True))
            email_id = email.id
        status = "created" if any(u.created for u in uploads) else "duplicate"
        for u in uploads:
            if u.created:
                UPLOADS_CREATED.labels(u.queue).inc()
            log.info(
                "ingest.created" if u.created else "ingest.duplicate",
                email_id=email_id,
                upload_id=u.id,
                queue=u.queue,
                tasks=len(u.task_ids),
                source=source,
                message_id=parsed.message_id,
            )
        return IngestResult(status, email_id, uploads)

    async def _add_documents(self, s: AsyncSession, upload: m.Upload, q: _QueueRow, docs, *, actor: str) -> list[int]:
        """Insert documents and their tasks; mark content already seen in the queue."""
        hashes = {sha for _, sha in docs}
        seen = dict(
            (
                await s.execute(
                    select(m.Document.sha256, func.min(m.Document.id))
                    .join(m.Upload, m.Upload.id == m.Document.upload_id)
                    .where(m.Upload.queue_id == q.id, m.Document.sha256.in_(hashes))
                    .group_by(m.Document.sha256)
                )
            ).all()
        )
        rows: list[m.Document] = []
        for d, sha in docs:
            parent = rows[d.parent].id if d.parent is not None and d.parent < len(rows) else None
            row = m.Document(
                upload_id=upload.id,
                kind=d.kind,
                parent_id=parent,
                filename=d.filename,
                original_filename=d.original_filename,
                content_type=d.content_type,
                sniffed_type=d.sniffed_type,
                content_id=getattr(d, "content_id", None),
                size=len(d.data),
                sha256=sha,
                duplicate_of=seen.get(sha),
            )
            s.add(row)
            await s.flush()
            seen.setdefault(sha, row.id)
            rows.append(row)
        tasks = [
            m.Task(upload_id=upload.id, document_id=row.id, queue_id=q.id, status=TaskStatus.QUEUED)
            for row in rows
            if row.kind in TASK_KINDS
        ]
        s.add_all(tasks)
        await s.flush()
        s.add_all(
            m.TaskEvent(task_id=t.id, from_status=None, to_status=TaskStatus.QUEUED, actor=actor, reason="ingested")
            for t in tasks
        )
        return [t.id for t in tasks]

    # --- HTTP uploads --------------------------------------------------------------

    async def ingest_files(
        self,
        files: list[UploadFile],
        queue: str,
        *,
        name: str | None = None,
        metadata: dict | None = None,
        actor: str = "http",
    ) -> IngestResult:
        """One upload with a document and task per file; no email, no body task."""
        if not files:
            raise PermanentError("no file in the upload")
        if self.settings.queue(queue) is None:
            raise NoRoute(f"unknown queue: {queue}")
        async with self._limit:
            docs = await asyncio.to_thread(self._prepare_files, files)
            async with transaction(self.sessions) as s:
                q = await self._queue_row(s, queue)
                upload = m.Upload(
                    queue_id=q.id,
                    organization_id=q.organization_id,
                    email_id=None,
                    name=name or docs[0][0].filename,
                    meta=metadata or {},
                )
                s.add(upload)
                await s.flush()
                task_ids = await self._add_documents(s, upload, q, docs, actor=actor)
                result = IngestResult("created", None, [UploadResult(upload.id, q.name, task_ids, True)])
        MESSAGES_RECEIVED.labels("http", "created").inc()
        UPLOADS_CREATED.labels(queue).inc()
        log.info("ingest.created", upload_id=result.uploads[0].id, queue=queue, tasks=len(task_ids), source="http")
        await self._wake(result)
        return result

    def _prepare_files(self, files: list[UploadFile]):
        out = []
        for i, f in enumerate(files, 1):
            ctype = (f.content_type or "application/octet-stream").split(";")[0].strip().lower()
            doc = parse.ParsedDocument(
                kind="attachment",
                filename=parse.sanitize_filename(f.filename, fallback=f"file-{i}"),
                original_filename=f.filename,
                content_type=ctype,
                sniffed_type=parse.sniff_content_type(f.data),
                data=f.data,
            )
            out.append((doc, self.blobs.put_sync(f.data)))
        return out

    async def _wake(self, result: IngestResult) -> None:
        ids = [t for u in result.uploads if u.created for t in u.task_ids]
        if not ids:
            return
        for cb in self.on_tasks_created:
            r = cb(ids)
            if asyncio.iscoroutine(r):
                await r

