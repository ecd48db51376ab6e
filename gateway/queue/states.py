"""Task states, their legal transitions, and the upload status derived from them.

Pure: no I/O. Every state change in the gateway goes through ``check_transition``,
so an illegal transition is an error in one place and never a silent write.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Iterable

from gateway.errors import IllegalTransition


class TaskStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    REVIEWING = "reviewing"
    COMPLETED = "completed"
    FAILED = "failed"
    DISCARDED = "discarded"


class UploadStatus(StrEnum):
    PROCESSING = "processing"
    REVIEWING = "reviewing"
    COMPLETED = "completed"
    FAILED = "failed"
    PARTIAL = "partial"


T = TaskStatus

# The design's diagram, edge by edge. processing → queued is the lease expiring
# (or a graceful stop releasing the task) and a retryable error awaiting backoff.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    T.QUEUED: frozenset({T.PROCESSING, T.DISCARDED}),
    T.PROCESSING: frozenset({T.COMPLETED, T.REVIEWING, T.FAILED, T.QUEUED}),
    T.REVIEWING: frozenset({T.COMPLETED, T.DISCARDED}),
    T.FAILED: frozenset({T.QUEUED, T.DISCARDED}),
    T.COMPLETED: frozenset(),
    T.DISCARDED: frozenset(),
}

FINISHED = frozenset({T.COMPLETED, T.FAILED, T.DISCARDED})


def can_transition(current: str, target: str) -> bool:
    return TaskStatus(target) in TRANSITIONS[TaskStatus(current)]


def check_transition(current: str, target: str) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(current, target)


def upload_status(statuses: Iterable[str]) -> UploadStatus:
    """Aggregate an upload's task states (design: "Upload status").

    An upload without tasks counts as completed: nothing is left to do.
    """
    s = {TaskStatus(x) for x in statuses}
    if s & {T.QUEUED, T.PROCESSING}:
        return UploadStatus.PROCESSING
    if T.REVIEWING in s:
        return UploadStatus.REVIEWING
    if not s or T.FAILED not in s:
        return UploadStatus.COMPLETED
    if s == {T.FAILED}:
        return UploadStatus.FAILED
    return UploadStatus.PARTIAL
