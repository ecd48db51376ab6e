"""The parse rules of issue 13, each on a fixture of our own (no corpus needed)."""

from __future__ import annotations

import io
import zipfile

import pytest

from gateway.ledger import OUTCOMES, SKIP_REASONS
from gateway.parse import parse_message
from tests.conftest import FIXTURES
from tests.test_charsets import EXPECTED, EXPECTED_BODIES


def parse(name: str):
    return parse_message((FIXTURES / name).read_bytes())


def ledger(mail) -> list[tuple[str, str, str | None]]:
    return [(e.path, e.outcome, e.reason) for e in mail.parts]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_raw_8bit_and_mislabelled_names_and_subjects(name):
    mail = parse(name)
    assert mail.subject == EXPECTED[name]["subject"]
    names = [d.original_filename for d in mail.documents if d.kind == "attachment"]
    assert names == [EXPECTED[name]["filename"]]
    assert EXPECTED_BODIES[name] in mail.documents[0].data.decode("utf-8")


def test_uuencoded_file_in_a_text_body_becomes_a_document():
    mail = parse("uuencoded_in_body.eml")
    body, csv = mail.documents
    assert csv.kind == "attachment" and csv.filename == "invoices.csv" and csv.data.count(b"\n") >= 2
    assert b"begin 644" not in body.data and body.data.strip()
    assert ledger(mail) == [("1", "body", None), ("1#uu1", "document", None)]
    assert mail.parts[1].document == 1 and mail.parts[0].document == 0


def test_apple_mail_fragments_are_all_in_the_body_in_order():
    mail = parse("apple_mail_fragments.eml")
    html = mail.documents[0].data.decode()
    assert html.index("the invoice is below") < html.index("Sent from my iPhone") < html.index("Jane Doe")
    text = next(d for d in mail.documents if d.kind == "alternative").data.decode()
    assert text.index("the invoice is below") < text.index("Sent from my iPhone") < text.index("Jane Doe")
    assert [d.filename for d in mail.documents if d.kind == "attachment"] == ["scan.png", "invoice-88.pdf"]


def test_report_parts_keep_their_bytes_and_external_body_is_skipped():
    mail = parse("delivery_status_report.eml")
    status = next(d for d in mail.documents if d.filename == "status.txt")
    assert b"Status: 5.1.1" in status.data and b"Reporting-MTA: dns; mx.example.com" in status.data
    mdn = next(d for d in mail.documents if d.filename == "mdn.txt")
    assert b"Disposition: manual-action/MDN-sent-manually; displayed" in mdn.data
    assert ledger(mail)[-1] == ("5", "skipped", "external_body")


def test_empty_parts_are_skipped_not_documents():
    mail = parse("empty_parts.eml")
    assert ("2", "skipped", "empty") in ledger(mail) and ("3", "skipped", "empty") in ledger(mail)
    assert [d.filename for d in mail.documents[1:]] == ["real.pdf"]


def test_attachment_only_mail_has_a_blank_body():
    mail = parse("attachment_only.eml")
    assert mail.documents[0].blank and ("1", "skipped", "empty") in ledger(mail)


def test_signed_and_encrypted_structure_parts_are_skipped_with_reasons():
    assert ledger(parse("pgp_signed.eml")) == [("0", "container", None), ("1", "body", None), ("2", "skipped", "signature")]
    assert ("1", "skipped", "pgp_control") in ledger(parse("pgp_encrypted.eml"))


def test_html_only_mail_has_a_text_rendering():
    raw = (b"From: a@example.com\nTo: b@example.com\nSubject: h\nContent-Type: text/html\n\n"
           b"<html><head><style>p{}</style></head><body><p>Total: 42 &euro;</p><p>Thanks</p></body></html>")
    mail = parse_message(raw)
    assert [d.kind for d in mail.documents] == ["body", "alternative"]
    assert mail.documents[1].data.decode() == "Total: 42 \u20ac\n\nThanks"


def test_zip_attachment_holding_a_pdf_is_sniffed_as_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("invoice.pdf", b"%PDF-1.4\n%%EOF\n")
    import base64

    raw = (
        "From: a@example.com\nTo: b@example.com\nSubject: z\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nsee zip\n'
        "--b\nContent-Type: application/octet-stream; name=docs.zip\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(buf.getvalue()).decode() + "--b--\n"
    ).encode()
    doc = parse_message(raw).documents[1]
    assert doc.sniffed_type == "application/zip"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.eml")), ids=lambda p: p.name)
def test_every_fixture_has_a_complete_ledger(path):
    mail = parse_message(path.read_bytes())
    assert mail.parts
    for e in mail.parts:
        assert e.outcome in OUTCOMES
        assert (e.outcome == "skipped") == (e.reason in SKIP_REASONS) or e.reason == "depth_limit"
        if e.outcome in ("document", "inline"):
            assert mail.documents[e.document].data
