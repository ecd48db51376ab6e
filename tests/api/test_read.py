"""Emails, documents, steering, health and metrics, over a real socket."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from gateway.queue.steer import transition
from gateway.storage import models as m
from gateway.storage.db import transaction
from tests.api.conftest import mail


async def test_email_metadata_and_raw_bytes_round_trip_exactly(db_url, api):
    raw = mail(subject="Raw check")
    result = await api.ingest_mail(raw)
    upload = result.uploads[0]
    async with api.client() as c:
        u = (await c.get(f"/api/v1/uploads/{upload.id}")).json()
        assert u["email"] == f"{api.base}/api/v1/emails/{result.email_id}"
        assert u["name"] == "Raw check" and len(u["tasks"]) == 2  # body + attachment
        email = (await c.get(u["email"])).json()
        assert email["subject"] == "Raw check" and "billing@supplier.example" in email["from"]
        assert email["size"] == len(raw) and email["source"] == "smtp"
        assert email["uploads"] == [u["url"]]
        r = await c.get(email["raw"])
        assert r.status_code == 200
        assert r.headers["content-type"] == "message/rfc822"
        assert r.content == raw  # byte for byte: CRLF, trailing spaces, base64 as sent
        assert int(r.headers["content-length"]) == len(raw)


async def test_document_content_streams_with_type_and_rfc6266_filename(db_url, api):
    result = await api.ingest_mail(mail(subject="Names", filename='facture "été" 2026.pdf'))
    async with api.client() as c:
        u = (await c.get(f"/api/v1/uploads/{result.uploads[0].id}")).json()
        docs = [(await c.get(d)).json() for d in u["documents"]]
        pdf = next(d for d in docs if d["kind"] == "attachment")
        assert pdf["original_filename"] == 'facture "été" 2026.pdf'
        r = await c.get(pdf["content"])
        assert r.status_code == 200
        assert r.content.startswith(b"%PDF-1.4") and len(r.content) == pdf["size"]
        assert r.headers["content-type"] == "application/pdf"
        assert r.headers["x-content-type-options"] == "nosniff"
        cd = r.headers["content-disposition"]
        assert cd.startswith("attachment; ")
        fallback = cd.split('filename="', 1)[1].split('"', 1)[0]
        assert fallback.isascii() and '"' not in fallback and "ete" in fallback
        star = cd.split("filename*=", 1)[1]
        assert star.startswith("UTF-8''")
        assert unquote(star[len("UTF-8''"):]) == pdf["filename"]
        assert "é" in pdf["filename"]
        # The body document is served too.
        body = next(d for d in docs if d["kind"] == "body")
        r = await c.get(body["content"])
        assert r.status_code == 200 and b"Please find the invoice attached." in r.content


async def _force(api, task_id: int, *path: str) -> None:
    """Walk a task along the state machine as a worker would."""
    async with transaction(api.rt.sessions) as s:
        task = await s.get(m.Task, task_id)
        for target in path:
            transition(s, task, target, actor="test-worker")


async def test_steering_tasks_and_409_on_wrong_state(db_url, api):
    result = await api.ingest_files("invoices", n=3)
    t1, t2, t3 = result.uploads[0].task_ids
    async with api.client() as c:
        # queued: cannot be completed or retried, can be discarded
        for action in ("complete", "retry"):
            r = await c.post(f"/api/v1/tasks/{t1}/{action}")
            assert (r.status_code, r.json()["code"]) == (409, "conflict_status"), r.text
        r = await c.post(f"/api/v1/tasks/{t1}/discard")
        assert r.status_code == 200 and r.json()["status"] == "discarded"
        assert r.json()["history"][-1]["by"].startswith("api-key:")
        r = await c.post(f"/api/v1/tasks/{t1}/discard")
        assert (r.status_code, r.json()["code"]) == (409, "conflict_status")

        await _force(api, t2, "processing", "failed")
        r = await c.post(f"/api/v1/tasks/{t2}/retry")
        assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["attempts"] == 0

        await _force(api, t3, "processing", "reviewing")
        upload = (await c.get(f"/api/v1/uploads/{result.uploads[0].id}")).json()
        assert upload["status"] == "processing"  # t2 is queued again
        r = await c.post(f"/api/v1/tasks/{t3}/complete")
        assert r.status_code == 200 and r.json()["status"] == "completed"
        history = [(e["from"], e["to"]) for e in r.json()["history"]]
        assert history == [(None, "queued"), ("queued", "processing"), ("processing", "reviewing"), ("reviewing", "completed")]
        r = await c.post("/api/v1/tasks/999999/complete")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")


async def test_healthz_and_metrics_without_a_key(db_url, api):
    await api.ingest_files("invoices", n=2)
    async with api.client(None) as c:
        for path in ("/healthz", "/api/v1/healthz"):
            r = await c.get(path)
            assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok", "storage": "ok"}
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert 'gateway_tasks{status="queued"}' in text
        assert "gateway_messages_received_total" in text and "gateway_uploads_created_total" in text


async def test_concurrent_health_probes_all_answer_ok(db_url, api):
    import asyncio

    async with api.client(None) as c:
        answers = await asyncio.gather(*(c.get("/healthz") for _ in range(30)))
    assert [r.status_code for r in answers] == [200] * 30


async def test_healthz_is_503_when_storage_is_unusable(db_url, api):
    import os
    import stat

    storage_tmp = api.rt.blobs.root / "tmp"
    mode = storage_tmp.stat().st_mode
    if os.geteuid() == 0:
        # root ignores permissions: replace the folder by a file instead.
        os.rename(storage_tmp, storage_tmp.with_name("tmp.moved"))
        storage_tmp.write_bytes(b"not a folder")
    else:
        storage_tmp.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        async with api.client(None) as c:
            r = await c.get("/healthz")
            assert r.status_code == 503 and r.json() == {"detail": "storage unavailable", "code": "error"}
    finally:
        if os.geteuid() == 0:
            storage_tmp.unlink()
            os.rename(storage_tmp.with_name("tmp.moved"), storage_tmp)
        else:
            storage_tmp.chmod(mode)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_openapi_documents_every_endpoint_parameter_and_error(db_url, api):
    async with api.client(None) as c:
        r = await c.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]
    design = {
        ("post", "/api/v1/uploads"): {401, 403, 404, 413, 429},
        ("post", "/api/v1/uploads/{filename}"): {401, 403, 404, 413, 429},
        ("get", "/api/v1/uploads"): {400, 401, 403, 429},
        ("get", "/api/v1/uploads/{upload_id}"): {400, 401, 403, 404},
        ("put", "/api/v1/uploads/{upload_id}/move"): {400, 401, 403, 404, 409},
        ("get", "/api/v1/tasks"): {400, 401, 403},
        ("get", "/api/v1/tasks/{task_id}"): {401, 403, 404},
        ("post", "/api/v1/tasks/{task_id}/complete"): {401, 403, 404, 409},
        ("post", "/api/v1/tasks/{task_id}/discard"): {401, 403, 404, 409},
        ("post", "/api/v1/tasks/{task_id}/retry"): {401, 403, 404, 409},
        ("get", "/api/v1/emails/{email_id}"): {401, 403, 404},
        ("get", "/api/v1/emails/{email_id}/raw"): {401, 403, 404},
        ("get", "/api/v1/documents/{document_id}"): {401, 403, 404},
        ("get", "/api/v1/documents/{document_id}/content"): {401, 403, 404},
        ("get", "/api/v1/queues"): {401},
        ("get", "/healthz"): {503},
        ("get", "/metrics"): set(),
    }
    for (method, path), statuses in design.items():
        op = paths[path][method]
        documented = {int(s) for s in op["responses"]}
        assert statuses <= documented, (method, path, documented)
        assert 422 not in documented and 500 in documented
        for s in documented - {200, 202}:
            ref = op["responses"][str(s)]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody")
    assert set(doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]) == {
        "bad_request", "authentication_failed", "access_forbidden", "not_found",
        "conflict_status", "payload_too_large", "rate_limited", "error",
    }
    params = {p["name"] for p in paths["/api/v1/uploads"]["get"]["parameters"]}
    assert {"queue", "status", "created_after", "created_before", "page_size", "before", "after"} <= params
    params = {p["name"] for p in paths["/api/v1/tasks"]["get"]["parameters"]}
    assert {"queue", "status", "upload", "page_size", "before", "after"} <= params
    assert "multipart/form-data" in paths["/api/v1/uploads"]["post"]["requestBody"]["content"]
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey", "basic"}
    with_basic = {
        (m, p) for p, item in paths.items() for m, op in item.items()
        if any("basic" in s for s in op.get("security", []))
    }
    assert with_basic == {("post", "/api/v1/uploads"), ("post", "/api/v1/uploads/{filename}")}
    assert "security" not in paths["/healthz"]["get"]  # open by default


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_database_outage_is_503_error_not_a_crash(db_url, api):
    from gateway.storage import db
    from tests.conftest import free_port

    dead = db.create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    sessions, engine = api.rt.sessions, api.rt.engine
    api.rt.sessions, api.rt.engine = db.session_factory(dead), dead
    try:
        async with api.client() as c:
            r = await c.get("/api/v1/uploads")
            assert r.status_code == 503 and r.json()["code"] == "error" and r.headers["Retry-After"]
            assert "127.0.0.1" not in r.text  # no connection details leak
            r = await c.get("/healthz")
            assert r.status_code == 503 and r.json() == {"detail": "database unavailable", "code": "error"}
    finally:
        api.rt.sessions, api.rt.engine = sessions, engine
        await dead.dispose()
    async with api.client() as c:
        assert (await c.get("/api/v1/uploads")).status_code == 200


async def test_malformed_http_is_answered_in_the_api_error_format(db_url, api):
    """Requests uvicorn rejects before the app sees them still get {detail, code}."""
    import asyncio
    import json

    for request in (
        b"GET /api/v1/uploads HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"NOT AN HTTP REQUEST LINE\r\n\r\n",
        b"GET /api/v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.server.bound_port)
        try:
            writer.write(request)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), raw
        assert b"content-type: application/json" in head.lower()
        error = json.loads(body)
        assert error["code"] == "bad_request" and error["detail"], error

    # The server goes on answering after them.
    async with api.client() as c:
        assert (await c.get("/api/v1/uploads")).status_code == 200


async def test_email_shows_its_part_ledger_with_document_urls(db_url, api):
    from tests.conftest import FIXTURES

    raw = (FIXTURES / "apple_mail_fragments.eml").read_bytes()
    result = await api.ingest_mail(raw)
    async with api.client() as c:
        email = (await c.get(f"/api/v1/emails/{result.email_id}")).json()
        parts = {p["path"]: p for p in email["parts"]}
        assert [(p["path"], p["outcome"]) for p in email["parts"]] == [
            ("0", "container"), ("1", "body"), ("2", "document"), ("3", "body"), ("4", "document"), ("5", "body"),
        ]
        pdf = parts["4"]
        assert (pdf["content_type"], pdf["filename"], pdf["reason"]) == ("application/pdf", "invoice-88.pdf", None)
        doc = (await c.get(pdf["document"])).json()
        assert doc["filename"] == "invoice-88.pdf" and doc["sha256"] == pdf["sha256"] and doc["size"] == pdf["size"]
        body = (await c.get(parts["1"]["document"])).json()
        assert body["kind"] == "body" and parts["3"]["document"] == parts["1"]["document"]
        assert parts["0"]["document"] is None and parts["0"]["documents"] == []
        # Another organization sees nothing of it.
        async with api.client("globex") as other:
            assert (await other.get(f"/api/v1/emails/{result.email_id}")).status_code == 404
