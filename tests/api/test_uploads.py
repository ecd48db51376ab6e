"""Creating, listing and moving uploads over a real socket, limits included."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from urllib.parse import quote

import pytest


async def test_multipart_upload_with_several_files_name_and_metadata(db_url, api):
    queue = await api.queue_id("invoices")
    files = [
        ("files", ("a.pdf", b"%PDF-1.4 first", "application/pdf")),
        ("files", ("b.png", b"\x89PNG\r\n\x1a\n....", "image/png")),
        ("content", ("c.txt", b"third", "text/plain")),
    ]
    async with api.client() as c:
        r = await c.post(
            f"/api/v1/uploads?queue={api.base}/api/v1/queues/{queue}",  # a queue URL works as well as an id
            files=files,
            data={"name": "March batch", "metadata": json.dumps({"po": "4711", "nested": {"x": [1, 2]}})},
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert r.headers["Location"] == body["url"]
        assert body["name"] == "March batch" and body["metadata"] == {"po": "4711", "nested": {"x": [1, 2]}}
        assert body["queue"] == f"{api.base}/api/v1/queues/{queue}" and body["email"] is None
        assert body["status"] == "processing"
        assert len(body["tasks"]) == 3 and len(body["documents"]) == 3
        got = []
        for doc_url in body["documents"]:
            doc = (await c.get(doc_url)).json()
            assert doc["kind"] == "attachment"
            content = await c.get(doc["content"])
            got.append((doc["filename"], content.content, content.headers["content-type"]))
        assert got == [
            ("a.pdf", b"%PDF-1.4 first", "application/pdf"),
            ("b.png", b"\x89PNG\r\n\x1a\n....", "image/png"),
            ("c.txt", b"third", "text/plain; charset=utf-8"),
        ]
        for task_url in body["tasks"]:
            task = (await c.get(task_url)).json()
            assert task["status"] == "queued" and task["upload"] == body["url"]
            assert task["history"][0]["to"] == "queued" and task["history"][0]["by"].startswith("api-key:")
        # The default name is the first file's.
        r = await c.post(f"/api/v1/uploads?queue={queue}", files={"file": ("only.pdf", b"%PDF")})
        assert r.status_code == 202 and r.json()["name"] == "only.pdf" and r.json()["metadata"] == {}


async def test_raw_body_upload_with_utf8_filename(db_url, api):
    queue = await api.queue_id("receipts")
    name = "Rechnung März №7.pdf"
    async with api.client() as c:
        r = await c.post(
            f"/api/v1/uploads/{quote(name)}?queue={queue}",
            content=b"%PDF-1.7 raw body",
            headers={"Content-Type": "application/pdf"},
        )
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["queue_name"] == "receipts"
        doc = (await c.get(body["documents"][0])).json()
        # The name as sent is kept; the stored filename is the safe form of it.
        assert doc["original_filename"] == name and doc["filename"] == "Rechnung März _7.pdf"
        assert body["name"] == doc["filename"]
        assert doc["content_type"] == "application/pdf" and doc["size"] == len(b"%PDF-1.7 raw body")
        # A path in the name never becomes a path.
        r = await c.post(f"/api/v1/uploads/{quote('..%2F..%2Fetc%2Fpasswd', safe='')}?queue={queue}", content=b"x")
        assert r.status_code == 202, r.text
        doc = (await c.get(r.json()["documents"][0])).json()
        assert "/" not in doc["filename"] and not doc["filename"].startswith(".")


async def test_bad_upload_requests(db_url, api):
    queue = await api.queue_id("invoices")
    orders = await api.queue_id("orders")
    async with api.client() as c:
        cases = [
            (dict(files={"file": ("a", b"x")}, data={"metadata": "{nope"}), 400, "bad_request"),
            (dict(files={"file": ("a", b"x")}, data={"metadata": "[1]"}), 400, "bad_request"),
            (dict(files={"file": ("a", b"x")}, data={"metadata": "[" * 100000}), 400, "bad_request"),
            (dict(files={"file": ("a", b"x")}, data={"metadata": '{"a": NaN}'}), 400, "bad_request"),
            (dict(files={"file": ("a", b"x")}, data={"metadata": '{"a": 1e400}'}), 400, "bad_request"),
            (dict(files={"file": ("a", b"x")}, data={"name": "nul\x00byte"}), 400, "bad_request"),
            (dict(data={"name": "no file"}, files={"other": ("a", b"x")}), 400, "bad_request"),
            (dict(json={"file": "x"}), 400, "bad_request"),
        ]
        for kw, status, code in cases:
            r = await c.post(f"/api/v1/uploads?queue={queue}", **kw)
            assert (r.status_code, r.json()["code"]) == (status, code), (kw, r.text)
        r = await c.post("/api/v1/uploads?queue=999999", files={"file": ("a", b"x")})
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = await c.post(f"/api/v1/uploads?queue={orders}", files={"file": ("a", b"x")})
        assert (r.status_code, r.json()["code"]) == (404, "not_found")  # another organization's queue
        r = await c.post("/api/v1/uploads", files={"file": ("a", b"x")})
        assert (r.status_code, r.json()["code"]) == (400, "bad_request")  # queue is required
    async with api.rt.sessions() as s:
        from sqlalchemy import func, select

        from gateway.storage import models as m

        assert await s.scalar(select(func.count(m.Upload.id))) == 0


async def _raw_request(api, head: str, body_parts: list[bytes], *, timeout: float = 15) -> bytes:
    """Send a request head and some body, never finishing it, and read the answer.

    If the server waited for the whole body it would never answer: the test then
    fails on the timeout instead of hanging.
    """
    host, port = "127.0.0.1", api.server.bound_port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode("latin-1"))
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), timeout)
        return data
    finally:
        writer.close()


def _head(api, method: str, path: str, headers: dict[str, str]) -> str:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{api.server.bound_port}", f"X-API-Key: {api.keys['acme']}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"


def _status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.strip() else {}


async def test_413_on_declared_length_without_reading_the_body(db_url, make_api):
    api = await make_api(db_url)  # the default limit, 40 MB
    queue = await api.queue_id("invoices")
    fifty_mb = 50 * 1024 * 1024
    for path, ctype in (
        (f"/api/v1/uploads?queue={queue}", "multipart/form-data; boundary=xyz"),
        (f"/api/v1/uploads/big.pdf?queue={queue}", "application/pdf"),
    ):
        head = _head(api, "POST", path, {"Content-Type": ctype, "Content-Length": str(fifty_mb)})
        raw = await _raw_request(api, head, [b"--xyz\r\n" + b"a" * 1000])
        status, body = _status_and_body(raw)
        assert status == 413 and body["code"] == "payload_too_large", raw[:300]
        assert b"connection: close" in raw.lower()
    # With Expect: 100-continue (curl sends it for large bodies) the client hears
    # 413 before sending a byte of the body: no "100 Continue" comes first.
    head = _head(
        api,
        "POST",
        f"/api/v1/uploads/big.pdf?queue={queue}",
        {"Content-Type": "application/pdf", "Content-Length": str(fifty_mb), "Expect": "100-continue"},
    )
    raw = await _raw_request(api, head, [])
    assert raw.startswith(b"HTTP/1.1 413"), raw[:300]


async def test_413_on_a_chunked_body_that_goes_over_the_limit(db_url, make_api):
    limit = 64 * 1024
    api = await make_api(db_url, max_upload_size=limit)
    queue = await api.queue_id("invoices")

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    boundary = "xyz"
    part_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n'
        "Content-Type: application/pdf\r\n\r\n"
    ).encode()
    for path, ctype, first in (
        (f"/api/v1/uploads?queue={queue}", f"multipart/form-data; boundary={boundary}", part_head),
        (f"/api/v1/uploads/big.pdf?queue={queue}", "application/pdf", b""),
    ):
        head = _head(api, "POST", path, {"Content-Type": ctype, "Transfer-Encoding": "chunked"})
        # Over the limit by a little, and the body never ends (no last chunk).
        parts = [chunk(first)] if first else []
        parts += [chunk(b"b" * 16384) for _ in range(5)]
        raw = await _raw_request(api, head, parts)
        status, body = _status_and_body(raw)
        assert status == 413 and body["code"] == "payload_too_large", raw[:300]
    # Exactly the limit is accepted (raw body), chunked.
    async with api.client() as c:

        async def gen():
            for _ in range(4):
                yield b"c" * (limit // 4)

        r = await c.post(f"/api/v1/uploads/exact.bin?queue={queue}", content=gen())
        assert r.status_code == 202, r.text
        doc = (await c.get(r.json()["documents"][0])).json()
        assert doc["size"] == limit
    async with api.rt.sessions() as s:
        from sqlalchemy import func, select

        from gateway.storage import models as m

        assert await s.scalar(select(func.count(m.Upload.id))) == 1  # nothing of the refused ones


async def test_move_upload_to_another_queue_moves_its_tasks(db_url, api):
    result = await api.ingest_files("invoices", n=2)
    upload_id = result.uploads[0].id
    receipts = await api.queue_id("receipts")
    async with api.client() as c:
        r = await c.put(f"/api/v1/uploads/{upload_id}/move", json={"queue": f"{api.base}/api/v1/queues/{receipts}"})
        assert r.status_code == 200, r.text
        assert r.json()["queue_name"] == "receipts"
        for task_url in r.json()["tasks"]:
            assert (await c.get(task_url)).json()["queue"] == f"{api.base}/api/v1/queues/{receipts}"
        listed = (await c.get(f"/api/v1/tasks?queue={receipts}")).json()["results"]
        assert len(listed) == 2
        r = await c.put(f"/api/v1/uploads/{upload_id}/move", json={"queue": 999999})
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = await c.put("/api/v1/uploads/999999/move", json={"queue": receipts})
        assert (r.status_code, r.json()["code"]) == (404, "not_found")


async def test_upload_lists_page_with_next_and_previous_links_and_filter(db_url, api):
    ids = [(await api.ingest_files("invoices")).uploads[0].id for _ in range(5)]
    other = (await api.ingest_files("receipts")).uploads[0].id
    invoices = await api.queue_id("invoices")
    async with api.client() as c:
        seen, pages = [], []
        url = f"/api/v1/uploads?page_size=2&queue={invoices}"
        while url:
            r = await c.get(url)
            assert r.status_code == 200, r.text
            page = r.json()
            pages.append(page)
            seen += [u["id"] for u in page["results"]]
            url = page["pagination"]["next"]
            if url:
                assert url.startswith(api.base) and f"queue={invoices}" in url and "page_size=2" in url
        assert seen == sorted(ids, reverse=True)
        assert [len(p["results"]) for p in pages] == [2, 2, 1]
        assert pages[0]["pagination"]["previous"] is None
        # previous of the last page is the middle page
        back = (await c.get(pages[2]["pagination"]["previous"])).json()
        assert [u["id"] for u in back["results"]] == [u["id"] for u in pages[1]["results"]]
        assert back["pagination"]["next"] is not None
        # filters: status, created range
        all_ids = [u["id"] for u in (await c.get("/api/v1/uploads?page_size=100")).json()["results"]]
        assert set(all_ids) == {*ids, other}
        assert (await c.get("/api/v1/uploads?status=completed")).json()["results"] == []
        assert len((await c.get("/api/v1/uploads?status=processing&page_size=100")).json()["results"]) == 6
        future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
        r = await c.get("/api/v1/uploads", params={"created_after": future})
        assert r.status_code == 200 and r.json()["results"] == []
        r = await c.get("/api/v1/uploads", params={"created_before": future, "page_size": 100})
        assert len(r.json()["results"]) == 6
        # tasks list pages too, and filters by upload
        r = (await c.get(f"/api/v1/tasks?upload={ids[0]}")).json()
        assert len(r["results"]) == 1 and r["results"][0]["upload"].endswith(f"/uploads/{ids[0]}")
        r = (await c.get("/api/v1/tasks?page_size=4&status=queued")).json()
        assert len(r["results"]) == 4 and "status=queued" in r["pagination"]["next"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_http_component_starts_and_stops_within_the_daemon(db_url, make_settings, tmp_path):
    """`gateway serve` builds the "http" component from [http] and answers on its port."""
    import httpx

    from gateway.daemon import serve
    from tests.conftest import free_port

    port = free_port()
    settings = make_settings(db_url, http={"enabled": True, "port": port, "base_url": f"http://127.0.0.1:{port}"})
    stop = asyncio.Event()
    daemon = asyncio.create_task(serve(settings, stop_event=stop))
    async with httpx.AsyncClient() as c:
        for _ in range(200):
            try:
                r = await c.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
        assert r.status_code == 200 and r.json()["status"] == "ok"
    stop.set()
    assert await asyncio.wait_for(daemon, 30) == 0
    async with httpx.AsyncClient() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/healthz")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_stop_lets_an_upload_in_flight_finish(db_url, make_api):
    import httpx

    api = await make_api(db_url)
    queue = await api.queue_id("invoices")
    release = asyncio.Event()

    async def body():
        yield b"first part, "
        await release.wait()
        yield b"second part"

    async with api.client() as c:
        request = asyncio.create_task(c.post(f"/api/v1/uploads/slow.txt?queue={queue}", content=body()))
        state = api.server._server.server_state
        while not state.tasks:  # the request is inside the app, reading its body
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(api.server.stop(30))
        # The listener closes: new connections are refused while the upload goes on.
        async with httpx.AsyncClient() as fresh:
            while True:
                try:
                    await fresh.get(f"{api.base}/healthz")
                except httpx.ConnectError:
                    break
                await asyncio.sleep(0.02)
        assert not request.done()
        release.set()
        r = await request
        assert r.status_code == 202, r.text
        await stopping
    async with api.rt.sessions() as s:
        from sqlalchemy import select

        from gateway.storage import models as m

        doc = (await s.scalars(select(m.Document))).one()
        assert doc.size == len(b"first part, second part")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_requests_beyond_the_concurrency_bound_get_503_in_the_error_format(db_url, make_api, monkeypatch):
    from gateway.api import app as app_module

    monkeypatch.setattr(app_module, "MAX_IN_FLIGHT", 1)  # read when the first request builds the stack
    api = await make_api(db_url)
    queue = await api.queue_id("invoices")
    release = asyncio.Event()

    async def body():
        yield b"part"
        await release.wait()

    async with api.client() as c, api.client() as other:
        slow = asyncio.create_task(c.post(f"/api/v1/uploads/slow.txt?queue={queue}", content=body()))
        state = api.server._server.server_state
        while not state.tasks:
            await asyncio.sleep(0.01)
        r = await other.get("/api/v1/queues")
        assert r.status_code == 503 and r.json() == {"detail": "server busy; retry later", "code": "error"}
        assert r.headers["Retry-After"] == "1"
        release.set()
        assert (await slow).status_code == 202
        assert (await other.get("/api/v1/queues")).status_code == 200


async def test_an_eml_upload_is_opened_as_an_email(db_url, api):
    from tests.conftest import FIXTURES

    raw = (FIXTURES / "apple_mail_fragments.eml").read_bytes()
    queue = await api.queue_id("invoices")
    async with api.client() as c:
        r = await c.post(f"/api/v1/uploads?queue={queue}", files={"file": ("forwarded.eml", raw, "message/rfc822")},
                         data={"metadata": '{"ticket": 7}'})
        assert r.status_code == 202, r.text
        u = r.json()
        assert u["email"] and u["name"] == "Invoice 88 (Apple Mail)" and u["metadata"] == {"ticket": 7}
        docs = [(await c.get(d)).json() for d in u["documents"]]
        assert [d["kind"] for d in docs] == ["body", "attachment", "attachment", "alternative"]
        assert len(u["tasks"]) == 3  # body, scan.png, invoice-88.pdf: not the .eml itself
        email = (await c.get(u["email"])).json()
        assert email["source"] == "http" and len(email["parts"]) == 6
        # The same mail again (raw body this time): the same upload, nothing new.
        again = await c.post(f"/api/v1/uploads/again.eml?queue={queue}", content=raw)
        assert again.status_code == 202 and again.json()["url"] == u["url"]
        # Asked not to open it: the .eml is one task of a plain upload.
        kept = await c.post(f"/api/v1/uploads/kept.eml?queue={queue}&open_email=false", content=raw)
        k = kept.json()
        assert k["email"] is None and len(k["tasks"]) == 1
        # Named .eml but not a mail: a plain file.
        plain = await c.post(f"/api/v1/uploads/notes.eml?queue={queue}", content=b"just some notes, no headers")
        assert plain.json()["email"] is None
