"""Per queue: which of a mail's documents an upload gets, which get tasks,
and the state each task starts in.

Pure, and picklable in and out: it runs in the preparer (a helper process)
with the rest of the CPU-bound steps. The parse decides what a mail holds
(the part ledger); this decides what a queue does with it:

* ``body_format``: the body task's document is the HTML rendering (default)
  or the plain one; the other is kept as ``alternative``.
* ``body_task``: ``non_empty`` (default) makes a body task only when the body
  has visible text; ``always``; ``never``.
* ``forwarded``: ``open`` (default): a forwarded message's .eml is kept
  without a task and its own body and files are documents with tasks;
  ``keep``: the .eml is the task, nothing inside it is.

A later step (sender verdicts, changed IBANs) holds tasks by setting
``status = "reviewing"`` and a ``reason`` on the plans it wants held.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ledger import ParsedDocument

TASK_STATUS_QUEUED = "queued"


@dataclass(frozen=True)
class QueuePolicy:
    body_format: str = "html"
    body_task: str = "non_empty"
    forwarded: str = "open"

    @classmethod
    def from_settings(cls, q) -> "QueuePolicy":
        return cls(
            body_format=getattr(q, "body_format", "html"),
            body_task=getattr(q, "body_task", "non_empty"),
            forwarded=getattr(q, "forwarded", "open"),
        )


@dataclass
class DocPlan:
    """One document row of an upload."""

    index: int  # into ParsedMail.documents (or the HTTP upload's files)
    kind: str  # as stored: body, alternative, inline, attachment, forwarded, nested
    parent: int | None  # index of the parent document, if it is in this upload
    task: bool
    status: str = TASK_STATUS_QUEUED
    reason: str = "ingested"


def plan_mail(documents: list[ParsedDocument], policy: QueuePolicy) -> list[DocPlan]:
    """The documents of one upload of a mail, in order, with their tasks."""
    swap = policy.body_format == "text" and len(documents) > 1 and any(
        d.kind == "alternative" for d in documents
    )
    dropped: set[int] = set()  # inside a forwarded message kept whole
    plans: list[DocPlan] = []
    for i, d in enumerate(documents):
        if d.parent is not None and d.parent in dropped:
            dropped.add(i)
            continue
        kind = d.kind
        if swap and kind == "body":
            kind = "alternative"
        elif swap and kind == "alternative" and d.depth == 0:
            kind = "body"
        # Swapped, neither rendering hangs under the other (a parent must be
        # written before its child, and the plain one comes last).
        parent = None if swap and d.kind in ("body", "alternative") and d.depth == 0 else d.parent
        if kind == "body":
            task = policy.body_task == "always" or (policy.body_task == "non_empty" and not d.blank)
        elif kind == "nested" and d.part is None:  # a forwarded message's own body
            task = not d.blank and policy.body_task != "never"
        elif kind == "forwarded":
            if policy.forwarded == "keep":
                kind, task = ("attachment" if d.depth == 0 else "nested"), True
                dropped.add(i)
            else:
                task = False
        else:
            task = kind in ("attachment", "nested")
        plans.append(DocPlan(index=i, kind=kind, parent=parent, task=task))
    return plans


def plan_files(count: int) -> list[DocPlan]:
    """An HTTP upload: every file is a document with a task."""
    return [DocPlan(index=i, kind="attachment", parent=None, task=True) for i in range(count)]
