"""gateway.parse: raw bytes → ParsedMail. Plain sync tests, no database."""

from __future__ import annotations

import base64
import io
import itertools
import re
import time
import zipfile
from datetime import datetime, timezone
from email import policy
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from gateway import parse
from gateway.parse import (
    MAX_NESTING_DEPTH,
    FINGERPRINT_HEADERS,
    ParsedDocument,
    message_fingerprint,
    parse_message,
    sanitize_filename,
    sniff_content_type,
)

from tests.conftest import CORPUS, requires_corpus

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "emails"
CORPUS_FILES = sorted(CORPUS.rglob("*.eml")) if CORPUS.is_dir() else []

PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
PDF_B64 = base64.encodebytes(PDF).decode()
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAC0lEQVR4nGNgAAIAAAUAAXpeqz8AAAAASUVORK5CYII="
)


def fixture(name: str):
    return parse_message((FIXTURES / name).read_bytes())


def kinds(mail) -> list[str]:
    return [d.kind for d in mail.documents]


_boundaries = itertools.count()


def mixed(*parts: str, headers: str = "Subject: test\n", ctype: str = "multipart/mixed") -> bytes:
    """A multipart message from part sources (each: headers, blank line, body)."""
    bound = f"BOUND-{next(_boundaries)}"
    body = "".join(f"--{bound}\n{p.strip(chr(10))}\n" for p in parts)
    return (
        f"From: a@example.com\nTo: b@example.com\n{headers}MIME-Version: 1.0\n"
        f'Content-Type: {ctype}; boundary="{bound}"\n\n{body}--{bound}--\n'
    ).encode()


TEXT = "Content-Type: text/plain; charset=utf-8\n\nhello"
PDF_PART = (
    "Content-Type: application/pdf\nContent-Disposition: attachment; filename=\"a.pdf\"\n"
    f"Content-Transfer-Encoding: base64\n\n{PDF_B64}"
)


# --- corpus ----------------------------------------------------------------

REPORT_PARTS = {
    "message/delivery-status", "message/global-delivery-status", "message/disposition-notification",
    "message/global-disposition-notification", "message/feedback-report", "message/global-headers",
    "message/external-body",
}

# Files where the independent count must differ, each with its reason.
CORPUS_EXCEPTIONS = {
    # Unquoted boundary containing "=" (boundary=----=_Part_...): policy.default
    # stops the token at "=" and finds no parts; compat32 (gateway.parse), like
    # mail clients, reads the whole value and sees the parts.
    "ruby-mail/mime_emails_raw_email_with_binary_encoded.eml",
}


def independent_counts(raw: bytes) -> tuple[int, int]:
    """(attachments, inline) of the top-level message by the contract's rules.

    Written apart from gateway.parse on purpose, so that both can be wrong only
    in the same way by chance: policy.default (EmailMessage, its own header
    parser and RFC 2231/2047 handling) instead of compat32, recursion instead
    of an explicit stack, cid references searched in `get_content()` text.
    The rules, as the contract states them:

    * leaves are the non-multipart parts; message/* parts are not entered;
    * the signature of multipart/signed and the control part of
      multipart/encrypted are structure, not files;
    * an empty part (no content; whitespace for text) is nothing;
    * message/rfc822 and message/global are attachments (opened or not);
    * detached signatures and message/external-body are nothing;
    * a part whose Content-ID an HTML part of the message references as
      cid: is inline;
    * else a part with a filename or an attachment disposition is an attachment;
    * else text/plain and text/html (and a multipart that could not be split)
      are body content; anything else is an attachment (an image the HTML does
      not show was attached by a person, a delivery-status record, a calendar).
    """
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    leaves = []

    def visit(part, control):
        if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
            sub = part.get_content_subtype()
            for i, child in enumerate(part.get_payload()):
                visit(child, (sub, i) in (("signed", 1), ("encrypted", 0)))
        else:
            leaves.append((part, control))

    visit(msg, False)

    def attached(p):
        try:
            return p.get_content_disposition() == "attachment" or bool(p.get_filename())
        except Exception:  # policy.default can choke on a broken parameter list
            return False

    refs = set()
    for html, c in leaves:
        if html.get_content_type() != "text/html":
            continue
        text = (html.get_payload(decode=True) or b"").decode("latin-1")
        refs |= {unquote(r).strip("<>").lower() for r in re.findall(r"cid:([^\s\"'<>()]+)", text, re.I)}
    attachments = inline = 0
    for p, control in leaves:
        ctype = p.get_content_type()
        cid = str(p.get("content-id") or "").strip().strip("<>").strip().lower()
        if control or ctype in SIGNATURES or ctype == "message/external-body":
            continue
        if ctype in ("message/rfc822", "message/global"):
            attachments += bool(_content(p).strip())
        elif not (_content(p).strip() if p.get_content_maintype() == "text" else _content(p)):
            continue
        elif cid and cid in refs:
            inline += 1
        elif attached(p):
            attachments += 1
        elif ctype not in ("text/plain", "text/html") and p.get_content_maintype() != "multipart":
            attachments += 1
    return attachments, inline


SIGNATURES = {"application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature"}


def _content(part) -> bytes:
    if part.get_content_maintype() == "message":
        payload = part.get_payload()
        if isinstance(payload, list):
            return b"".join(m.as_bytes() for m in payload)
    data = part.get_payload(decode=True)
    if data is None:
        payload = part.get_payload()
        data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    return data


@requires_corpus
def test_corpus_is_there():
    listed = (CORPUS / "index.tsv").read_text().count("\n") - 1
    assert len(CORPUS_FILES) == listed == 816


def assert_safe(name: str):
    assert name and "/" not in name and "\\" not in name and not name.startswith(".")
    assert len(name.encode("utf-8")) <= 200
    assert not any(ord(c) < 32 for c in name)


@requires_corpus
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_message(path):
    rel = str(path.relative_to(CORPUS))
    assert_parse_invariants(path.read_bytes(), count_exception=rel in CORPUS_EXCEPTIONS)


def assert_parse_invariants(raw: bytes, *, count_exception: bool = False) -> None:
    """What every message must give: the corpus test's checks, also made on
    our own fixtures (tests/test_fixture_rules.py)."""
    mail = parse_message(raw)
    assert mail.documents[0].kind == "body"
    assert not any(d.startswith(("unparseable", "part ")) and "skipped" in d for d in mail.defects), mail.defects
    for i, doc in enumerate(mail.documents):
        assert_safe(doc.filename)
        assert doc.kind in DOC_KINDS and (doc.kind == "body") == (i == 0)
        if doc.kind == "inline":
            assert mail.documents[doc.parent].kind in ("body", "nested")
        if doc.kind == "nested" and doc.parent is not None:
            container = mail.documents[doc.parent]
            assert doc.parent < i and container.content_type == "message/rfc822"
            assert container.kind == "forwarded"
            assert doc.depth == container.depth + 1 <= MAX_NESTING_DEPTH
        if doc.kind in ("attachment", "nested", "inline", "forwarded") and doc.part is not None:
            assert doc.data, f"{doc.filename}: an empty document"  # (a forwarded mail's own body may be)
    assert_ledger_complete(raw, mail)
    assert len(mail.fingerprint) == 64
    top = [d for d in mail.documents if d.depth == 0 and "#uu" not in (d.part or "")]
    ours = (sum(d.kind in ("attachment", "forwarded") for d in top), sum(d.kind == "inline" for d in top))
    if count_exception:
        assert ours != independent_counts(raw), "exception no longer needed"
    else:
        assert ours == independent_counts(raw)


DOC_KINDS = ("body", "alternative", "inline", "attachment", "forwarded", "nested")


def independent_leaves(raw: bytes) -> dict[str, str]:
    """{path: content type} of the top-level message's leaves (IMAP
    numbering, message/* not entered), by policy.default and recursion."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    out: dict[str, str] = {}

    def visit(part, path, base, level):
        if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
            if level >= 60:
                return
            for i, child in enumerate(part.get_payload(), 1):
                child_path = f"{base}.{i}" if base else str(i)
                visit(child, child_path, child_path, level + 1)
        else:
            out[path] = part.get_content_type()

    visit(msg, "1", "", 0)
    return out


def assert_ledger_complete(raw: bytes, mail) -> None:
    from gateway.ledger import OUTCOMES, SKIP_REASONS

    paths = [e.path for e in mail.parts]
    assert len(paths) == len(set(paths)), "a part listed twice"
    by_path = {e.path: e for e in mail.parts}
    for e in mail.parts:
        assert e.outcome in OUTCOMES, e
        if e.outcome == "skipped":
            assert e.reason in SKIP_REASONS, e
        if e.outcome in ("document", "inline"):
            assert e.document is not None and mail.documents[e.document].data, e
    top_level = {p for p in by_path if not any(p.startswith(f"{q}.") for q in by_path
                                               if by_path[q].outcome == "container" and by_path[q].content_type.startswith("message/"))}
    for path in independent_leaves(raw):
        assert path in by_path, f"leaf {path} has no outcome in the ledger"
    assert top_level  # at least the root


@requires_corpus
def test_corpus_parses_in_seconds():
    data = [path.read_bytes() for path in CORPUS_FILES]
    start = time.process_time()  # ~3 s of CPU for 26 MB here
    for raw in data:
        parse_message(raw)
    assert time.process_time() - start < 30


# --- rule 1: the body ------------------------------------------------------

def test_html_body_preferred_over_text():
    mail = fixture("html_inline_logo.eml")
    body = mail.documents[0]
    assert (body.kind, body.filename, body.content_type) == ("body", "body.html", "text/html")
    assert body.data.startswith(b"<html><body><p>Invoice 77 attached.")
    assert body.original_filename is None and body.parent is None


def test_text_body_when_no_html():
    body = fixture("text_only.eml").documents[0]
    assert (body.filename, body.content_type, body.data) == ("body.txt", "text/plain", b"Just text, no attachments.\n")


def test_headers_only_message_still_has_a_body():
    mail = fixture("no_body.eml")
    assert kinds(mail) == ["body"]
    assert mail.documents[0].data == b"" and mail.documents[0].content_type == "text/plain"


def test_attachment_only_message_has_empty_body():
    mail = parse_message(mixed(PDF_PART))
    assert kinds(mail) == ["body", "attachment"] and mail.documents[0].data == b""


def test_body_charset_is_decoded_and_reencoded_utf8():
    raw = (
        b"Subject: x\nMIME-Version: 1.0\nContent-Type: text/html; charset=windows-1252\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n<p>Caf=E9 =80 5</p>\n"
    )
    body = parse_message(raw).documents[0]
    assert body.data == "<p>Café € 5</p>\n".encode("utf-8") and body.content_type == "text/html"


def test_windows_1251_body_and_subject():
    mail = fixture("odd_charset.eml")
    assert mail.subject == "Счёт на оплату № 15"
    assert mail.documents[0].data.decode("utf-8").startswith("Счёт на оплату № 15")


# --- rule 2: inline or attachment ---------------------------------------------

def test_cid_referenced_logo_is_inline_unreferenced_image_is_attachment():
    mail = fixture("html_inline_logo.eml")
    assert kinds(mail) == ["body", "inline", "attachment", "attachment", "alternative"]
    logo, photo, pdf = mail.documents[1:4]
    assert (logo.filename, logo.parent, logo.content_id, logo.sniffed_type) == (
        "logo.png", 0, "logo.png@01da0b1c", "image/png")
    assert (photo.filename, photo.parent, photo.content_type) == ("photo.jpg", None, "image/jpeg")
    assert (pdf.filename, pdf.sniffed_type, pdf.data) == ("invoice-77.pdf", "application/pdf", PDF)


def test_inline_image_in_text_only_mail_is_attachment():
    image = (
        "Content-Type: image/png\nContent-Disposition: inline\nContent-ID: <img1@x>\n"
        f"Content-Transfer-Encoding: base64\n\n{base64.encodebytes(PNG).decode()}"
    )
    mail = parse_message(mixed(TEXT, image))
    assert kinds(mail) == ["body", "attachment"]
    assert mail.documents[1].filename == "attachment-1.png" and mail.documents[1].content_id == "img1@x"


def test_cid_reference_is_url_decoded_and_wins_over_attachment_disposition():
    html = 'Content-Type: text/html\n\n<img src="cid:a%40b.c">'
    image = (
        "Content-Type: image/png; name=sig.png\nContent-Disposition: attachment; filename=sig.png\n"
        f"Content-ID: <A@B.C>\nContent-Transfer-Encoding: base64\n\n{base64.encodebytes(PNG).decode()}"
    )
    mail = parse_message(mixed(html, image, ctype="multipart/related"))
    assert kinds(mail) == ["body", "inline", "alternative"]


def test_alternatives_are_not_attachments():
    html = "Content-Type: text/html\n\n<p>hello</p>"
    mail = parse_message(mixed(TEXT, html, ctype="multipart/alternative"))
    assert kinds(mail) == ["body", "alternative"] and mail.documents[0].data == b"<p>hello</p>"
    assert mail.documents[1].data == b"hello"  # the plain rendering, stored too
    assert [(e.path, e.outcome) for e in mail.parts] == [("0", "container"), ("1", "alternative"), ("2", "body")]


def test_text_with_attachment_disposition_is_attachment():
    part = "Content-Type: text/plain\nContent-Disposition: attachment\n\nnotes"
    html = "Content-Type: text/html\nContent-Disposition: attachment; filename=page.html\n\n<p>x</p>"
    mail = parse_message(mixed(TEXT, part, html))
    assert kinds(mail) == ["body", "attachment", "attachment"]
    assert [d.filename for d in mail.documents[1:]] == ["attachment-1.txt", "page.html"]
    assert mail.documents[0].data == b"hello"


def test_second_unnamed_text_part_joins_the_body():
    footer = "Content-Type: text/plain\n\n-- \nmailing list footer"
    mail = parse_message(mixed(TEXT, PDF_PART, footer))
    assert kinds(mail) == ["body", "attachment"] and mail.documents[0].data == b"hello\n-- \nmailing list footer"
    assert [(e.path, e.outcome, e.document) for e in mail.parts] == [
        ("0", "container", None), ("1", "body", 0), ("2", "document", 1), ("3", "body", 0)]


def test_report_records_are_documents_with_their_bytes_and_returned_message_is_opened():
    status = "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\nFinal-Recipient: rfc822; x@y\nAction: failed"
    returned = "Content-Type: message/rfc822\n\nSubject: original\n\nhi"
    mail = parse_message(mixed(TEXT, status, returned, ctype="multipart/report; report-type=delivery-status"))
    assert kinds(mail) == ["body", "attachment", "forwarded", "nested"]
    # The report record with its real bytes (compat32 holds it as sub-messages).
    assert mail.documents[1].data == b"Reporting-MTA: dns; mx.example.com\n\nFinal-Recipient: rfc822; x@y\nAction: failed\n"
    assert mail.documents[2].filename == "original.eml" and mail.documents[3].data == b"hi"


def test_signature_of_signed_message_is_not_an_attachment():
    signature = "Content-Type: application/pkcs7-signature; name=smime.p7s\nContent-Disposition: attachment; filename=smime.p7s\n\nMIAG"
    mail = parse_message(mixed(TEXT, signature, ctype='multipart/signed; protocol="application/pkcs7-signature"'))
    assert kinds(mail) == ["body"]


# --- rule 3: forwarded messages ------------------------------------------------

def test_outlook_forward_as_attachment():
    raw = (FIXTURES / "outlook_forward_as_attachment.eml").read_bytes()
    mail = parse_message(raw)
    assert kinds(mail) == ["body", "forwarded", "nested", "nested", "alternative"]
    fwd, inner_body, pdf = mail.documents[1:4]
    assert inner_body.parent == 1 and inner_body.part is None and not inner_body.blank
    assert (fwd.content_type, fwd.filename, fwd.original_filename, fwd.depth, fwd.parent) == (
        "message/rfc822", "Invoice 2024-0611 from Acme Supplies.eml", None, 0, None)
    start = raw.index(b"Received: from mail.acme.example")
    end = raw.index(b"--acme-inner--") + len(b"--acme-inner--\r\n")
    assert fwd.data == raw[start:end]  # the attached message, as it came
    assert (pdf.filename, pdf.parent, pdf.depth, pdf.data, pdf.sniffed_type) == (
        "Invoice_2024-0611.pdf", 1, 1, PDF, "application/pdf")
    assert mail.documents[0].data.startswith(b"<html>")  # outer body, not the forwarded one


def forward(inner: bytes, *, name: str | None = None, cte: str | None = None) -> bytes:
    disposition = f'attachment; filename="{name}"' if name else "attachment"
    if cte == "base64":
        inner = base64.encodebytes(inner)
    head = f"Content-Type: message/rfc822\nContent-Disposition: {disposition}\n"
    head += f"Content-Transfer-Encoding: {cte}\n" if cte else ""
    return mixed(TEXT, head + "\n" + inner.decode())


def test_rfc822_filename_from_disposition_then_subject_then_default():
    inner = mixed(PDF_PART, headers="Subject: Re: Q3/Q4 figures?\n")
    assert parse_message(forward(inner, name="orig.eml")).documents[1].filename == "orig.eml"
    assert parse_message(forward(inner)).documents[1].filename == "Re_ Q3_Q4 figures_.eml"
    no_subject = mixed(PDF_PART, headers="")
    assert parse_message(forward(no_subject)).documents[1].filename == "forwarded.eml"


def test_base64_encoded_rfc822_is_decoded_and_opened():
    inner = mixed(PDF_PART, headers="Subject: inner\n")
    mail = parse_message(forward(inner, cte="base64"))
    assert kinds(mail) == ["body", "forwarded", "nested", "nested"]
    assert mail.documents[1].data.startswith(b"From: a@example.com") and mail.documents[3].data == PDF
    assert mail.documents[2].blank  # the forwarded mail has no text of its own


def test_inline_images_of_the_forwarded_body_stay_inside_it():
    html = 'Content-Type: text/html\n\n<img src="cid:logo@x">'
    logo = f"Content-Type: image/png\nContent-ID: <logo@x>\nContent-Transfer-Encoding: base64\n\n{base64.encodebytes(PNG).decode()}"
    inner = mixed(html, logo, PDF_PART, headers="Subject: inner\n")
    mail = parse_message(forward(inner))
    assert kinds(mail) == ["body", "forwarded", "nested", "inline", "nested"] and mail.documents[4].filename == "a.pdf"
    assert mail.documents[3].parent == 2  # the logo belongs to the forwarded mail's own body


def chain(levels: int) -> bytes:
    """A message forwarding a message ... `levels` deep, each with a PDF."""
    msg = mixed(PDF_PART, headers=f"Subject: level {levels}\n")
    for level in range(levels - 1, -1, -1):
        part = f"Content-Type: message/rfc822\n\n{msg.decode()}"
        msg = mixed(PDF_PART, part, headers=f"Subject: level {level}\n")
    return msg


def test_nesting_follows_depth_and_parents():
    mail = parse_message(chain(2))
    got = [(d.kind, d.content_type, d.depth, d.parent) for d in mail.documents]
    assert got == [
        ("body", "text/plain", 0, None),
        ("attachment", "application/pdf", 0, None),
        ("forwarded", "message/rfc822", 0, None),    # level 1, opened
        ("nested", "text/plain", 1, 2),              # its body
        ("nested", "application/pdf", 1, 2),
        ("forwarded", "message/rfc822", 1, 2),       # level 2, opened
        ("nested", "text/plain", 2, 5),
        ("nested", "application/pdf", 2, 5),
    ]
    assert not mail.defects


def test_nesting_stops_at_max_depth_with_a_defect():
    mail = parse_message(chain(6))
    depths = [d.depth for d in mail.documents if d.kind == "nested"]
    assert max(depths) == MAX_NESTING_DEPTH == 3
    assert sum(d.content_type == "message/rfc822" for d in mail.documents) == 4  # levels 1-4 are documents
    assert any("nesting depth limit reached" in d for d in mail.defects)
    shallow = parse_message(chain(2), max_depth=0)
    assert kinds(shallow) == ["body", "attachment", "attachment"]  # level 1 kept whole: a document
    assert shallow.parts[-1].outcome == "document" and shallow.parts[-1].reason == "depth_limit"
    assert any("nesting depth limit reached" in d for d in shallow.defects)


# --- rule 4: filenames --------------------------------------------------------

def test_rfc2231_continuations_and_unknown_charset():
    mail = fixture("rfc2231_filename.eml")
    pdf, txt = mail.documents[1:]
    assert pdf.original_filename == "€ Rechnung über März 2024.pdf"
    assert pdf.filename == "_ Rechnung über März 2024.pdf"  # € is a symbol, outside the safe set
    assert (txt.original_filename, txt.filename) == ("café.txt", "café.txt")  # unknown charset → latin-1


def test_rfc2047_filenames_in_quoted_params():
    mail = fixture("rfc2047_filename.eml")
    assert [d.original_filename for d in mail.documents[1:]] == ["Rechnung_März_2024.pdf", "Facture n°12 été.pdf"]
    assert [d.filename for d in mail.documents[1:]] == ["Rechnung_März_2024.pdf", "Facture n_12 été.pdf"]
    assert mail.subject == "Rechnung für März" and mail.from_addr == "Jürgen Müller <jm@example.de>"


def test_path_traversal_and_reserved_names():
    mail = fixture("path_traversal_filename.eml")
    assert [d.filename for d in mail.documents[1:]] == ["passwd", "invoice.pdf", "attachment-3.bin"]
    assert mail.documents[1].original_filename == "../../etc/passwd"


@pytest.mark.parametrize("header, expected", [
    ('filename="r\xc3\xa9sum\xc3\xa9.pdf"'.encode("latin-1"), "résumé.pdf"),  # raw UTF-8
    (b'filename="r\xe9sum\xe9.pdf"', "résumé.pdf"),  # raw latin-1
    (b'filename="=?utf-8?B?!!!not base64?=.pdf"', "=?utf-8?B?!!!not base64?=.pdf"),
    (b'filename="=?x-unknown?Q?caf=E9?=.pdf"', "café.pdf"),
    (b"filename*=utf-8''%FF%FEbad.pdf", "\ufffd\ufffdbad.pdf"),
    (b'filename="' + "Картинка".encode() + b'\xd1.png"', "Картинка\ufffd.png"),  # UTF-8 cut short
])
def test_odd_filenames_never_raise(header, expected):
    raw = b"Subject: x\nMIME-Version: 1.0\nContent-Type: application/pdf\nContent-Disposition: attachment; " + header + b"\n\n%PDF-1.4\n"
    doc = parse_message(raw).documents[1]
    assert doc.original_filename == expected
    assert_safe(doc.filename)


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\x\\invoice.pdf", "invoice.pdf"),
    (".bashrc", "bashrc"),
    ("...", "FB"),
    (".", "FB"),
    ("..", "FB"),
    ("", "FB"),
    (None, "FB"),
    ("dir/", "FB"),
    ("CON", "FB"),
    ("con.txt", "FB"),
    ("Lpt1.pdf", "FB"),
    ("COM\u00b9.txt", "FB"),
    ("console.txt", "console.txt"),
    ("a\x00b\x1f\x7fc.pdf", "abc.pdf"),
    ("a:b*c?d<e>f|g\".pdf", "a_b_c_d_e_f_g_.pdf"),
    ("  many   spaces\u00a0 .pdf", "many spaces .pdf"),
    ("a***b.pdf", "a_b.pdf"),
    ("invoice\u202efdp.exe", "invoice_fdp.exe"),  # right-to-left override
    ("Счёт №5 (копия).pdf", "Счёт _5 (копия).pdf"),
    ("請求書+2024,v1@acme.pdf", "請求書+2024,v1@acme.pdf"),
    ("Cafe\u0301.pdf", "Café.pdf"),  # NFC
    ("report. ", "report"),
])
def test_sanitize_filename(name, expected):
    assert sanitize_filename(name, fallback="FB") == expected


def test_sanitize_filename_caps_bytes_and_keeps_extension():
    for stem in ("a" * 300, "ж" * 300, "請" * 300):
        name = sanitize_filename(stem + ".pdf", fallback="FB")
        assert name.endswith(".pdf") and len(name.encode("utf-8")) <= 200
        assert name[:-4] == stem[: len(name) - 4]
    assert len(sanitize_filename("x" * 500, fallback="FB").encode()) == 200


def test_fallback_name_uses_content_type_extension():
    part = f"Content-Type: Application/PDF\nContent-Transfer-Encoding: base64\n\n{PDF_B64}"
    binary = base64.encodebytes(bytes(range(256))).decode()
    unknown = f"Content-Type: application/x-unknown-thing\nContent-Transfer-Encoding: base64\n\n{binary}"
    # No extension for the declared type: the sniffed one decides.
    jpg = "Content-Type: image/jpg\nContent-Transfer-Encoding: base64\n\n/9j/4AAQSkZJRgABAQAAAQABAAD/2Q=="
    mail = parse_message(mixed(TEXT, part, unknown, jpg))
    assert [d.filename for d in mail.documents[1:]] == ["attachment-1.pdf", "attachment-2.bin", "attachment-3.jpg"]
    assert mail.documents[1].original_filename is None


# --- rule 5: content types --------------------------------------------------------

def test_declared_and_sniffed_types_are_both_kept():
    lying = f"Content-Type: image/GIF; name=x.gif\nContent-Transfer-Encoding: base64\n\n{PDF_B64}"
    untyped = f"Content-Disposition: attachment; filename=y\nContent-Transfer-Encoding: base64\n\n{PDF_B64}"
    malformed = f"Content-Type: pdf\nContent-Disposition: attachment\nContent-Transfer-Encoding: base64\n\n{PDF_B64}"
    mail = parse_message(mixed(TEXT, lying, untyped, malformed))
    assert [(d.content_type, d.sniffed_type) for d in mail.documents[1:]] == [
        ("image/gif", "application/pdf"), ("application/octet-stream", "application/pdf"),
        ("application/octet-stream", "application/pdf")]


def _zip(member: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr(member, "<x/>")
    return buf.getvalue()


@pytest.mark.parametrize("data, expected", [
    (PDF, "application/pdf"),
    (b"\r\n\r\n%PDF-1.7\n...", "application/pdf"),
    (PNG, "image/png"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg"),
    (b"GIF89a\x01\x00\x01\x00", "image/gif"),
    (_zip("a.txt"), "application/zip"),
    (_zip("word/document.xml"), "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (b"<!DOCTYPE html><html><body>x</body></html>", "text/html"),
    (b"  <HTML>\n<p>x", "text/html"),
    (b"Dear customer,\nplease pay.\n", "text/plain"),
    ("Grüße, Jürgen\n".encode("latin-1"), "text/plain"),
    (bytes(range(256)) * 4, None),
    (b"", None),
])
def test_sniff_content_type(data, expected):
    assert sniff_content_type(data) == expected


# --- rule 6: defects, never raise ----------------------------------------------

def test_unclosed_boundary_keeps_parts_and_reports():
    mail = fixture("broken_boundary.eml")
    assert kinds(mail) == ["body", "attachment"] and mail.documents[1].data == PDF
    assert any(d.startswith("CloseBoundaryNotFoundDefect") for d in mail.defects)


def test_wrong_boundary_shows_whole_body_as_text():
    mail = fixture("wrong_boundary.eml")
    assert kinds(mail) == ["body"]
    assert mail.documents[0].data.startswith(b"--actually-used\n")
    assert any(d.startswith("StartBoundaryNotFoundDefect") for d in mail.defects)


def test_unknown_body_charset_is_a_defect_not_an_error():
    mail = fixture("unknown_charset_body.eml")
    assert mail.documents[0].data == "Café crème\n".encode()
    assert mail.defects == ["unknown charset 'x-made-up-8bit' in part 1: read as utf-8 or detected"]


def test_bad_base64_is_a_defect():
    part = "Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0x!!!LjQK===x"
    mail = parse_message(mixed(TEXT, part))
    assert kinds(mail) == ["body", "attachment"]
    assert any("Base64" in d or "Padding" in d for d in mail.defects), mail.defects


def test_unparseable_message_degrades_to_text(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(parse.Ledger, "message", boom)
    raw = b"Subject: x\n\nhello \xff world"
    mail = parse_message(raw)
    assert mail.defects == ["unparseable: RuntimeError: boom"]
    assert kinds(mail) == ["body"] and mail.documents[0].content_type == "text/plain"
    assert mail.documents[0].data == "Subject: x\n\nhello \ufffd world".encode()
    assert mail.fingerprint == message_fingerprint(raw)


@pytest.mark.parametrize("raw", [
    b"", b"\n", b"\x00" * 100, bytes(range(256)) * 10, b"Content-Type: multipart/mixed\n\n--\n--\n",
    b"Content-Type: message/rfc822\n\n", b"Content-Type: multipart/mixed; boundary=\"\"\n\n--\n",
    b"From: \n" * 1000, b"Content-Type: text/plain; charset=\"\xff\"\n\n\xff",
])
def test_garbage_never_raises(raw):
    mail = parse_message(raw)
    assert mail.documents[0].kind == "body"


def test_per_part_defects_name_part_and_type():
    mail = parse_message(b"Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=q\n\n--q\n\nx\n")
    assert "CloseBoundaryNotFoundDefect in part root (multipart/mixed)" in mail.defects


# --- headers ---------------------------------------------------------------

def test_header_fields():
    mail = fixture("text_only.eml")
    assert mail.message_id == "text-only-1@example.com"
    assert mail.from_addr == "Bob Example <Bob@Example.COM>"
    assert mail.to == ["invoices@ap.example.com", "other@example.org"]
    assert mail.cc == ["copy@example.net"]
    assert mail.delivered_to == ["invoices@ap.example.com"]
    assert mail.subject == "Plain text only"
    assert mail.date == datetime(2024, 6, 7, 13, 0, tzinfo=timezone.utc)
    assert mail.auth_results == ["mx.ap.example.com; dkim=pass header.d=example.com"]


def test_delivered_to_collects_every_hop_and_x_original_to():
    raw = (b"Delivered-To: A@x.example\nDelivered-To: b@x.example\nX-Original-To: a@x.example\n"
           b"Subject: s\n\nbody")
    assert parse_message(raw).delivered_to == ["a@x.example", "b@x.example"]


@pytest.mark.parametrize("value, expected", [
    (None, None),
    ("Whenever", None),
    ("Fri, 7 Dec 2001 07:01:03", datetime(2001, 12, 7, 7, 1, 3, tzinfo=timezone.utc)),  # no zone: UTC
    ("Mon, 3 Jun 2024 09:15:02 +0200", datetime(2024, 6, 3, 7, 15, 2, tzinfo=timezone.utc)),
])
def test_date_is_utc_or_none(value, expected):
    raw = (f"Date: {value}\n" if value else "").encode() + b"Subject: s\n\nbody"
    date = parse_message(raw).date
    assert date == expected and (date is None or date.tzinfo == timezone.utc)


def test_raw_utf8_headers_are_decoded():
    raw = "From: Jürgen <j@example.de>\nSubject: Größe\n\nx".encode()
    mail = parse_message(raw)
    assert (mail.subject, mail.from_addr) == ("Größe", "Jürgen <j@example.de>")


def test_missing_headers_are_none():
    mail = parse_message(b"\nbody only")
    assert (mail.message_id, mail.from_addr, mail.subject, mail.date) == (None, None, None, None)
    assert (mail.to, mail.cc, mail.delivered_to, mail.auth_results) == ([], [], [], [])
    assert mail.documents[0].data == b"body only"


def test_documents_are_frozen():
    doc = fixture("text_only.eml").documents[0]
    assert isinstance(doc, ParsedDocument)
    with pytest.raises(AttributeError):
        doc.filename = "x"  # type: ignore[misc]


# --- rule 7: fingerprint ----------------------------------------------------------

def test_redelivery_with_trace_headers_has_same_fingerprint():
    first, again = fixture("duplicate_original.eml"), fixture("duplicate_with_received.eml")
    assert first.fingerprint == again.fingerprint
    assert again.delivered_to == ["invoices@ap.example.com"] and not first.delivered_to


BASE = b"From: a@example.com\nTo: b@example.com\nSubject: hi\nMessage-ID: <1@x>\n\nline one\nline two\n"


# What relays, filters and mailboxes add in transit (issue 13: each of these
# made a re-delivery a new upload when only trace headers were ignored).
TRANSIT_HEADERS = [
    "Received", "Return-Path", "Delivered-To", "X-Original-To", "Authentication-Results",
    "ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results", "Received-SPF",
    "X-Spam-Status", "X-Spam-Score", "X-Spam-Flag", "X-Virus-Scanned", "DKIM-Signature",
    "X-MS-Exchange-Organization-SCL", "X-MS-Exchange-CrossTenant-Id", "X-MS-Has-Attach",
    "X-Forefront-Antispam-Report", "X-Google-Smtp-Source", "X-Gm-Message-State", "List-Unsubscribe",
]


def test_fingerprint_covers_only_the_authors_headers():
    assert set(FINGERPRINT_HEADERS) == {
        b"message-id", b"from", b"date", b"subject", b"to", b"cc", b"sender", b"reply-to", b"in-reply-to",
        b"references", b"content-type", b"content-transfer-encoding", b"content-disposition",
    }


@pytest.mark.parametrize("header", [b"Sender: boss@example.com", b"Reply-To: other@example.com",
                                    b"Content-Disposition: attachment"])
def test_an_authors_header_changes_the_fingerprint(header):
    assert message_fingerprint(header + b"\n" + BASE) != message_fingerprint(BASE)


def test_messages_without_headers_are_told_apart():
    # No header block at all: every line before the (missing) blank line is content.
    one, two = b"// Not an RFC-822 Document", b"This is a message\nwithout headers.\n"
    assert message_fingerprint(one) != message_fingerprint(two) != message_fingerprint(b"")


def test_a_resent_message_is_the_same_message():
    resent = b"Resent-From: m@example.net\nResent-Date: Mon, 24 Nov 1997 14:22:01 -0800\nResent-Message-ID: <9@x>\n"
    assert message_fingerprint(resent + BASE) == message_fingerprint(BASE)


@pytest.mark.parametrize("name", TRANSIT_HEADERS)
def test_each_transit_header_is_ignored(name):
    folded = f"{name.upper()}: value one\n\tcontinued\n".encode()
    assert message_fingerprint(folded + BASE) == message_fingerprint(BASE)
    assert message_fingerprint(BASE.replace(b"Subject", folded + b"Subject")) == message_fingerprint(BASE)


def test_line_endings_and_trailing_newlines_do_not_matter():
    fp = message_fingerprint(BASE)
    assert message_fingerprint(BASE.replace(b"\n", b"\r\n")) == fp
    assert message_fingerprint(BASE.replace(b"\n", b"\r")) == fp
    assert message_fingerprint(BASE.rstrip(b"\n")) == fp
    assert message_fingerprint(BASE + b"\r\n\r\n") == fp


@pytest.mark.parametrize("change", [
    lambda m: m.replace(b"line two", b"line 2"),
    lambda m: m.replace(b"Subject: hi", b"Subject: hi!"),
    lambda m: m.replace(b"Subject", b"Cc: c@example.com\nSubject"),
    lambda m: m.replace(b"Subject", b"not a header line\nSubject"),
    lambda m: m.replace(b"From: a@", b"From: mallory@"),
    lambda m: m.replace(b"Message-ID: <1@x>\n", b""),
    lambda m: m.replace(b"line one\n", b"line one\n\n"),
])
def test_other_changes_change_fingerprint(change):
    assert message_fingerprint(change(BASE)) != message_fingerprint(BASE)


def test_header_order_and_folding():
    # Exchange rewrites the header block in its own order.
    swapped = BASE.replace(b"To: b@example.com\nSubject: hi\n", b"Subject: hi\nTo: b@example.com\n")
    assert message_fingerprint(swapped) == message_fingerprint(BASE)
    refolded = BASE.replace(b"Subject: hi", b"Subject:\n hi")
    assert message_fingerprint(refolded) == message_fingerprint(BASE)  # unfolded before hashing


# --- rule 8: size ------------------------------------------------------------------

@pytest.mark.timeout(60)  # wall clock, generous: the suite shares the machine
def test_40mb_message_parses_in_seconds():
    """~2 s of CPU here; the bound is on this process's CPU time, so that
    other processes loading the machine do not make it flaky."""
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * (23 * 1024 * 1024 // 256) + b"\n%%EOF\n"
    text = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 140_000
    raw = (
        b"From: a@example.com\r\nTo: invoices@ap.example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n" + text
        + b"\r\n--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=big.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(pdf).replace(b"\n", b"\r\n") + b"--XX--\r\n"
    )
    assert len(raw) > 40_000_000 and len(pdf) > 23_000_000  # 32 MB as base64
    start = time.process_time()
    mail = parse_message(raw)
    elapsed = time.process_time() - start
    assert kinds(mail) == ["body", "attachment"] and mail.documents[1].data == pdf
    assert mail.documents[1].sniffed_type == "application/pdf"
    assert elapsed < 5, f"{elapsed:.1f}s of CPU"
    start = time.process_time()
    message_fingerprint(raw)
    assert time.process_time() - start < 1
