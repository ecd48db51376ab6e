"""The one core every ingress calls: route, dedupe, store, one commit.

``Ingestor.ingest(raw, source, envelope)`` is what SMTP, IMAP and replay call;
``Ingestor.ingest_files`` is the HTTP upload's variant (no email, one document and
task per file). Order matters for durability: blobs are written first and made
durable (one flush for every blob of a transaction, see ``storage.blobs``), then
every row (email, uploads, documents, tasks, task events) is written in one
transaction. Whoever calls this may acknowledge the message only after it returns.
On SQLite, messages arriving together share that transaction (group commit, see
``Ingestor._write``), each message's rows in its own SAVEPOINT.

Deduplication is left to the database: ``emails.fingerprint`` and
``uploads (email_id, queue_id)`` are unique, so two deliveries racing each other
end with one row, and the loser of the race re-reads and reports ``duplicate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import parse
from gateway.errors import MessageTooLarge, NoRoute, PermanentError
from gateway.preparer import PROCESS_MAX_BYTES, Prepared, Preparer, PreparerConfig, PreparerProcesses
from gateway.observability import (
    INGEST_SECONDS,
    MESSAGES_RECEIVED,
    UPLOADS_CREATED,
    get_logger,
)
from gateway.queue.states import TaskStatus
from gateway.routing import Route
from gateway.storage import models as m
from gateway.storage.blobs import LocalBlobStore
from gateway.storage.db import is_sqlite, sqlite_path, transaction
from gateway.storage.rows import CoreRows, QueueRow, Rows, SqliteWriter

log = get_logger()

Source = Literal["smtp", "imap", "http", "replay"]
# Documents of these kinds become tasks; "inline" parts stay with the body.
TASK_KINDS = frozenset({"body", "attachment", "nested"})


_T = TypeVar("_T")

# At most this many messages' rows in one group-committed SQLite transaction.
_MAX_GROUP = 32
# Messages up to this size are not counted against storage.ingest_concurrency.
SMALL_MESSAGE_BYTES = 64 * 1024


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
        return {
            "mail_from": self.mail_from,
            "rcpt_to": list(self.rcpt_to),
            "peer": self.peer,
            "helo": self.helo,
            "tls": self.tls,
            **self.extra,
        }


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
        config = PreparerConfig.from_settings(settings)
        self._preparer = Preparer(config, blobs)
        n = settings.storage.parse_processes
        self._processes = PreparerProcesses(config, n) if n else None
        self.max_size = settings.smtp.max_message_size
        self._limit = asyncio.Semaphore(settings.storage.ingest_concurrency)
        # SQLite: a group-commit queue and its sqlite3 writer (see _write).
        self._pending: list[tuple[Callable[[Rows], object], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        url = settings.storage.database_url
        # (An in-memory SQLite database cannot be shared with a second connection.)
        on_disk = is_sqlite(url) and sqlite_path(url) not in ("", ":memory:")
        self._sqlite = SqliteWriter(sqlite_path(url), settings.storage.sqlite_synchronous) if on_disk else None
        self._queues: dict[str, QueueRow] = {}
        # Called after every commit that created tasks (the queue's wake-up).
        self.on_tasks_created: list[Callable[[list[int]], Awaitable[None] | None]] = []

    # --- routing ---------------------------------------------------------------

    def routes_for(self, addresses: Iterable[str]) -> list[Route]:
        return self._preparer.router.route_all(addresses)

    def _queue_row(self, rows: Rows, name: str) -> QueueRow:
        row = self._queues.get(name)
        if row is None:
            row = rows.queue(name)
            if row is None:
                raise NoRoute(f"queue {name!r} is not in the database; run sync_config")
            self._queues[name] = row
        return row

    async def _write(self, fn: Callable[[Rows], _T]) -> _T:
        """Run ``fn(rows)`` in a committed transaction; return its result.

        The row writing is plain synchronous code, run as one piece.

        On PostgreSQL it runs through the async session's ``run_sync`` (asyncpg),
        one transaction per call; concurrent writers are fine there.

        On SQLite it runs in a worker thread on the writer's own ``sqlite3``
        connection, and calls made while a commit is under way are grouped into
        the next transaction, each inside its own SAVEPOINT (group commit).
        Measured reasons: through aiosqlite every statement is a round trip
        between the event loop and aiosqlite's thread (about ten per message),
        and SQLite has one writer at a time, so under concurrent SMTP sessions
        each transaction took 17-23 ms and writers queued behind it (in SQLite's
        busy handler, which sleeps up to 100 ms at a time). A group pays one
        BEGIN, one COMMIT and one fsync. Every caller still returns only after
        the transaction holding its rows committed, and a failure inside one
        call undoes that call's rows only.
        """
        if self._sqlite is None:
            # The blobs the rows name are made durable first (see storage.blobs).
            await asyncio.to_thread(self.blobs.flush_sync)
            async with transaction(self.sessions) as s:
                return await s.run_sync(lambda sync: fn(CoreRows(sync.connection())))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((fn, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain_writes())
        return await fut

    async def _drain_writes(self) -> None:
        while self._pending:
            batch = self._pending[:_MAX_GROUP]
            del self._pending[:_MAX_GROUP]
            try:
                results = await asyncio.to_thread(
                    self._sqlite.run_group, [fn for fn, _ in batch], self.blobs.flush_sync
                )
            except BaseException as e:  # the group's commit failed: nothing of it is stored
                cancelled = isinstance(e, asyncio.CancelledError)  # (the loop is shutting down)
                for _, fut in batch:
                    if not fut.done():
                        fut.cancel() if cancelled else fut.set_exception(e)
                if cancelled:
                    raise
                continue
            for (_, fut), (ok, value) in zip(batch, results):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    async def aclose(self) -> None:
        """Stop the helper processes; close the SQLite writer's connection."""
        if self._processes is not None:
            await self._processes.close()
        if self._sqlite is not None:
            self._sqlite.close()

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
        # Small messages take no slot: their number is already bounded by the
        # ingresses (SMTP connections, one fetch per IMAP poller, the replay's
        # window) and the memory they hold is small, while counting them made
        # 16 SMTP sessions of 2 KB messages wait for 8 slots (10-20% fewer
        # messages/s, measured) with the parser helper and the writer idle.
        async with self._limit if len(raw) > SMALL_MESSAGE_BYTES else contextlib.nullcontext():
            try:
                prep = await self._prepare(raw, envelope, queues)
                result = await self._commit_mail(raw, prep.raw_sha, prep.parsed, prep.docs, source, envelope, prep.routes)
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

    async def _prepare(self, raw: bytes, envelope: Envelope, queues: list[str] | None) -> Prepared:
        """Parse, route and write the blobs off the event loop: in a helper
        process, or (large messages, or no helpers configured) in one worker
        thread hop. The blobs are made durable by ``_write``'s flush."""
        if self._processes is not None and len(raw) <= PROCESS_MAX_BYTES:
            prep = await self._processes.prepare(raw, envelope.rcpt_to, queues)
            if prep.unsynced:
                self.blobs.mark_unsynced()
            return prep
        return await asyncio.to_thread(self._preparer.prepare, raw, envelope.rcpt_to, queues, sync=False)

    async def _commit_mail(self, raw, raw_sha, parsed, docs, source, envelope, routes) -> IngestResult:
        for attempt in (1, 2):
            try:
                email_id, uploads = await self._write(
                    lambda rows: self._write_mail(rows, raw, raw_sha, parsed, envelope, docs, source, routes)
                )
                break
            except IntegrityError:
                # Lost a race with the same message arriving at once: the rows
                # are there now; the second pass finds them.
                if attempt == 2:
                    raise
        # Committed: only now is anything logged as created.
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

    def _write_mail(
        self, rows: Rows, raw, raw_sha, parsed, envelope, docs, source, routes
    ) -> tuple[int, list[UploadResult]]:
        """All rows of one message, in the caller's transaction (see ``_write``).

        Fixed statements (``storage.rows``), not the ORM's unit of work: the ORM
        flush (identity map, dependency sort, relationship sync) was about 5 ms of
        CPU per 2 KB message, most of the write, and it runs while SQLite's single
        write lock is held.
        """
        uploads: list[UploadResult] = []
        email_id = rows.email_id(parsed.fingerprint)
        new_email = email_id is None
        if new_email:
            email_id = rows.insert_email(
                {
                    "fingerprint": parsed.fingerprint,
                    "message_id": parsed.message_id,
                    "from_addr": parsed.from_addr,
                    "to": parsed.to,
                    "cc": parsed.cc,
                    "subject": parsed.subject,
                    "date": parsed.date,
                    "source": source,
                    "envelope": envelope.as_dict(),
                    "raw_sha256": raw_sha,
                    "size": len(raw),
                    "defects": parsed.defects,
                    "auth_results": parsed.auth_results,
                }
            )
        for route in routes:
            q = self._queue_row(rows, route.queue)
            # An email inserted by this transaction has no uploads yet.
            existing = None if new_email else rows.upload_id(email_id, q.id)
            if existing is not None:
                uploads.append(UploadResult(existing, q.name, rows.task_ids(existing), created=False))
                continue
            upload_id = rows.insert_upload(
                {
                    "queue_id": q.id,
                    "organization_id": q.organization_id,
                    "email_id": email_id,
                    "name": parsed.subject or "(no subject)",
                    "metadata": {"tag": route.tag} if route.tag else {},
                }
            )
            task_ids = self._add_documents(rows, upload_id, q, docs, actor=source)
            uploads.append(UploadResult(upload_id, q.name, task_ids, created=True))
        return email_id, uploads

    def _add_documents(self, rows: Rows, upload_id: int, q: QueueRow, docs, *, actor: str) -> list[int]:
        """Insert documents and their tasks (with their first task event); mark
        content already seen in the queue (``duplicate_of``: the first document
        with the same sha256 in the queue, earlier uploads first)."""
        hashes = list({sha for _, sha in docs})
        seen = rows.seen(q.id, hashes)

        def row(d, sha, parent_id):
            return {
                "upload_id": upload_id,
                "kind": d.kind,
                "parent_id": parent_id,
                "filename": d.filename,
                "original_filename": d.original_filename,
                "content_type": d.content_type,
                "sniffed_type": d.sniffed_type,
                "content_id": getattr(d, "content_id", None),
                "size": len(d.data),
                "sha256": sha,
                "duplicate_of": seen.get(sha),
            }

        shas = [sha for _, sha in docs]
        # Ids of this upload's own documents are needed before their insert only
        # for a nested part's parent, or for content repeated within the upload
        # (duplicate_of its first copy): then one INSERT per document, in order.
        one_by_one = any(d.parent is not None for d, _ in docs) or len(set(shas)) != len(shas)
        if not one_by_one:
            ids = rows.insert_documents([row(d, sha, None) for d, sha in docs])
        else:
            ids = []
            first: dict[str, int] = {}  # sha256 → id of the first document with it in this upload
            for d, sha in docs:
                parent_id = ids[d.parent] if d.parent is not None and d.parent < len(ids) else None
                if sha not in seen and sha in first:
                    seen[sha] = first[sha]
                (doc_id,) = rows.insert_documents([row(d, sha, parent_id)])
                first.setdefault(sha, doc_id)
                ids.append(doc_id)
        task_docs = [doc_id for (d, _), doc_id in zip(docs, ids) if d.kind in TASK_KINDS]
        if not task_docs:
            return []
        task_ids = rows.insert_tasks(
            [
                {"upload_id": upload_id, "document_id": doc_id, "queue_id": q.id, "status": TaskStatus.QUEUED}
                for doc_id in task_docs
            ]
        )
        rows.insert_task_events(
            [
                {
                    "task_id": t,
                    "from_status": None,
                    "to_status": TaskStatus.QUEUED,
                    "actor": actor,
                    "reason": "ingested",
                }
                for t in task_ids
            ]
        )
        return list(task_ids)

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

            def write(rows: Rows) -> IngestResult:
                q = self._queue_row(rows, queue)
                upload_id = rows.insert_upload(
                    {
                        "queue_id": q.id,
                        "organization_id": q.organization_id,
                        "email_id": None,
                        "name": name or docs[0][0].filename,
                        "metadata": metadata or {},
                    }
                )
                task_ids = self._add_documents(rows, upload_id, q, docs, actor=actor)
                return IngestResult("created", None, [UploadResult(upload_id, q.name, task_ids, True)])

            result = await self._write(write)
        task_ids = result.uploads[0].task_ids
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
            out.append((doc, self.blobs.put_sync(f.data, sync=False)))
        return out

    async def _wake(self, result: IngestResult) -> None:
        ids = [t for u in result.uploads if u.created for t in u.task_ids]
        if not ids:
            return
        for cb in self.on_tasks_created:
            r = cb(ids)
            if asyncio.iscoroutine(r):
                await r

