"""One mail delivered to queues of two organizations is one email row: each
organization sees only its own recipients in the envelope, over HTTP and in
what its processors are given; the operator sees them all."""

from __future__ import annotations

import pytest

from gateway import services as sv
from gateway.ingest import Envelope
from gateway.queue.worker import WorkerPool
from tests.queue.conftest import Recorder, wait_status

from .conftest import mail

pytestmark = pytest.mark.timeout(120)

ACME = ["invoices+supplier7@ap.example.com", "Receipts@AP.example.com"]
GLOBEX = ["orders@globex.example.com"]


async def _deliver(api):
    # Interleaved, as a sender's RCPT order would have them; globex's is a Bcc
    # (in no header), so only the envelope could give it away.
    rcpts = [ACME[0], GLOBEX[0], ACME[1]]
    result = await api.rt.ingestor.ingest(
        mail(to="invoices@ap.example.com"), "smtp", Envelope(mail_from="billing@supplier.example", rcpt_to=rcpts)
    )
    assert len(result.uploads) == 3
    return result


async def test_each_organization_sees_only_its_own_recipients(api):
    result = await _deliver(api)
    url = f"/api/v1/emails/{result.email_id}"
    async with api.client("acme") as acme, api.client("globex") as globex:
        a, g = (await acme.get(url)).json(), (await globex.get(url)).json()
    assert a["envelope"]["rcpt_to"] == ACME
    assert g["envelope"]["rcpt_to"] == GLOBEX
    # The rest of the envelope is the sender's, the same for every recipient.
    for e in (a, g):
        assert e["envelope"]["mail_from"] == "billing@supplier.example"
    # The author's own headers are visible to every recipient by design.
    assert a["to"] == g["to"] == ["invoices@ap.example.com"]
    assert len(a["uploads"]) == 2 and len(g["uploads"]) == 1


async def test_the_operator_sees_every_recipient(api):
    result = await _deliver(api)
    async with api.rt.sessions() as s:
        d = await sv.email_detail(s, result.email_id, None, sv.Urls("http://gw.test"))
    assert d["envelope"]["rcpt_to"] == [ACME[0], GLOBEX[0], ACME[1]]


async def test_a_processor_is_shown_only_its_organizations_recipients(api):
    result = await _deliver(api)
    seen: dict[str, list[str]] = {}

    def record(job):
        seen.setdefault(job.queue, job.metadata["email"]["envelope"]["rcpt_to"])

    rec = Recorder(record)
    pool = WorkerPool(api.rt, processors={"invoices": [rec], "receipts": [rec], "orders": [rec]})
    await pool.start()
    try:
        await wait_status(api.rt, [t for u in result.uploads for t in u.task_ids], "completed")
    finally:
        await pool.stop(5)
    assert seen == {"invoices": ACME, "receipts": ACME, "orders": GLOBEX}


async def test_separate_deliveries_each_show_their_own_recipients(api):
    # A sending MTA delivers per destination domain: the same message twice,
    # one email row; the second delivery's organization sees its recipient.
    raw = mail(to="invoices@ap.example.com")
    for rcpts in ([ACME[0]], GLOBEX, [ACME[0]], [ACME[1]]):
        await api.rt.ingestor.ingest(raw, "smtp", Envelope(mail_from="billing@supplier.example", rcpt_to=rcpts))
    async with api.rt.sessions() as s:
        urls = sv.Urls("http://gw.test")
        uploads = await sv.list_uploads(s)
        [email_id] = {u.email_id for u in uploads.items}
        assert len(uploads.items) == 3
        every = (await sv.email_detail(s, email_id, None, urls))["envelope"]["rcpt_to"]
    assert every == [ACME[0], GLOBEX[0], ACME[1]]  # each once, in order of arrival
    url = f"/api/v1/emails/{email_id}"
    async with api.client("acme") as acme, api.client("globex") as globex:
        assert (await acme.get(url)).json()["envelope"]["rcpt_to"] == ACME
        assert (await globex.get(url)).json()["envelope"]["rcpt_to"] == GLOBEX
