"""What an upload stores and serves back: the type when the client declared none
that means anything, empty files, and download names in any script."""

from __future__ import annotations

import email.message
import email.utils
from urllib.parse import quote

import pytest

PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


async def _document(c, upload: dict) -> dict:
    return (await c.get(upload["documents"][0])).json()


@pytest.mark.parametrize(
    "declared",
    [
        "application/x-www-form-urlencoded",  # what `curl --data-binary @x.pdf` sends
        "application/octet-stream",
        "Application/Octet-Stream; charset=binary",
        None,
    ],
)
async def test_raw_upload_with_an_uninformative_type_is_stored_as_sniffed(db_url, api, declared):
    queue = await api.queue_id("invoices")
    async with api.client() as c:
        # httpx adds no Content-Type of its own for raw bytes.
        headers = {"Content-Type": declared} if declared else {}
        r = await c.post(f"/api/v1/uploads/x.pdf?queue={queue}", content=PDF, headers=headers)
        assert r.status_code == 202, r.text
        doc = await _document(c, r.json())
        assert (doc["content_type"], doc["sniffed_type"]) == ("application/pdf", "application/pdf")
        content = await c.get(doc["content"])
        assert content.headers["content-type"] == "application/pdf" and content.content == PDF


async def test_raw_upload_keeps_a_specific_declared_type_and_unknown_bytes_stay_generic(db_url, api):
    queue = await api.queue_id("invoices")
    async with api.client() as c:
        # A real declaration is the client's word, even when the bytes say otherwise.
        r = await c.post(f"/api/v1/uploads/x.xml?queue={queue}", content=PDF, headers={"Content-Type": "application/xml"})
        assert (await _document(c, r.json()))["content_type"] == "application/xml"
        # Nothing recognisable: generic, never the form-urlencoded label.
        r = await c.post(
            f"/api/v1/uploads/x.bin?queue={queue}",
            content=bytes(range(256)) * 4,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 202, r.text
        assert (await _document(c, r.json()))["content_type"] == "application/octet-stream"


async def test_multipart_file_with_a_generic_type_is_stored_as_sniffed(db_url, api):
    queue = await api.queue_id("invoices")
    async with api.client() as c:
        r = await c.post(
            f"/api/v1/uploads?queue={queue}",
            files=[("files", ("scan", PNG, "application/octet-stream")), ("files", ("a.pdf", PDF, "application/pdf"))],
        )
        assert r.status_code == 202, r.text
        types = [(await c.get(u)).json()["content_type"] for u in r.json()["documents"]]
        assert types == ["image/png", "application/pdf"]


async def test_empty_files_are_400_and_create_nothing(db_url, api):
    queue = await api.queue_id("invoices")
    async with api.client() as c:
        before = (await c.get("/api/v1/uploads")).json()["results"]
        answers = [
            await c.post(f"/api/v1/uploads/empty.pdf?queue={queue}", content=b"", headers={"Content-Type": "application/pdf"}),
            await c.post(f"/api/v1/uploads?queue={queue}", files={"file": ("empty.pdf", b"", "application/pdf")}),
            # One empty file among good ones spoils the upload: no partial upload.
            await c.post(
                f"/api/v1/uploads?queue={queue}",
                files=[("files", ("a.pdf", PDF, "application/pdf")), ("files", ("b.pdf", b"", "application/pdf"))],
            ),
        ]
        for r in answers:
            assert (r.status_code, r.json()["code"]) == (400, "bad_request"), r.text
            assert set(r.json()) == {"detail", "code"} and "empty" in r.json()["detail"]
        assert (await c.get("/api/v1/uploads")).json()["results"] == before


def _disposition(header: str) -> tuple[str, str | None]:
    """(filename=, decoded filename*) read by the stdlib's RFC 2231 parser."""
    msg = email.message.Message()
    msg["Content-Disposition"] = header
    # The parser turns filename* into a second "filename" whose value is a
    # (charset, language, text) triple; get_filename() would pick the first.
    params = [v for k, v in msg.get_params(header="content-disposition") if k == "filename"]
    plain = [v.strip('"') for v in params if isinstance(v, str)]
    exact = [email.utils.collapse_rfc2231_value(v) for v in params if isinstance(v, tuple)]
    assert len(plain) == 1 and len(exact) <= 1, header
    return plain[0], exact[0] if exact else None


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("facture 🧾.pdf", "facture.pdf"),
        ("請求書.pdf", None),  # nothing of the name is ASCII: document-<id>.pdf
        ("Rechnung März №7.pdf", "Rechnung Marz No7.pdf"),
    ],
)
async def test_download_carries_the_exact_name_and_an_ascii_fallback(db_url, api, name, fallback):
    queue = await api.queue_id("invoices")
    async with api.client() as c:
        r = await c.post(f"/api/v1/uploads/{quote(name)}?queue={queue}", content=PDF, headers={"Content-Type": "application/pdf"})
        assert r.status_code == 202, r.text
        doc = await _document(c, r.json())
        assert doc["original_filename"] == name
        r = await c.get(doc["content"])
        header = r.headers["content-disposition"]
        assert header.isascii() and header.startswith("attachment; ")
        plain, exact = _disposition(header)
        assert exact == name
        assert plain == (fallback or f"document-{doc['id']}.pdf")


async def test_download_of_a_name_unsafe_as_a_file_name_offers_the_stored_one(db_url, api):
    queue = await api.queue_id("invoices")
    async with api.client() as c:
        for name in ("..\\..\\boot.ini", "invoice\u202efdp.exe", 'a "quoted" name.pdf'):
            r = await c.post(f"/api/v1/uploads/{quote(name, safe='')}?queue={queue}", content=PDF)
            assert r.status_code == 202, r.text
            doc = await _document(c, r.json())
            plain, exact = _disposition((await c.get(doc["content"])).headers["content-disposition"])
            assert (exact or plain) == doc["filename"] != name
            assert "\\" not in plain and "\u202e" not in (exact or "")
