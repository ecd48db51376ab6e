"""The webhook's metadata part is typed JSON and still a plain form field."""

from __future__ import annotations

import email
import email.policy
import json

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from .test_webhook import make_job, processor, receiver  # noqa: F401  (receiver is a fixture)


async def test_metadata_part_is_declared_application_json(receiver, tmp_path):  # noqa: F811
    p = processor(receiver.url)
    try:
        await p.run(make_job(tmp_path, filename="facture 7.pdf"))
    finally:
        await p.close()
    [req] = receiver.requests
    msg = email.message_from_bytes(
        f"Content-Type: {req.headers['content-type']}\r\n\r\n".encode() + req.body, policy=email.policy.HTTP
    )
    parts = {part.get_param("name", header="content-disposition"): part for part in msg.iter_parts()}
    # The raw header, not get_content_type(): that answers text/plain for a part without one.
    assert parts["metadata"]["Content-Type"] == "application/json"
    assert parts["metadata"].get_param("filename", header="content-disposition") is None
    assert parts["file"]["Content-Type"] == "application/pdf"

    # A receiver built on a common form parser (Starlette's) gets metadata as a
    # text field, not an uploaded file, and the document as a file.
    async def body():
        yield req.body

    form = await MultiPartParser(Headers({"content-type": req.headers["content-type"]}), body()).parse()
    assert isinstance(form["metadata"], str) and json.loads(form["metadata"])["task"] == {"id": 7}
    assert isinstance(form["file"], UploadFile) and await form["file"].read() == b"%PDF-1.7 invoice"
