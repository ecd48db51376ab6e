"""Workers: claim a task, hold its lease, run the queue's processors, record how it went.

One ``WorkerPool`` per process (the ``workers`` component of ``gateway serve``):

- a dispatcher claims as many tasks as it has free slots (``concurrency``). A
  claim is one locking read (task, document and upload joined) and its update in
  one transaction: on PostgreSQL ``SELECT ... FOR UPDATE OF tasks SKIP LOCKED``,
  so instances never wait on or take each other's tasks; on SQLite the engine's
  ``BEGIN IMMEDIATE`` makes the transaction the only writer, so the read and the
  update cannot interleave with another claim. The status change itself goes
  through ``steer.transition`` (one event per change), like every other one.
- clocks: leases and backoffs are stamped with this host's UTC clock and compared
  with the sweeping host's, so instances sharing a database need synchronised
  clocks (NTP); a skew well under ``lease_seconds`` is harmless.
- a claimed task is ``processing`` with a lease (``lease_seconds``) that a
  renewer extends every third of it. A worker that dies stops renewing; any
  instance's sweeper then puts the task back to ``queued`` (or ``failed`` once its
  attempts are used up, so a document that kills its worker cannot loop forever).
- it wakes within milliseconds of new work: an in-process listener (ingest and
  steering of this process) and, from other processes (`gateway replay`,
  `gateway tasks retry`, a second instance), a dedicated LISTEN connection on
  PostgreSQL or a watch of SQLite's ``PRAGMA data_version`` (see
  ``_sqlite_watch_loop``); ``poll_seconds`` is only the fallback, and the
  dispatcher also wakes when the earliest backoff is due.
- graceful stop: no new claims; tasks in flight get ``timeout`` seconds to finish,
  then are cancelled and released back to ``queued`` (never left ``processing``).

Outcomes: every processor done → ``completed`` (``reviewing`` when the queue has
``review = true`` or a result asks for it); ``RetryLater`` (or an unexpected
exception) → ``queued`` again after the backoff while attempts remain, else
``failed``; ``ProcessorFailed`` → ``failed`` at once. ``last_error`` keeps the
last error either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select, update

from gateway import services as sv
from gateway.errors import DatabaseUnavailable
from gateway.observability import PROCESSOR_SECONDS, get_logger
from gateway.queue import wakeup
from gateway.queue.processors import Job, Outcome, Processor, ProcessorFailed, RetryLater, build_processor
from gateway.queue.retry import RetryStrategy
from gateway.queue.states import TaskStatus, UploadStatus
from gateway.queue.steer import transition
from gateway.storage import models as m
from gateway.storage.db import is_sqlite, sqlite_path, transaction
from gateway.storage.text import storable

log = get_logger()

T = TaskStatus

# How often the SQLite watch looks for another process's commit: the pick-up
# delay for work committed elsewhere (one cheap PRAGMA per look).
SQLITE_WATCH_SECONDS = 0.1
# How many expired leases one sweep handles (the next sweep takes the rest).
SWEEP_BATCH = 200


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def worker_name() -> str:
    """Unique per pool: shows in leases and task events (who ran it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Claimed:
    job: Job
    queue: str


async def claim_tasks(
    sessions, worker: str, queue_ids: dict[int, str], lease_seconds: float, base_url: str, limit: int = 1
) -> list[Claimed]:
    """Take up to ``limit`` of the oldest runnable tasks of the given queues.

    One claim for several free slots: under a backlog this costs one transaction
    per batch instead of one per task.
    """
    if not queue_ids or limit < 1:
        return []
    async with transaction(sessions) as s:
        now = utcnow()
        # The task, its document and its upload in one round trip; only the
        # task rows are locked (FOR UPDATE OF tasks).
        rows = (
            await s.execute(
                select(m.Task, m.Document, m.Upload)
                .join(m.Document, m.Document.id == m.Task.document_id)
                .join(m.Upload, m.Upload.id == m.Task.upload_id)
                .where(
                    m.Task.status == T.QUEUED.value,
                    m.Task.queue_id.in_(list(queue_ids)),
                    or_(m.Task.run_after.is_(None), m.Task.run_after <= now),
                )
                .order_by(m.Task.id)
                .limit(limit)
                # PostgreSQL: skip rows another instance is claiming; SQLite ignores
                # this and relies on BEGIN IMMEDIATE (see the module doc).
                .with_for_update(skip_locked=True, of=m.Task)
            )
        ).unique().all()
        if not rows:
            return []
        tasks = [r[0] for r in rows]
        docs = {r[1].id: r[1] for r in rows}
        uploads = {r[2].id: r[2] for r in rows}
        expires = now + dt.timedelta(seconds=lease_seconds)
        for task in tasks:
            attempt = task.attempts + 1
            transition(
                s, task, T.PROCESSING, actor=worker, reason=f"attempt {attempt}",
                attempts=attempt, leased_by=worker, lease_expires_at=expires, run_after=None,
            )
        email_ids = {u.email_id for u in uploads.values() if u.email_id is not None}
        emails = {e.id: e for e in await s.scalars(select(m.Email).where(m.Email.id.in_(email_ids)))} if email_ids else {}
        # A processor works for its upload's organization: the email it is shown
        # names only that organization's recipients, as the API's does.
        orgs = {u.organization_id for u in uploads.values() if u.email_id is not None}
        routers = {o: await sv.recipients_router(s, o) for o in orgs}
        urls = sv.Urls(base_url)
        claimed = []
        for task in tasks:
            doc, upload = docs[task.document_id], uploads[task.upload_id]
            email = emails.get(upload.email_id)
            metadata = {
                "task": {**sv.task_dict(task, urls), "attempt": task.attempts},
                "upload": sv.upload_dict(upload, urls, UploadStatus.PROCESSING),
                "document": sv.document_dict(doc, urls),
                "email": sv.email_dict(email, urls, routers[upload.organization_id]) if email is not None else None,
            }
            job = Job(
                task_id=task.id,
                upload_id=task.upload_id,
                document_id=doc.id,
                queue=queue_ids[task.queue_id],
                attempt=task.attempts,
                path=None,  # filled in by the pool (it owns the blob store)
                filename=doc.filename,
                content_type=doc.content_type,
                size=doc.size,
                sha256=doc.sha256,
                metadata=metadata,
            )
            claimed.append(Claimed(job, job.queue))
    return claimed


async def claim_next_task(
    sessions, worker: str, queue_ids: dict[int, str], lease_seconds: float, base_url: str
) -> Claimed | None:
    """Take the oldest runnable task of the given queues, or None when there is none."""
    claimed = await claim_tasks(sessions, worker, queue_ids, lease_seconds, base_url, 1)
    return claimed[0] if claimed else None


async def sweep_expired_leases(sessions, actor: str, retry: RetryStrategy, *, alive: str | None = None) -> list[int]:
    """Put tasks whose worker stopped renewing back to ``queued``; return their ids.

    Any instance may sweep: the tasks of an instance that died with all its workers
    are recovered by the others. ``alive`` is the sweeping pool's own worker name:
    its leases are skipped, since a late renewal there only means its event loop
    was slow, not that the worker died (others still sweep them if it did).
    """
    async with transaction(sessions) as s:
        now = utcnow()
        q = select(m.Task).where(m.Task.status == T.PROCESSING.value, m.Task.lease_expires_at < now)
        if alive is not None:
            q = q.where(or_(m.Task.leased_by.is_(None), m.Task.leased_by != alive))
        rows = (
            await s.scalars(
                q
                .order_by(m.Task.id)
                .limit(SWEEP_BATCH)
                .with_for_update(skip_locked=True)
            )
        ).all()
        requeued = []
        for task in rows:
            dead = task.leased_by
            why = f"lease expired (worker {dead} stopped renewing)"
            common = {"leased_by": None, "lease_expires_at": None}
            if retry.should_retry(task.attempts):
                transition(s, task, T.QUEUED, actor=actor, reason=why, **common)
                requeued.append(task.id)
            else:
                transition(s, task, T.FAILED, actor=actor, reason=why, last_error=why, **common)
            log.warning("task.lease_expired", task_id=task.id, upload_id=task.upload_id, worker=dead)
    return requeued


def pg_dsn(url) -> str:
    """The asyncpg DSN of a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class WorkerPool:
    """The ``workers`` component: ``start()`` returns once claiming, ``stop(timeout)`` drains."""

    name = "workers"

    def __init__(self, rt, *, processors: dict[str, list[Processor]] | None = None, worker: str | None = None) -> None:
        self.rt = rt
        self.cfg = rt.settings.workers
        self.worker = worker or worker_name()
        self.retry = RetryStrategy(max_attempts=self.cfg.max_attempts, backoff_seconds=self.cfg.backoff_seconds)
        self._override = processors
        self._processors: dict[str, list[Processor]] = {}
        self._review: dict[str, bool] = {}
        self._queue_ids: dict[int, str] = {}
        self._slots = asyncio.Semaphore(self.cfg.concurrency)
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: dict[int, asyncio.Task] = {}
        self._background: list[asyncio.Task] = []
        self._dispatcher: asyncio.Task | None = None
        self._listening = asyncio.Event()
        self._pg = not is_sqlite(rt.engine)
        # SQLite has one writer at a time; a transaction that finds the lock taken
        # waits in SQLite's busy handler, which sleeps in steps of up to 100 ms.
        # Queuing our own writes here instead keeps claims and finishes prompt.
        self._writes = contextlib.nullcontext() if self._pg else asyncio.Lock()
        self.log = log.bind(worker=self.worker)
        # Sweep often enough that an expired lease is noticed within about half a lease.
        self.sweep_seconds = max(0.2, min(self.cfg.lease_seconds / 2, self.cfg.poll_seconds))

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        s = self.rt.settings
        async with self.rt.sessions() as session:
            rows = (await session.execute(select(m.Queue.id, m.Queue.name))).all()
        known = {q.name for q in s.queues}
        # Only queues this instance is configured for: another instance with a
        # newer config may own queues we cannot process.
        self._queue_ids = {qid: name for qid, name in rows if name in known}
        for q in s.queues:
            self._review[q.name] = q.review
            if self._override is not None:
                self._processors[q.name] = list(self._override.get(q.name, []))
            else:
                self._processors[q.name] = [build_processor(p) for p in q.processors]
        wakeup.install(self.rt.ingestor, self.rt.engine)
        wakeup.add_listener(self.rt.engine, self._wake.set)
        if self._pg:
            self._background.append(asyncio.create_task(self._listen_loop(), name="workers-listen"))
            try:
                await asyncio.wait_for(self._listening.wait(), 5)
            except asyncio.TimeoutError:
                self.log.warning("queue.listen_unavailable", detail="polling only until LISTEN connects")
        elif sqlite_path(str(self.rt.engine.url)) not in ("", ":memory:"):
            self._background.append(asyncio.create_task(self._sqlite_watch_loop(), name="workers-watch"))
        self._background.append(asyncio.create_task(self._sweep_loop(), name="workers-sweep"))
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="workers-dispatch")
        self.log.info("queue.started", concurrency=self.cfg.concurrency, queues=sorted(self._queue_ids.values()))

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None
        running = list(self._running.values())
        if running:
            self.log.info("queue.draining", tasks=len(running), timeout=timeout)
            _done, pending = await asyncio.wait(running, timeout=timeout)
            for t in pending:
                t.cancel()  # each releases its task back to queued
            await asyncio.gather(*running, return_exceptions=True)
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        wakeup.remove_listener(self.rt.engine, self._wake.set)
        for procs in self._processors.values():
            for p in procs:
                close = getattr(p, "close", None)
                if close is not None:
                    await close()
        self.log.info("queue.stopped")

    # --- dispatching -----------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            await self._slots.acquire()
            free = 1
            while not self._slots.locked():  # every other free slot, without waiting
                await self._slots.acquire()
                free += 1
            if self._stopping:
                self._release_slots(free)
                return
            # Cleared before the claim: a wake-up arriving while we claim is kept.
            self._wake.clear()
            try:
                claimed = await self._claim(free)
                failures = 0
            except DatabaseUnavailable as e:
                self._release_slots(free)
                failures += 1
                self.log.warning("queue.claim_failed", error=str(e))
                await self._sleep(min(2**failures * 0.1, self.cfg.poll_seconds))
                continue
            self._release_slots(free - len(claimed))
            if not claimed:
                await self._sleep(await self._idle_timeout())
                continue
            # open_path looks on disk (a blob may still be in the two-level layout).
            paths = await asyncio.to_thread(lambda: [self.rt.blobs.open_path(c.job.sha256) for c in claimed])
            for c, path in zip(claimed, paths):
                c.job.path = path
                self._running[c.job.task_id] = asyncio.create_task(self._run(c), name=f"task-{c.job.task_id}")

    async def _claim(self, n: int) -> list[Claimed]:
        async def claim() -> list[Claimed]:
            async with self._writes:
                return await claim_tasks(
                    self.rt.sessions, self.worker, self._queue_ids, self.cfg.lease_seconds,
                    self.rt.settings.http.base_url, n,
                )

        # Shielded: a stop arriving mid-claim must not abandon tasks the claim
        # has already committed as ours; they are handed straight back instead.
        pending = asyncio.ensure_future(claim())
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            try:
                claimed = await pending
            except Exception:
                claimed = []
            for c in claimed:
                await self._release(c.job, self.log.bind(task_id=c.job.task_id))
            self._release_slots(n)
            raise

    def _release_slots(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0))
        except asyncio.TimeoutError:
            pass

    async def _idle_timeout(self) -> float:
        """Until the poll, or sooner when a backed-off task becomes due."""
        timeout = self.cfg.poll_seconds
        try:
            async with self.rt.sessions() as s:
                due = await s.scalar(
                    select(func.min(m.Task.run_after)).where(
                        m.Task.status == T.QUEUED.value,
                        m.Task.queue_id.in_(list(self._queue_ids)),
                        m.Task.run_after.is_not(None),
                    )
                )
        except Exception as e:  # the poll still runs
            self.log.warning("queue.due_query_failed", error=str(e))
            return timeout
        if due is not None:
            timeout = min(timeout, (due - utcnow()).total_seconds() + 0.005)
        # A due task we could not claim is being claimed elsewhere: no hot loop.
        return max(timeout, 0.01)

    # --- one task --------------------------------------------------------------------

    async def _run(self, claimed: Claimed) -> None:
        job = claimed.job
        tlog = self.log.bind(task_id=job.task_id, upload_id=job.upload_id, queue=job.queue)
        renewer = asyncio.create_task(self._renew_loop(job.task_id, tlog))
        try:
            try:
                outcome = await self._process(job, tlog)
            except asyncio.CancelledError:
                await self._release(job, tlog)
                raise
            finally:
                renewer.cancel()
            # Recording the outcome is not interrupted by a stop: the work is done.
            finishing = asyncio.ensure_future(self._finish(job, outcome, tlog))
            try:
                await asyncio.shield(finishing)
            except asyncio.CancelledError:
                await finishing
                raise
        except Exception as e:  # the DB went away while finishing: the lease expires
            tlog.error("task.finish_failed", error=str(e))
        finally:
            self._running.pop(job.task_id, None)
            self._slots.release()

    async def _process(self, job: Job, tlog) -> Outcome | BaseException:
        """Run every processor in order; the first failure stops the run."""
        results: list[dict[str, Any]] = []
        review = False
        for p in self._processors.get(job.queue, []):
            started = time.perf_counter()
            try:
                outcome = await p.run(job)
            except (RetryLater, ProcessorFailed) as e:
                PROCESSOR_SECONDS.labels(p.type, "retry" if isinstance(e, RetryLater) else "failed").observe(
                    time.perf_counter() - started
                )
                return e
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A bug in a processor is not the document's fault: retry, loudly.
                tlog.exception("task.processor_crashed", processor=p.type)
                PROCESSOR_SECONDS.labels(p.type, "error").observe(time.perf_counter() - started)
                return RetryLater(f"{p.type} processor crashed: {type(e).__name__}: {e}")
            PROCESSOR_SECONDS.labels(p.type, "done").observe(time.perf_counter() - started)
            results.append({"type": p.type, "result": outcome.result})
            review = review or outcome.review
        return Outcome(result={"processors": results}, review=review)

    async def _finish(self, job: Job, outcome: Outcome | BaseException, tlog) -> None:
        requeued = False
        async with self._writes, transaction(self.rt.sessions) as s:
            task = await self._own_task(s, job.task_id)
            if task is None:
                tlog.warning("task.lease_lost", detail="another worker took the task over; result dropped")
                return
            common = {"leased_by": None, "lease_expires_at": None}
            if isinstance(outcome, Outcome):
                review = outcome.review or self._review.get(job.queue, False)
                target = T.REVIEWING if review else T.COMPLETED
                # A processor's output is text from outside (a command's stdout, a
                # webhook's reply): made storable, or PostgreSQL refuses the finish
                # and the task runs again when its lease expires, forever.
                transition(
                    s, task, target, actor=self.worker, reason="processed",
                    result=storable(outcome.result), last_error=None, **common,
                )
            elif isinstance(outcome, RetryLater) and self.retry.should_retry(task.attempts):
                delay = self.retry.delay(task.attempts, outcome.retry_after)
                transition(
                    s, task, T.QUEUED, actor=self.worker, reason=storable(f"retry in {delay:.1f}s: {outcome}"[:1000]),
                    last_error=storable(str(outcome)), run_after=utcnow() + dt.timedelta(seconds=delay), **common,
                )
                requeued = True
                tlog.info("task.retry_scheduled", delay=round(delay, 3), attempts=task.attempts, error=str(outcome))
            else:
                why = str(outcome) if isinstance(outcome, ProcessorFailed) else f"gave up after {task.attempts} attempts: {outcome}"
                transition(
                    s, task, T.FAILED, actor=self.worker, reason=storable(why[:1000]),
                    last_error=storable(str(outcome)), **common,
                )
                tlog.warning("task.failed", attempts=task.attempts, error=str(outcome))
        if requeued:
            # Sleeping dispatchers (here and elsewhere) recompute when to wake.
            await wakeup.tasks_runnable(self.rt.engine, [job.task_id])

    async def _own_task(self, s, task_id: int) -> m.Task | None:
        task = (await s.scalars(select(m.Task).where(m.Task.id == task_id).with_for_update())).one_or_none()
        if task is None or task.status != T.PROCESSING.value or task.leased_by != self.worker:
            return None
        return task

    async def _release(self, job: Job, tlog) -> None:
        """Stopping: hand an unfinished task back without spending an attempt."""
        try:
            async with self._writes, transaction(self.rt.sessions) as s:
                task = await self._own_task(s, job.task_id)
                if task is None:
                    return
                transition(
                    s, task, T.QUEUED, actor=self.worker, reason="released: worker stopping",
                    attempts=max(task.attempts - 1, 0), leased_by=None, lease_expires_at=None,
                )
            tlog.info("task.released")
            await wakeup.tasks_runnable(self.rt.engine, [job.task_id])
        except Exception as e:  # its lease expires and another worker takes it
            tlog.error("task.release_failed", error=str(e))

    async def _renew_loop(self, task_id: int, tlog) -> None:
        lease = self.cfg.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                async with self._writes, transaction(self.rt.sessions) as s:
                    r = await s.execute(
                        update(m.Task)
                        .where(
                            m.Task.id == task_id,
                            m.Task.status == T.PROCESSING.value,
                            m.Task.leased_by == self.worker,
                        )
                        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease))
                        .execution_options(synchronize_session=False)
                    )
                if r.rowcount == 0:
                    tlog.warning("task.lease_lost")
                    return
            except DatabaseUnavailable as e:
                tlog.warning("task.lease_renew_failed", error=str(e))

    # --- background ------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            try:
                async with self._writes:
                    ids = await sweep_expired_leases(
                        self.rt.sessions, f"sweeper {self.worker}", self.retry, alive=self.worker
                    )
                if ids:
                    await wakeup.tasks_runnable(self.rt.engine, ids)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.warning("queue.sweep_failed", error=str(e))
            await asyncio.sleep(self.sweep_seconds)

    async def _sqlite_watch_loop(self) -> None:
        """Wake the dispatcher when another connection committed to the SQLite file.

        SQLite has no LISTEN/NOTIFY. ``PRAGMA data_version`` on a connection held
        open changes whenever any other connection, in this process or another,
        commits: our own claims and finishes too, which costs an extra claim that
        finds nothing. Reading it takes microseconds, but it is a file lock and a
        read, so it runs in a thread like every other database call.
        """
        path = sqlite_path(str(self.rt.engine.url))
        conn: sqlite3.Connection | None = None
        last = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = await asyncio.to_thread(
                            sqlite3.connect, path, timeout=5, check_same_thread=False, isolation_level=None
                        )
                    version = await asyncio.to_thread(lambda: conn.execute("PRAGMA data_version").fetchone()[0])
                    if last is not None and version != last:
                        self._wake.set()
                    last = version
                except sqlite3.Error as e:  # the poll still runs; reopen next time
                    self.log.warning("queue.watch_failed", error=str(e))
                    if conn is not None:
                        conn.close()
                    conn, last = None, None
                await asyncio.sleep(SQLITE_WATCH_SECONDS)
        finally:
            if conn is not None:
                conn.close()

    async def _listen_loop(self) -> None:
        """A dedicated asyncpg connection LISTENing for new work; reconnects."""
        import asyncpg

        dsn = pg_dsn(self.rt.engine.url)
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(wakeup.CHANNEL, lambda *_a: self._wake.set())
                self._listening.set()
                # Work may have arrived while we were not listening.
                self._wake.set()
                delay = 0.5
                await lost.wait()
                self.log.warning("queue.listen_lost")
            except asyncio.CancelledError:
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=2)
                raise
            except Exception as e:
                self.log.warning("queue.listen_failed", error=str(e), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)
