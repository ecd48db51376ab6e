"""Every corpus message through the same ingest path as `gateway replay`, on each backend.

The attachment-task count of each upload is checked against
``tests.test_parse.independent_counts`` (a separately written stdlib walk of the
contract's rules; see its docstring for the justification), so the rows written
agree with the rules and not merely with gateway.parse.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from gateway.ingress.replay import replay
from gateway.parse import parse_message
from gateway.storage import models as m
from tests.conftest import CORPUS, requires_corpus
from tests.test_parse import CORPUS_EXCEPTIONS, independent_counts

pytestmark = requires_corpus


async def test_whole_corpus_replays_with_counted_attachment_tasks(runtime):
    outcomes = [o async for o in replay(runtime.ingestor, [str(CORPUS)], queue="invoices", concurrency=4)]
    # The corpus' own bookkeeping files are not mail; every .eml is one message.
    skipped = {o.path.removeprefix(str(CORPUS) + "/"): o.reason for o in outcomes if o.status == "skipped"}
    assert skipped == {".gitattributes": "hidden", "SOURCES.md": "not_a_mail", "index.tsv": "not_a_mail",
                       "make_index.py": "not_a_mail"}
    outcomes = [o for o in outcomes if o.status != "skipped"]
    statuses = Counter(o.status for o in outcomes)
    assert len(outcomes) == 816
    bad = [(o.path, o.status, o.error) for o in outcomes if o.status not in ("created", "duplicate")]
    assert not bad, bad[:10]
    # Duplicates here are real: sisimai ships CRLF (dos_) and bare-CR (mac_) copies
    # of the same messages, which differ only in line endings; ruby-mail and
    # imap-tools ship the same mail with and without the relays' Received and
    # Delivered-To headers, and RFC 2822's examples resend one message. Each
    # group is listed in tests/test_parse.py::CORPUS_DUPLICATE_GROUPS.
    assert statuses["duplicate"] == 15

    async with runtime.sessions() as s:
        rows = (
            await s.execute(
                select(m.Upload.id, m.Document.kind, m.Task.id, m.Document.size, m.Document.parent_id, m.Document.id)
                .join(m.Document, m.Document.upload_id == m.Upload.id)
                .outerjoin(m.Task, m.Task.document_id == m.Document.id)
            )
        ).all()
    per_upload: dict[int, Counter] = {}
    bodies = {doc_id for _, kind, _, _, _, doc_id in rows if kind == "body"}
    for upload_id, kind, task_id, size, parent_id, _ in rows:
        c = per_upload.setdefault(upload_id, Counter())
        c[kind] += 1
        c["top_forwarded"] += kind == "forwarded" and parent_id is None
        c["top_inline"] += kind == "inline" and parent_id in bodies
        c["tasks"] += task_id is not None
        c["body_task"] += kind == "body" and task_id is not None
        c["nested_tasks"] += kind == "nested" and task_id is not None
        if kind in ("attachment", "inline", "forwarded"):
            assert size > 0  # empty parts make no document
        if kind == "attachment":
            assert task_id is not None
    checked = 0
    for o in outcomes:
        if o.status != "created":
            continue
        rel = o.path.removeprefix(str(CORPUS) + "/")
        (up,) = o.uploads
        c = per_upload[up["id"]]
        assert c["body"] == 1, rel
        # Every document but inline parts has its task.
        # Every attachment and nested document has its task; the body has one
        # when it has text (body_task = "non_empty"); inline, alternative and
        # forwarded (opened .eml) documents have none.
        assert c["tasks"] == c["attachment"] + c["nested_tasks"] + c["body_task"] == len(up["tasks"]), rel
        if rel in CORPUS_EXCEPTIONS:
            continue
        with open(o.path, "rb") as fh:
            raw = fh.read()
        expected_attachments, expected_inline = independent_counts(raw)
        # Files uuencoded in a text body are attachments too; the MIME walk
        # of independent_counts cannot see them.
        uu = sum(d.depth == 0 and "#uu" in (d.part or "") for d in parse_message(raw).documents)
        assert (c["attachment"] + c["top_forwarded"], c["top_inline"]) == (expected_attachments + uu, expected_inline), rel
        checked += 1
    assert checked > 780
