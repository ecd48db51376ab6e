"""The commit step: every row of one ingest, inside the caller's transaction.

Plain synchronous code over a ``Rows`` object (``storage.rows``), so that it
runs as one piece on the SQLite group writer's thread or through
``run_sync`` on PostgreSQL (see ``storage.group_commit``). Fixed statements,
not the ORM's unit of work: the ORM flush was about 5 ms of CPU per 2 KB
message, most of the write, while SQLite's single write lock is held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from gateway.pipeline import MailContext
from gateway.policy import DocPlan
from gateway.queue.states import TaskStatus
from gateway.storage.rows import QueueRow, Rows


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


QueueLookup = Callable[[Rows, str], QueueRow]


def write_mail(rows: Rows, ctx: MailContext, source: str, envelope: dict, queue_row: QueueLookup) -> tuple[int, list[UploadResult]]:
    """The email (once: its fingerprint is unique), and one upload per route
    that does not have one yet, with its documents, tasks and first events."""
    parsed = ctx.parsed
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
                "envelope": envelope,
                "raw_sha256": ctx.raw_sha,
                "size": ctx.raw_size or len(ctx.raw),
                "defects": parsed.defects,
                "auth_results": parsed.auth_results,
                "parts": parsed.ledger(),
                "authentication": ctx.authentication,
            }
        )
    for queue, domain, name, address in ctx.learn:
        rows.learn_sender(queue_row(rows, queue).id, domain, name, address)
    for route in ctx.routes:
        q = queue_row(rows, route.queue)
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
        task_ids = add_documents(rows, upload_id, q, ctx.docs, ctx.plans[route.queue], actor=source)
        uploads.append(UploadResult(upload_id, q.name, task_ids, created=True))
    if not new_email and envelope.get("rcpt_to") and any(u.created for u in uploads):
        # A later delivery to other queues (a sending MTA splits recipients by
        # domain): the email row keeps the first delivery's envelope, so add
        # this one's recipients, or its organization would see none of its own.
        rows.add_recipients(email_id, envelope["rcpt_to"])
    return email_id, uploads


def add_documents(rows: Rows, upload_id: int, q: QueueRow, docs, plans: list[DocPlan], *, actor: str) -> list[int]:
    """Insert the planned documents and their tasks (with their first task
    event); mark content already seen in the queue (``duplicate_of``: the
    first document with the same sha256 in the queue, earlier uploads first)."""
    hashes = list({docs[p.index][1] for p in plans})
    seen = rows.seen(q.id, hashes)

    def row(p: DocPlan, parent_id):
        d, sha = docs[p.index]
        return {
            "upload_id": upload_id,
            "kind": p.kind,
            "parent_id": parent_id,
            "filename": d.filename,
            "original_filename": d.original_filename,
            "content_type": d.content_type,
            "sniffed_type": d.sniffed_type,
            "content_id": getattr(d, "content_id", None),
            "size": d.size,
            "sha256": sha,
            "duplicate_of": seen.get(sha),
            "ordinal": p.index,
        }

    shas = [docs[p.index][1] for p in plans]
    # Ids of this upload's own documents are needed before their insert only
    # for a child's parent, or for content repeated within the upload
    # (duplicate_of its first copy): then one INSERT per document, in order.
    one_by_one = any(p.parent is not None for p in plans) or len(set(shas)) != len(shas)
    if not one_by_one:
        ids = rows.insert_documents([row(p, None) for p in plans])
    else:
        ids = []
        by_index: dict[int, int] = {}
        first: dict[str, int] = {}  # sha256 → id of the first document with it in this upload
        for p, sha in zip(plans, shas):
            if sha not in seen and sha in first:
                seen[sha] = first[sha]
            (doc_id,) = rows.insert_documents([row(p, by_index.get(p.parent))])
            first.setdefault(sha, doc_id)
            by_index[p.index] = doc_id
            ids.append(doc_id)
    with_task = [(p, doc_id) for p, doc_id in zip(plans, ids) if p.task]
    if not with_task:
        return []
    task_ids = rows.insert_tasks(
        [
            {"upload_id": upload_id, "document_id": doc_id, "queue_id": q.id, "status": TaskStatus(p.status)}
            for p, doc_id in with_task
        ]
    )
    rows.insert_task_events(
        [
            {
                "task_id": t,
                "from_status": None,
                "to_status": TaskStatus(p.status),
                "actor": actor,
                "reason": p.reason,
            }
            for t, (p, _) in zip(task_ids, with_task)
        ]
    )
    return list(task_ids)
