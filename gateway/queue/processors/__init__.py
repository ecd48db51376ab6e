"""Processors: what a queue does with each task's document, in order.

A processor is an object with ``async def run(job: Job) -> Outcome`` (and an
optional ``async def close()``). It says how the run went by returning an
``Outcome`` (done; maybe asking for review) or raising ``RetryLater`` (a temporary
failure: the worker backs off and tries again) or ``ProcessorFailed`` (permanent:
the task fails now, whatever attempts are left). Anything else it raises is treated
as a temporary failure, so a bug in one processor never leaves a task stuck.

Processors run at least once per task: a retry, or a worker that died after
handing a document on, runs the queue's processors again from the first one.
Receivers see the task id (and the attempt) to recognise a repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# How much of a peer's error text is kept in ``last_error``.
ERROR_TAIL = 2000


class RetryLater(Exception):
    """A temporary failure; ``retry_after`` is the peer's own hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProcessorFailed(Exception):
    """A permanent failure: trying again would give the same answer."""


@dataclass
class Job:
    """Everything a processor may use about one task; read-only by convention."""

    task_id: int
    upload_id: int
    document_id: int
    queue: str
    attempt: int
    path: Path  # the stored document (content-addressed blob, never to be written)
    filename: str
    content_type: str
    size: int
    sha256: str
    # JSON-ready metadata of the task, upload and email, as receivers get it.
    metadata: dict[str, Any] = field(default_factory=dict)

    def placeholders(self) -> dict[str, str]:
        return {
            "path": str(self.path),
            "filename": self.filename,
            "task_id": str(self.task_id),
            "upload_id": str(self.upload_id),
            "document_id": str(self.document_id),
            "sha256": self.sha256,
            "queue": self.queue,
        }


@dataclass
class Outcome:
    result: Any = None
    review: bool = False


class Processor(Protocol):
    type: str

    async def run(self, job: Job) -> Outcome: ...


def wants_review(result: Any) -> bool:
    """A result may ask for a person to look (``{"review": true}``)."""
    return isinstance(result, dict) and result.get("review") is True


def tail(text: str | bytes, limit: int = ERROR_TAIL) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def build_processor(cfg) -> Processor:
    """A processor from its ``[[queues.processors]]`` settings."""
    if cfg.type == "webhook":
        from gateway.queue.processors.webhook import WebhookProcessor

        return WebhookProcessor(cfg)
    if cfg.type == "command":
        from gateway.queue.processors.command import CommandProcessor

        return CommandProcessor(cfg)
    if cfg.type == "folder":
        from gateway.queue.processors.folder import FolderProcessor

        return FolderProcessor(cfg)
    raise ValueError(f"unknown processor type {cfg.type!r}")
