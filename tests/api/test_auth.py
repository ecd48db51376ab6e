"""Keys, scopes, tenancy and the rate limit, against a real server on a socket."""

from __future__ import annotations

import base64

import httpx
import pytest
import structlog

from gateway.api.keys import revoke_key
from tests.api.conftest import mail


async def _objects(api) -> dict:
    """One of everything in acme (ids), for filling endpoint templates."""
    result = await api.ingest_mail(mail())
    upload = result.uploads[0]
    async with api.client() as c:
        u = (await c.get(f"/api/v1/uploads/{upload.id}")).json()
    return {
        "queue": await api.queue_id("invoices"),
        "queue2": await api.queue_id("receipts"),
        "upload": upload.id,
        "task": upload.task_ids[0],
        "email": result.email_id,
        "document": int(u["documents"][0].rsplit("/", 1)[1]),
        "org": int(u["organization"].rsplit("/", 1)[1]),
    }


# (method, path, scope needed, body kind); None scope: any valid key.
ENDPOINTS = [
    ("POST", "/api/v1/uploads?queue={queue}", "upload.create", "multipart"),
    ("POST", "/api/v1/uploads/x.pdf?queue={queue}", "upload.create", "raw"),
    ("GET", "/api/v1/uploads", "upload.read", None),
    ("GET", "/api/v1/uploads/{upload}", "upload.read", None),
    ("PUT", "/api/v1/uploads/{upload}/move", "upload.edit", "move"),
    ("GET", "/api/v1/tasks", "task.read", None),
    ("GET", "/api/v1/tasks/{task}", "task.read", None),
    ("POST", "/api/v1/tasks/{task}/complete", "task.edit", None),
    ("POST", "/api/v1/tasks/{task}/discard", "task.edit", None),
    ("POST", "/api/v1/tasks/{task}/retry", "task.edit", None),
    ("GET", "/api/v1/emails/{email}", "upload.read", None),
    ("GET", "/api/v1/emails/{email}/raw", "upload.read", None),
    ("GET", "/api/v1/documents/{document}", "upload.read", None),
    ("GET", "/api/v1/documents/{document}/content", "upload.read", None),
    ("GET", "/api/v1/queues", None, None),
    ("GET", "/api/v1/queues/{queue}", None, None),
    ("GET", "/api/v1/organizations/{org}", None, None),
]
LISTS = {"/api/v1/uploads", "/api/v1/tasks", "/api/v1/queues"}


def _request(c: httpx.AsyncClient, method: str, path: str, body: str | None, objs: dict, **kw):
    url = path.format(**objs)
    if body == "multipart":
        kw["files"] = {"file": ("a.pdf", b"%PDF-1.4", "application/pdf")}
    elif body == "raw":
        kw["content"] = b"%PDF-1.4"
    elif body == "move":
        kw["json"] = {"queue": objs["queue2"]}
    return c.request(method, url, **kw)


def _assert_error(r: httpx.Response, status: int, code: str, where: str) -> None:
    assert r.status_code == status, f"{where}: {r.status_code} {r.text}"
    assert r.json() == {"detail": r.json()["detail"], "code": code}, where
    assert r.json()["detail"]


async def test_every_endpoint_without_a_valid_key_is_401(db_url, api):
    objs = await _objects(api)
    revoked = await api.key("acme", "upload.read", "upload.create", "task.read", "task.edit", "upload.edit")
    async with api.rt.sessions() as s:
        from sqlalchemy import select

        from gateway.storage import models as m

        revoked_id = (await s.scalars(select(m.ApiKey.id).order_by(m.ApiKey.id.desc()))).first()
    await revoke_key(api.rt.sessions, revoked_id)
    variants = {
        "no key": {},
        "unknown key": {"Authorization": "Bearer gw_notakey"},
        "garbage": {"X-API-Key": "x" * 500},
        "revoked": {"X-API-Key": revoked},
        "basic outside upload creation": {"Authorization": "Basic " + base64.b64encode(f"{api.keys['acme']}:".encode()).decode()},
        # Fail closed: a bad credential is not overlooked because a good one is next to it.
        "empty bearer beside a good key": {"Authorization": "Bearer", "X-API-Key": api.keys["acme"]},
        "unknown scheme beside a good key": {"Authorization": "Token abc", "X-API-Key": api.keys["acme"]},
        "two different keys": {"Authorization": f"Bearer {api.keys['acme']}", "X-API-Key": api.keys["globex"]},
    }
    async with api.client(None) as c:
        for label, headers in variants.items():
            for method, path, _scope, body in ENDPOINTS:
                if label.startswith("basic") and body in ("multipart", "raw"):
                    continue  # Basic is accepted there (next test)
                r = await _request(c, method, path, body, objs, headers=headers)
                _assert_error(r, 401, "authentication_failed", f"{label}: {method} {path}")


async def test_key_is_accepted_as_bearer_x_api_key_and_basic_on_upload_creation(db_url, api):
    key = api.keys["acme"]
    queue = await api.queue_id("invoices")
    basic_password = base64.b64encode(f"acme:{key}".encode()).decode()
    basic_username = base64.b64encode(f"{key}:".encode()).decode()
    async with api.client(None) as c:
        assert (await c.get("/api/v1/queues", headers={"Authorization": f"Bearer {key}"})).status_code == 200
        assert (await c.get("/api/v1/queues", headers={"X-API-Key": key})).status_code == 200
        for auth in (basic_password, basic_username):
            r = await c.post(
                f"/api/v1/uploads?queue={queue}",
                files={"content": ("scan.pdf", b"%PDF-1.4 scan", "application/pdf")},
                headers={"Authorization": f"Basic {auth}"},
            )
            assert r.status_code == 202, r.text
            r = await c.post(
                f"/api/v1/uploads/raw.pdf?queue={queue}", content=b"%PDF", headers={"Authorization": f"Basic {auth}"}
            )
            assert r.status_code == 202, r.text
        r = await c.get("/api/v1/uploads", headers={"Authorization": f"Basic {basic_password}"})
        _assert_error(r, 401, "authentication_failed", "basic on a read")
        r = await c.post(f"/api/v1/uploads?queue={queue}", headers={"Authorization": "Basic !!!notbase64"})
        _assert_error(r, 401, "authentication_failed", "malformed basic")


async def test_missing_scope_is_403_on_every_scoped_endpoint(db_url, api):
    objs = await _objects(api)
    for method, path, scope, body in ENDPOINTS:
        if scope is None:
            continue
        others = [s for s in ("upload.create", "upload.read", "upload.edit", "task.read", "task.edit") if s != scope]
        key = await api.key("acme", *others)
        async with httpx.AsyncClient(base_url=api.base, headers={"X-API-Key": key}) as c:
            r = await _request(c, method, path, body, objs)
            _assert_error(r, 403, "access_forbidden", f"{method} {path}")
    # A key with only upload.create cannot read what it created.
    key = await api.key("acme", "upload.create")
    async with httpx.AsyncClient(base_url=api.base, headers={"X-API-Key": key}) as c:
        r = await c.post(f"/api/v1/uploads?queue={objs['queue']}", files={"file": ("a.pdf", b"x")})
        assert r.status_code == 202
        _assert_error(await c.get(r.json()["url"]), 403, "access_forbidden", "read back")


async def test_objects_of_another_organization_are_404_on_every_endpoint(db_url, api):
    objs = await _objects(api)
    async with api.client("globex") as c:
        for method, path, _scope, body in ENDPOINTS:
            r = await _request(c, method, path, body, objs)
            if path in LISTS:
                assert r.status_code == 200, f"{path}: {r.text}"
                urls = {x["url"] for x in r.json()["results"]}
                leaked = {f"{api.base}/api/v1/{kind}/{objs[k]}" for kind, k in
                          (("uploads", "upload"), ("tasks", "task"), ("queues", "queue"), ("queues", "queue2"))}
                assert not urls & leaked, f"{path} shows acme's objects to globex"
                continue
            _assert_error(r, 404, "not_found", f"globex: {method} {path}")
        # Filters naming acme's objects find nothing rather than leaking.
        for q in (f"queue={objs['queue']}", f"upload={objs['upload']}"):
            r = await c.get(f"/api/v1/tasks?{q}")
            assert r.status_code == 200 and r.json()["results"] == []
    # Moving to another organization's queue: not found, and nothing moved.
    globex_queue = await api.queue_id("orders")
    async with api.client() as c:
        r = await c.put(f"/api/v1/uploads/{objs['upload']}/move", json={"queue": globex_queue})
        _assert_error(r, 404, "not_found", "move to globex queue")
        assert (await c.get(f"/api/v1/uploads/{objs['upload']}")).json()["queue_name"] == "invoices"
        # The same endpoints work for the owner (the 404s above are about tenancy).
        for method, path, _scope, body in ENDPOINTS:
            if method == "GET":
                r = await _request(c, method, path, body, objs)
                assert r.status_code == 200, f"acme: {path}: {r.text}"


async def test_rate_limit_answers_429_with_retry_after(db_url, make_api):
    api = await make_api(db_url, rate_limit_per_minute=3)
    async with api.client() as c:
        for _ in range(3):
            assert (await c.get("/api/v1/queues")).status_code == 200
        r = await c.get("/api/v1/queues")
        _assert_error(r, 429, "rate_limited", "4th request")
        assert 1 <= int(r.headers["Retry-After"]) <= 20
    # The limit is per key: another key is not affected.
    async with api.client("globex") as c:
        assert (await c.get("/api/v1/queues")).status_code == 200


async def test_errors_are_always_detail_and_code(db_url, api, monkeypatch):
    async with api.client() as c:
        _assert_error(await c.get("/api/v1/no-such-thing"), 404, "not_found", "unknown route")
        _assert_error(await c.get("/nothing/here"), 404, "not_found", "unknown route at root")
        _assert_error(await c.delete("/api/v1/queues"), 405, "bad_request", "wrong method")
        _assert_error(await c.get("/api/v1/uploads?page_size=0"), 400, "bad_request", "page_size 0")
        _assert_error(await c.get("/api/v1/uploads?status=nope"), 400, "bad_request", "bad status")
        _assert_error(await c.get("/api/v1/uploads?before=1&after=2"), 400, "bad_request", "two cursors")
        _assert_error(await c.get("/api/v1/tasks/abc"), 400, "bad_request", "non-integer id")
        _assert_error(await c.get("/api/v1/tasks/99999999999"), 400, "bad_request", "id beyond 32 bits")
        r = await c.get("/api/v1/uploads", params={"created_after": "9999-12-31T23:00:00-05:00"})
        _assert_error(r, 400, "bad_request", "date out of range")
        _assert_error(await c.get("/api/v1/tasks?queue=http://x/api/v1/uploads/3"), 400, "bad_request", "wrong URL kind")
        r = await c.put("/api/v1/uploads/1/move", content=b"{not json", headers={"content-type": "application/json"})
        _assert_error(r, 400, "bad_request", "malformed JSON")
        _assert_error(await c.put("/api/v1/uploads/1/move", json={}), 400, "bad_request", "missing field")

        # An unexpected exception: 500, logged with the request id, no trace to the client.
        from gateway import services

        async def boom(*a, **k):
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(services, "list_queues", boom)
        with structlog.testing.capture_logs() as logs:
            r = await c.get("/api/v1/queues")
        _assert_error(r, 500, "error", "unexpected exception")
        request_id = r.headers["X-Request-ID"]
        assert request_id in r.json()["detail"]
        assert "secret" not in r.text and "Traceback" not in r.text
        errors = [e for e in logs if e["event"] == "http.error"]
        assert errors and errors[0]["request_id"] == request_id and errors[0]["exc_info"]
        # The server is still serving.
        assert (await c.get("/api/v1/tasks")).status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_health_and_metrics_can_require_a_key(db_url, make_api):
    api = await make_api(db_url, protect_health_and_metrics=True)
    async with api.client(None) as c:
        for path in ("/healthz", "/metrics", "/api/v1/healthz"):
            _assert_error(await c.get(path), 401, "authentication_failed", path)
    async with api.client() as c:
        assert (await c.get("/healthz")).json() == {"status": "ok", "database": "ok", "storage": "ok"}
        assert (await c.get("/metrics")).status_code == 200
