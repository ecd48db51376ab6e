"""The one core every ingress calls: run the pipeline, commit, wake the workers.

``Ingestor.ingest(raw, source, envelope)`` is what SMTP, IMAP, replay and an
HTTP upload of an .eml call; ``Ingestor.ingest_files`` is the HTTP upload's
variant for plain files (no email, one document and task per file). The steps
(``gateway.pipeline``): parse (with the part ledger) → route → policy → store
run off the event loop (``gateway.preparer``); commit (``gateway.commit``, in
``storage.group_commit``) writes every row in one transaction after the blobs
are durable; notify wakes the workers of every process (``on_tasks_created``,
installed for every runtime by ``gateway.runtime``). Whoever calls this may
acknowledge the message only after it returns.

Deduplication is left to the database: ``emails.fingerprint`` and
``uploads (email_id, queue_id)`` are unique, so two deliveries racing each other
end with one row, and the loser of the race re-reads and reports ``duplicate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway import commit, parse
from gateway.commit import IngestResult, UploadResult
from gateway.config_sync import sync_config
from gateway.errors import MessageTooLarge, NoRoute, PermanentError
from gateway.observability import INGEST_SECONDS, MESSAGES_RECEIVED, UPLOADS_CREATED, get_logger
from gateway.pipeline import MailContext
from gateway.policy import plan_files
from gateway.preparer import ParseTimeout, Preparer, PreparerConfig, PreparerProcesses
from gateway.routing import Route
from gateway.sender_check import SenderCheck
from gateway.storage.blobs import LocalBlobStore
from gateway.storage.group_commit import GroupCommit
from gateway.storage.rows import QueueRow, Rows

__all__ = ["Envelope", "IngestResult", "Ingestor", "UploadFile", "UploadResult", "sync_config"]

log = get_logger()

Source = Literal["smtp", "imap", "http", "replay"]

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
class UploadFile:
    """One file of an HTTP upload."""

    filename: str | None
    content_type: str | None
    data: bytes


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
        self.parse_timeout = settings.storage.parse_timeout
        self._processes = PreparerProcesses(config, n, self.parse_timeout) if n else None
        self.max_size = settings.smtp.max_message_size
        self._limit = asyncio.Semaphore(settings.storage.ingest_concurrency)
        self.senders = SenderCheck(settings, sessions)
        self._commit = GroupCommit(sessions, blobs, settings.storage.database_url, settings.storage.sqlite_synchronous)
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

    async def aclose(self) -> None:
        """Stop the helper processes; close the SQLite writer's connection."""
        if self._processes is not None:
            await self._processes.close()
        self._commit.close()

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
                ctx = await self._prepare(raw, source, envelope, queues)
                await self.senders.decide(ctx, source)
                result = await self._commit_mail(ctx, source, envelope)
                if ctx.learn:
                    self.senders.learned(ctx)
            except PermanentError:
                MESSAGES_RECEIVED.labels(source, "rejected").inc()
                raise
            except Exception:
                MESSAGES_RECEIVED.labels(source, "error").inc()
                raise
        INGEST_SECONDS.labels(source).observe(time.perf_counter() - started)
        MESSAGES_RECEIVED.labels(source, result.status).inc()
        await self._notify(result)
        return result

    async def _prepare(self, raw: bytes, source: str, envelope: Envelope, queues: list[str] | None) -> MailContext:
        """The pipeline's prepare steps off the event loop: in a helper
        process, or (no helpers configured) in one worker thread hop. The
        blobs are made durable by the commit's flush. A parse past
        ``parse_timeout`` is stopped (a helper) or abandoned (a thread), and
        the mail is prepared unparsed instead: never lost, never a 451 loop."""
        sender = (envelope.peer, envelope.helo, envelope.mail_from)
        try:
            if self._processes is not None:
                ctx = await self._processes.prepare(raw, envelope.rcpt_to, queues, source, sender)
                if ctx.unsynced:
                    self.blobs.mark_unsynced()
                return ctx
            return await asyncio.wait_for(
                asyncio.to_thread(self._preparer.prepare, raw, envelope.rcpt_to, queues, sync=False,
                                  source=source, sender=sender),
                self.parse_timeout,
            )
        except (ParseTimeout, asyncio.TimeoutError):
            reason = (f"parse_timeout: parsing took longer than {self.parse_timeout:g} s;"
                      " the raw message is the document, held for review")
            log.warning("ingest.parse_timeout", size=len(raw), timeout=self.parse_timeout)
            return await asyncio.to_thread(self._preparer.prepare_unparsed, raw, envelope.rcpt_to, queues,
                                           reason=reason, source=source, sender=sender)

    async def _commit_mail(self, ctx: MailContext, source: str, envelope: Envelope) -> IngestResult:
        env = envelope.as_dict()
        for attempt in (1, 2):
            try:
                email_id, uploads = await self._commit.write(
                    lambda rows: commit.write_mail(rows, ctx, source, env, self._queue_row)
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
                message_id=ctx.parsed.message_id,
            )
        return IngestResult(status, email_id, uploads)

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
            docs = await asyncio.to_thread(self._store_files, files)
            plans = plan_files(len(docs))

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
                task_ids = commit.add_documents(rows, upload_id, q, docs, plans, actor=actor)
                return IngestResult("created", None, [UploadResult(upload_id, q.name, task_ids, True)])

            result = await self._commit.write(write)
        task_ids = result.uploads[0].task_ids
        MESSAGES_RECEIVED.labels("http", "created").inc()
        UPLOADS_CREATED.labels(queue).inc()
        log.info("ingest.created", upload_id=result.uploads[0].id, queue=queue, tasks=len(task_ids), source="http")
        await self._notify(result)
        return result

    def _store_files(self, files: list[UploadFile]):
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

    # --- notify --------------------------------------------------------------------

    async def _notify(self, result: IngestResult) -> None:
        ids = [t for u in result.uploads if u.created for t in u.task_ids]
        if not ids:
            return
        for cb in self.on_tasks_created:
            r = cb(ids)
            if asyncio.iscoroutine(r):
                await r
