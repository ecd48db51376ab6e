"""Bare LF in DATA, and the SMTP-smuggling payloads, against a live listener.

Lines that end in a bare LF are lines (Postfix 3.9's default,
``smtpd_forbid_bare_newline = normalize``): a scanner or a small script that
sends them gets 250 and its mail is stored as it sent it. The data ends on
``CRLF . CRLF`` only, and a lone-dot line next to a bare CR or LF (what another
server may take for an end of data) makes the whole transaction 554 5.6.0:
however a payload is cut, the server never sees two messages.
"""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import select

from gateway.storage import models as m

from .conftest import PDF, RawSMTP

pytestmark = pytest.mark.timeout(120)

INVOICES = "invoices@ap.example.com"

REFUSED_SMUGGLING = (
    "554 5.6.0 Message refused: a line holding only a dot must end in CRLF"
    " and follow a CRLF (SMTP smuggling)"
)
REFUSED_BARE_CR = "554 5.6.0 Message refused: bare CR in data"

# The fake end-of-data sequences of the SMTP-smuggling research: SEC Consult's
# scanner (The-Login/SMTP-Smuggling-Tools, inbound and outbound lists) and the
# extra strings of suuhm/smtp_smuggling_checker.py. Each maps to what the
# server answers at the real end of data. The NUL forms are not a line holding
# only a dot here (a server that drops NULs might see one; we keep them), so
# they stay content of the one message.
SEQUENCES = {
    "lf-dot-lf": (b"\n.\n", REFUSED_SMUGGLING),
    "lf-dot-cr": (b"\n.\r", REFUSED_SMUGGLING),
    "cr-dot-lf": (b"\r.\n", REFUSED_SMUGGLING),
    "cr-dot-cr": (b"\r.\r", REFUSED_SMUGGLING),
    "lf-dot-crlf": (b"\n.\r\n", REFUSED_SMUGGLING),
    "cr-dot-crlf": (b"\r.\r\n", REFUSED_SMUGGLING),
    "crlf-dot-lf": (b"\r\n.\n", REFUSED_SMUGGLING),
    "crlf-dot-cr": (b"\r\n.\r", REFUSED_SMUGGLING),
    "crlf-dot-cr-crlf": (b"\r\n.\r\r\n", REFUSED_SMUGGLING),
    "cr-crlf-dot-cr-crlf": (b"\r\r\n.\r\r\n", REFUSED_SMUGGLING),
    "lf-lf-dot-crlf": (b"\n\n.\r\n", REFUSED_SMUGGLING),
    "crlf-nul-dot-crlf": (b"\r\n\x00.\r\n", 250),
    "crlf-dot-nul-crlf": (b"\r\n.\x00\r\n", 250),
    "crlf-nul-dot-lf": (b"\r\n\x00.\n", 250),
    "crlf-nul-dot-cr": (b"\r\n\x00.\r", REFUSED_BARE_CR),
}


def genuine(tag: str, seq: bytes, *, wrapped: bool) -> bytes:
    """A message whose body carries ``seq`` and then a whole smuggled transaction.

    ``wrapped`` puts the sequence on lines of its own, as the SEC Consult scanner
    does (``...\\r\\n{seq}\\r\\nMAIL FROM``); otherwise it sits right between the
    text and the smuggled MAIL, the tightest cut."""
    before, after = (b"\r\n", b"\r\n") if wrapped else (b"", b"")
    return (
        b"From: Supplier <billing@supplier.example>\r\n"
        b"To: invoices@ap.example.com\r\n"
        b"Subject: genuine " + tag.encode() + b"\r\n"
        b"Message-ID: <" + tag.encode() + b"@supplier.example>\r\n"
        b"\r\n"
        b"Testing a fake end of data" + before + seq + after
        + b"MAIL FROM:<ceo@victim.example>\r\n"
        b"RCPT TO:<invoices@ap.example.com>\r\n"
        b"DATA\r\n"
        b"From: CEO <ceo@victim.example>\r\n"
        b"To: invoices@ap.example.com\r\n"
        b"Subject: smuggled " + tag.encode() + b"\r\n"
        b"Message-ID: <smuggled-" + tag.encode() + b"@victim.example>\r\n"
        b"\r\n"
        b"Pay IBAN XX00 0000 now\r\n"
    )


async def raw_session(port: int) -> RawSMTP:
    c = await RawSMTP.connect(port)
    assert (await c.reply())[0] == 220
    assert (await c.cmd("EHLO client.test"))[0] == 250
    return c


async def subjects(gw) -> list[str | None]:
    async with gw.rt.sessions() as s:
        return list((await s.scalars(select(m.Email.subject).order_by(m.Email.id))).all())


@pytest.mark.parametrize("name", SEQUENCES)
async def test_smuggling_payload_never_yields_a_second_message(smtp_gateway, name):
    gw = smtp_gateway
    seq, expected = SEQUENCES[name]
    c = await raw_session(gw.port)
    for wrapped in (False, True):
        tag = f"{name}-{'wrapped' if wrapped else 'direct'}"
        assert (await c.cmd("MAIL FROM:<billing@supplier.example>"))[0] == 250
        assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
        assert (await c.cmd("DATA"))[0] == 354
        # All in one write, as an attacker pipelines it; then the real end of data.
        code, text = await c.cmd(genuine(tag, seq, wrapped=wrapped) + b".\r\n")
        if expected == 250:
            assert code == 250 and text.startswith("250 2.0.0 "), text
        else:
            assert text == expected
    # The next reply is QUIT's: no smuggled MAIL/RCPT/DATA was ever answered.
    code, text = await c.cmd("QUIT")
    assert code == 221, text
    assert await c.rest() == b""

    subs = await subjects(gw)
    assert not [s for s in subs if s and "smuggled" in s]
    uploads = await gw.uploads()
    if expected == 250:
        # One email and one upload per transaction: the smuggled text is body.
        assert sorted(subs) == [f"genuine {name}-direct", f"genuine {name}-wrapped"]
        assert len(uploads) == 2
        for email in await gw.emails():
            raw = gw.rt.blobs.open_path(email.raw_sha256).read_bytes()
            assert b"\r\nSubject: smuggled " in raw
    else:
        assert subs == [] and uploads == []
        assert await gw.count(m.Task) == 0


# A multifunction printer's scan-to-email: every line ends in a bare LF, a
# signature line begins with a dot (stuffed on the wire, as the printer must),
# and only the end of data is CRLF . CRLF.
SCAN = (
    b"From: Scanner <scanner@office.example>\n"
    b"To: invoices@ap.example.com\n"
    b"Subject: Scanned document\n"
    b"Message-ID: <scan-0001@mfp.office.example>\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="scanbound"\n'
    b"\n"
    b"--scanbound\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"Scanned from MFP-3F.\n"
    b".sent by the copier\n"
    b"--scanbound\n"
    b"Content-Type: application/pdf\n"
    b'Content-Disposition: attachment; filename="scan.pdf"\n'
    b"Content-Transfer-Encoding: base64\n"
    b"\n"
    + base64.encodebytes(PDF)
    + b"--scanbound--"
)


async def _send_data(port: int, data: bytes) -> tuple[int, str]:
    c = await raw_session(port)
    assert (await c.cmd("MAIL FROM:<scanner@office.example>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{INVOICES}>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    wire = data.replace(b"\n.", b"\n..")  # dot-stuffing, after bare LF too
    code, text = await c.cmd(wire + b"\r\n.\r\n")
    assert (await c.cmd("QUIT"))[0] == 221
    return code, text


async def test_scan_to_email_with_bare_lf_is_accepted_and_stored_as_sent(smtp_gateway):
    gw = smtp_gateway
    code, text = await _send_data(gw.port, SCAN)
    assert code == 250 and text.startswith("250 2.0.0 "), text
    [email] = await gw.emails()
    [upload] = await gw.uploads()
    assert email.subject == "Scanned document"
    # Stored as received (dot-unstuffed): the bare LFs stay, the CRLF that
    # precedes the final dot is the data's own last line end.
    stored = gw.rt.blobs.open_path(email.raw_sha256).read_bytes()
    assert stored == SCAN + b"\r\n"
    async with gw.rt.sessions() as s:
        docs = (await s.scalars(select(m.Document).where(m.Document.upload_id == upload.id))).all()
    assert sorted(d.kind for d in docs) == ["attachment", "body"]
    [pdf] = [d for d in docs if d.kind == "attachment"]
    assert pdf.filename == "scan.pdf" and pdf.size == len(PDF)

    # The same scan with CRLF line ends (a relay that fixed them) is the same
    # message: the fingerprint reads CRLF and LF alike.
    code, text = await _send_data(gw.port, SCAN.replace(b"\n", b"\r\n"))
    assert code == 250 and "duplicate" in text, text
    assert len(await gw.uploads()) == 1


async def test_large_bare_lf_message_is_accepted(smtp_gateway):
    """Past 1 MB the data is checked in a worker thread: the same rules there."""
    gw = smtp_gateway
    body = b"".join(b"line %07d of a long bare-LF report\n" % i for i in range(40_000))
    data = (
        b"From: Reports <reports@erp.example>\nTo: invoices@ap.example.com\n"
        b"Subject: big report\nMessage-ID: <big-report@erp.example>\n\n" + body
    )
    assert len(data) > 1024 * 1024
    code, text = await _send_data(gw.port, data)
    assert code == 250, text
    [email] = await gw.emails()
    assert gw.rt.blobs.open_path(email.raw_sha256).read_bytes() == data + b"\r\n"
