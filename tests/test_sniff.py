"""sniff_content_type on real byte samples: magic numbers decide before any text search."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest

from gateway.sniff import sniff_content_type

PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
)

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"

_CT = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="{part}" ContentType="{ctype}"/>'
    "</Types>"
)
_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"'
    ' Target="{part}"/></Relationships>'
)


def _ooxml(part: str, ctype: str, *, padding: int = 0) -> bytes:
    """A package laid out like Office writes it: [Content_Types].xml, _rels, then the parts.

    ``padding`` puts an incompressible thumbnail before the main part, as some
    writers do, so the main part's name is not in the first 8 KiB.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT.format(part="/" + part, ctype=ctype))
        z.writestr("_rels/.rels", _RELS.format(part=part))
        if padding:
            z.writestr("docProps/thumbnail.jpeg", _random(padding), zipfile.ZIP_STORED)
        z.writestr("docProps/core.xml", "<cp:coreProperties/>")
        z.writestr(part, "<root>" + "x" * 2000 + "</root>")
    return buf.getvalue()


def _random(n: int) -> bytes:
    # Deterministic, incompressible bytes that contain no ZIP signature by luck.
    out = bytearray()
    seed = 1
    while len(out) < n:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        out += struct.pack("<I", seed)
    return bytes(out[:n]).replace(b"PK", b"pk")


def _zip_with(name: str, data: bytes, method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        z.writestr(name, data)
    return buf.getvalue()


def _ole(names: list[str], *, sector_shift: int = 9) -> bytes:
    """A minimal, valid compound file: header, one FAT sector, a directory chain.

    Streams are empty (size 0), which the format allows; only the directory
    matters to the sniffer. With more than four entries the directory spans
    several sectors chained through the FAT, like a real .msg.
    """
    size = 1 << sector_shift
    per_sector = size // 128
    entries = ["Root Entry", *names]
    n_dir = -(-len(entries) // per_sector)
    # Sector 0 is the FAT; directory sectors follow, chained 1 -> 2 -> ... -> end.
    fat = [0xFFFFFFFD] + [i + 2 for i in range(n_dir - 1)] + [0xFFFFFFFE]
    fat += [0xFFFFFFFF] * (size // 4 - len(fat))
    header = bytearray(512)
    header[0:8] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    struct.pack_into("<HHHH", header, 24, 0x3E, 3 if sector_shift == 9 else 4, 0xFFFE, sector_shift)
    struct.pack_into("<H", header, 32, 6)
    struct.pack_into("<I", header, 44, 1)  # one FAT sector
    struct.pack_into("<I", header, 48, 1)  # first directory sector
    struct.pack_into("<I", header, 56, 4096)
    struct.pack_into("<I", header, 60, 0xFFFFFFFE)
    struct.pack_into("<I", header, 68, 0xFFFFFFFE)
    difat = [0] + [0xFFFFFFFF] * 108
    struct.pack_into("<109I", header, 76, *difat)
    directory = bytearray(n_dir * size)
    for i, name in enumerate(entries):
        e = i * 128
        encoded = name.encode("utf-16-le") + b"\x00\x00"
        directory[e : e + len(encoded)] = encoded
        struct.pack_into("<HBB", directory, e + 64, len(encoded), 5 if i == 0 else 2, 1)
        struct.pack_into("<III", directory, e + 68, 0xFFFFFFFF, 0xFFFFFFFF, 1 if i == 0 and len(entries) > 1 else 0xFFFFFFFF)
        struct.pack_into("<IQ", directory, e + 116, 0xFFFFFFFE, 0)
    head = bytes(header) + b"\x00" * (size - 512) if size > 512 else bytes(header)
    return head + struct.pack(f"<{size // 4}I", *fat) + bytes(directory)


def _png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


def _tiff(big_endian: bool) -> bytes:
    # 1x1 8-bit greyscale: header, one IFD with the required tags, one pixel.
    e = ">" if big_endian else "<"
    tags = [(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 8 + 2 + 12 * 8 + 4), (278, 3, 1, 1), (279, 4, 1, 1)]
    ifd = struct.pack(e + "H", len(tags))
    for tag, typ, count, value in tags:
        if typ == 3:
            ifd += struct.pack(e + "HHIHH", tag, typ, count, value, 0)
        else:
            ifd += struct.pack(e + "HHII", tag, typ, count, value)
    ifd += struct.pack(e + "I", 0)
    magic = b"MM\x00*" if big_endian else b"II*\x00"
    return magic + struct.pack(e + "I", 8) + ifd + b"\x80"


JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    b"\xff\xdb\x00C\x00" + bytes(range(1, 65)) + b"\xff\xd9"
)
TNEF = (
    b"\x78\x9f\x3e\x22\x01\x00\x01\x06\x90\x08\x00\x04\x00\x00\x00\x00\x00\x01\x00\x01\x00"
    b"\x01\x07\x90\x06\x00\x08\x00\x00\x00\xe4\x04\x00\x00\x00\x00\x00\x00\xe8\x00"
)
RTF = rb"{\rtf1\ansi\deff0{\fonttbl{\f0 Times;}}\f0\fs24 Invoice 77\par}"


@pytest.mark.parametrize("data, expected", [
    pytest.param(PDF, "application/pdf", id="pdf"),
    pytest.param(b"\r\n\r\n" + PDF, "application/pdf", id="pdf-after-blank-lines"),
    pytest.param(b"\x00\x00\x1a\x04GARBAGE\xff\xfe" * 20 + PDF, "application/pdf", id="pdf-after-binary-junk"),
    pytest.param(b"\x00" * 1000 + PDF, "application/pdf", id="pdf-after-1000-nuls"),
    pytest.param(b"\x00" * 2000 + PDF, None, id="pdf-too-far-in"),
    pytest.param(b"Scanned by ACME\r\n" + PDF, "application/pdf", id="pdf-after-text-line-then-objects"),
    pytest.param(_zip_with("invoice.pdf", PDF), "application/zip", id="zip-storing-a-pdf"),
    pytest.param(_zip_with("%PDF-1.4 notes.txt", b"hello"), "application/zip", id="zip-named-like-pdf"),
    pytest.param(_zip_with("invoice.pdf", PDF, zipfile.ZIP_DEFLATED), "application/zip", id="zip-deflated-pdf"),
    pytest.param(_zip_with("word/document.xml", b"<w/>"), "application/zip", id="zip-word-folder-no-content-types"),
    pytest.param(_ooxml("word/document.xml", DOCX[:-len("document")] + "document.main+xml"), DOCX, id="docx"),
    pytest.param(_ooxml("xl/workbook.xml", XLSX[:-len("sheet")] + "sheet.main+xml"), XLSX, id="xlsx"),
    pytest.param(_ooxml("ppt/presentation.xml", PPTX[:-len("presentation")] + "presentation.main+xml"), PPTX,
                 id="pptx"),
    pytest.param(_ooxml("word/document.xml", DOCX[:-len("document")] + "document.main+xml", padding=20000), DOCX,
                 id="docx-main-part-beyond-8k"),
    pytest.param(TNEF, "application/vnd.ms-tnef", id="tnef"),
    pytest.param(_ole(["__substg1.0_0037001F", "__properties_version1.0", "__nameid_version1.0"]),
                 "application/vnd.ms-outlook", id="ole-msg"),
    pytest.param(_ole(["\x05SummaryInformation", "\x05DocumentSummaryInformation", "CompObj", "Data", "1Table",
                       "ObjectPool", "__substg1.0_1000001F"]),
                 "application/vnd.ms-outlook", id="ole-msg-name-in-second-directory-sector"),
    pytest.param(_ole(["WordDocument", "1Table", "\x05SummaryInformation"]), "application/msword", id="ole-doc"),
    pytest.param(_ole(["Workbook"]), "application/vnd.ms-excel", id="ole-xls"),
    pytest.param(_ole(["__substg1.0_0037001F"], sector_shift=12), "application/vnd.ms-outlook", id="ole-v4-msg"),
    pytest.param(_ole(["Contents", "Thumbnail"]), "application/x-ole-storage", id="ole-other"),
    pytest.param(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 40, "application/x-ole-storage", id="ole-truncated"),
    pytest.param(RTF, "application/rtf", id="rtf"),
    pytest.param(_png(), "image/png", id="png"),
    pytest.param(JPEG, "image/jpeg", id="jpeg"),
    pytest.param(_tiff(False), "image/tiff", id="tiff-le"),
    pytest.param(_tiff(True), "image/tiff", id="tiff-be"),
    pytest.param(b"<!DOCTYPE html><html><body><p>%PDF-1.4 is the header</p></body></html>", "text/html",
                 id="html-mentioning-pdf"),
    pytest.param("\ufeffDear customer,\nplease pay.\n".encode("utf-16"), "text/plain", id="utf-16-bom"),
    pytest.param("Hallo,\nanbei die Rechnung.\n".encode("utf-16-be"), None, id="utf-16-without-bom"),
])
def test_sniff(data, expected):
    assert sniff_content_type(data) == expected


@pytest.mark.parametrize("body", [
    b"Hi,\n\nthe file starts with %PDF-1.4 but Acrobat will not open it.\n",
    b"Hi,\n\nthe first line of the attachment is\n\n%PDF-1.7\n\nand then nothing. Can you resend?\n",
    b"> %PDF-1.4\n> %\xe2\xe3\xcf\xd3\nquoted from the broken file\n",
])
def test_text_quoting_a_pdf_header_stays_text(body):
    assert sniff_content_type(body) == "text/plain"


def test_only_the_first_8k_is_read():
    # An HTML tag past 8 KiB is not seen; the text before it decides.
    assert sniff_content_type(b"a" * 9000 + b"<html><body>x</body></html>") == "text/plain"
    assert sniff_content_type(memoryview(PDF)) == "application/pdf"


def test_generated_samples_are_what_they_claim():
    # The samples above are real files, not just magic numbers: the stdlib reads them back.
    with zipfile.ZipFile(io.BytesIO(_ooxml("word/document.xml", "x", padding=20000))) as z:
        assert z.namelist()[0] == "[Content_Types].xml" and "word/document.xml" in z.namelist()
    with zipfile.ZipFile(io.BytesIO(_zip_with("invoice.pdf", PDF))) as z:
        assert z.read("invoice.pdf") == PDF
