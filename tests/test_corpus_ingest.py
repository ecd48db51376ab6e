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
    # of the same messages, which differ only in line endings.
    assert statuses["duplicate"] < 20

    async with runtime.sessions() as s:
        rows = (
            await s.execute(
                select(m.Upload.id, m.Document.kind, m.Task.id)
                .join(m.Document, m.Document.upload_id == m.Upload.id)
                .outerjoin(m.Task, m.Task.document_id == m.Document.id)
            )
        ).all()
    per_upload: dict[int, Counter] = {}
    for upload_id, kind, task_id in rows:
        c = per_upload.setdefault(upload_id, Counter())
        c[kind] += 1
        c["tasks"] += task_id is not None
    checked = 0
    for o in outcomes:
        if o.status != "created":
            continue
        rel = o.path.removeprefix(str(CORPUS) + "/")
        (up,) = o.uploads
        c = per_upload[up["id"]]
        assert c["body"] == 1, rel
        # Every document but inline parts has its task.
        assert c["tasks"] == c["body"] + c["attachment"] + c["nested"] == len(up["tasks"]), rel
        if rel in CORPUS_EXCEPTIONS:
            continue
        with open(o.path, "rb") as fh:
            expected_attachments, expected_inline = independent_counts(fh.read())
        assert (c["attachment"], c["inline"]) == (expected_attachments, expected_inline), rel
        checked += 1
    assert checked > 780
