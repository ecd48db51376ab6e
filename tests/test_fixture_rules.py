"""Parse rules that only the external corpus used to exercise, kept covered by
the project's own fixtures so that a bare clone (no ../shared/corpus) still
checks them.

Each fixture in ``tests/fixtures/emails/`` named here is hand-written for one
rule: the corpus messages it stands in for are noted beside each test. The same
structural checks the corpus test makes on every message (tests/test_parse.py
``test_corpus_message``) are made on these fixtures too, with the attachment
count checked against the independently written walk there.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.parse import message_fingerprint, parse_message
from gateway.storage import models as m
from tests.conftest import FIXTURES
from tests.test_parse import assert_parse_invariants

PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"

RULE_FIXTURES = [
    "unquoted_boundary_with_equals.eml",
    "folded_boundary_param.eml",
    "pgp_encrypted.eml",
    "forwarded_message_global.eml",
    "calendar_invite.eml",
    "multipart_without_boundary.eml",
    "cr_only_line_ends.eml",
    "utf16_body.eml",
]

# As in the corpus test: policy.default (the independent walk) stops an
# unquoted boundary at its first "=", finds no parts and so counts none; that
# disagreement is the reason the fixture exists.
COUNT_EXCEPTIONS = {"unquoted_boundary_with_equals.eml"}


def parse(name: str):
    return parse_message((FIXTURES / name).read_bytes())


def kinds(mail) -> list[str]:
    return [d.kind for d in mail.documents]


@pytest.mark.parametrize("name", RULE_FIXTURES)
def test_fixture_holds_the_corpus_invariants(name):
    assert_parse_invariants((FIXTURES / name).read_bytes(), count_exception=name in COUNT_EXCEPTIONS)


def test_unquoted_boundary_containing_equals_is_read_whole():
    """Outlook/JavaMail style ``boundary=----=_Part_...`` without quotes, at
    two levels (corpus: ruby-mail raw_email_with_binary_encoded, spamassassin
    spam_utf16). Read to the end of the value, as mail clients do, so the
    parts are found."""
    mail = parse("unquoted_boundary_with_equals.eml")
    assert kinds(mail) == ["body", "attachment", "alternative"]
    body, pdf, text = mail.documents
    assert (body.content_type, body.data) == ("text/html", b"<p>Invoice 3141 is attached.</p>")
    assert (text.content_type, text.data) == ("text/plain", b"Invoice 3141 is attached.")
    assert (pdf.filename, pdf.data, pdf.sniffed_type) == ("invoice-3141.pdf", PDF, "application/pdf")
    assert not mail.defects


def test_folded_boundary_parameter_is_unfolded():
    """A quoted boundary folded onto a second header line (corpus: mime-tools
    multi-simple, stalwart thirdparty_012): the line break is folding, not
    part of the boundary (RFC 5322 2.2.3), so the delimiter lines match."""
    mail = parse("folded_boundary_param.eml")
    assert kinds(mail) == ["body", "attachment"]
    assert mail.documents[0].data == b"Your statement for June 2024 is attached."
    assert (mail.documents[1].filename, mail.documents[1].data) == ("statement-2024-06.pdf", PDF)
    assert not mail.defects


def test_pgp_encrypted_control_part_is_structure_the_payload_an_attachment():
    """multipart/encrypted (RFC 3156; corpus: the pgp messages): its first part
    ("Version: 1") belongs to the structure, nobody attached it; the encrypted
    payload is the one file."""
    mail = parse("pgp_encrypted.eml")
    assert kinds(mail) == ["body", "attachment"]
    assert mail.documents[0].data == b""
    payload = mail.documents[1]
    assert (payload.filename, payload.content_type) == ("encrypted.asc", "application/octet-stream")
    assert payload.data.startswith(b"-----BEGIN PGP MESSAGE-----")


def test_message_global_is_opened_like_message_rfc822():
    """A forwarded message/global (RFC 6532: UTF-8 headers) is a forwarded
    message: stored as an .eml named after its (UTF-8) subject and opened,
    its body and files nested under it."""
    mail = parse("forwarded_message_global.eml")
    assert kinds(mail) == ["body", "forwarded", "nested", "nested"]
    fwd, inner_body, pdf = mail.documents[1:]
    assert (fwd.content_type, fwd.filename, fwd.depth, fwd.parent) == (
        "message/rfc822", "Rechnung März 2024.eml", 0, None)
    assert fwd.data.startswith("From: Müller Bürobedarf".encode())
    assert (inner_body.parent, inner_body.depth, inner_body.data) == (1, 1, "Anbei die Rechnung für März.".encode())
    assert (pdf.filename, pdf.parent, pdf.depth, pdf.data) == ("Rechnung-2024-03.pdf", 1, 1, PDF)
    assert mail.documents[0].data == b"Forwarding the March invoice, see the attached mail."
    [entry] = [e for e in mail.parts if e.path == "2"]
    assert (entry.content_type, entry.outcome) == ("message/global", "container")


def test_calendar_part_is_a_document_like_the_ics_file():
    """An invitation (corpus: rspamd alt-html-calendar and ics, postal-mime
    calendar-event): only text/plain and text/html are renderings of the body;
    the text/calendar part inside multipart/alternative is a document, named
    by its type, as is the invite.ics sent as an attachment."""
    mail = parse("calendar_invite.eml")
    assert kinds(mail) == ["body", "attachment", "attachment", "alternative"]
    body, event, ics, text = mail.documents
    assert (body.content_type, text.content_type) == ("text/html", "text/plain")
    assert (event.filename, event.content_type) == ("attachment-1.ics", "text/calendar")
    assert (ics.filename, ics.content_type) == ("invite.ics", "application/ics")
    assert event.data == ics.data and ics.data.startswith(b"BEGIN:VCALENDAR\r\n")


def test_multipart_without_boundary_is_shown_as_text():
    """A multipart type with no boundary parameter (corpus: rspamd
    external_relay, stalwart malformed_017): nothing can be split, so the
    whole text is the body, readable, and the defect is recorded."""
    mail = parse("multipart_without_boundary.eml")
    assert kinds(mail) == ["body"]
    body = mail.documents[0]
    assert body.content_type == "text/plain"
    assert body.data.startswith(b"--lost\nContent-Type: text/plain\n\nInvoice 404: amount due 99.00 EUR.")
    assert any(d.startswith("NoBoundaryInMultipartDefect") for d in mail.defects), mail.defects


def test_bare_cr_line_ends_are_line_ends():
    """Classic Mac line ends, CR only (corpus: sisimai mac_*): headers,
    boundaries and base64 are read as with LF."""
    raw = (FIXTURES / "cr_only_line_ends.eml").read_bytes()
    assert b"\n" not in raw  # the fixture is what it says
    mail = parse_message(raw)
    assert kinds(mail) == ["body", "attachment"]
    assert mail.subject == "Invoice 1984" and mail.message_id == "cr-only-1984@classic.example"
    assert mail.documents[0].data == b"Invoice 1984 attached."
    assert (mail.documents[1].filename, mail.documents[1].data) == ("invoice-1984.pdf", PDF)
    as_lf = parse_message(raw.replace(b"\r", b"\n"))
    assert mail.fingerprint == as_lf.fingerprint == message_fingerprint(raw.replace(b"\r", b"\r\n"))


def test_utf16_body_is_decoded_to_utf8():
    """A UTF-16 text body (corpus: spamassassin spam_utf16): decoded and
    stored as UTF-8, without the byte-order mark."""
    mail = parse("utf16_body.eml")
    body = mail.documents[0]
    assert body.content_type == "text/plain"
    assert body.data == "Dear customer,\r\nplease find statement 88 attached: 1\u00a0250,00 €.\r\n".encode()
    assert not mail.defects


async def test_same_message_with_other_line_ends_is_a_duplicate(runtime):
    """sisimai ships CRLF and bare-CR copies of its messages, which the corpus
    ingest test counted as duplicates: the same message delivered with other
    line ends makes no second email or upload."""
    lf = (FIXTURES / "cr_only_line_ends.eml").read_bytes().replace(b"\r", b"\n")
    first = await runtime.ingestor.ingest(lf, "replay", queues=["invoices"])
    assert first.status == "created"
    for raw in (lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")):
        again = await runtime.ingestor.ingest(raw, "replay", queues=["invoices"])
        assert again.status == "duplicate" and again.upload_ids == first.upload_ids
    async with runtime.sessions() as s:
        assert len((await s.scalars(select(m.Email))).all()) == 1
