"""Guess a content type from bytes, whatever a sender declared.

Pure and cheap: it looks at the first 8 KiB (plus, for OLE2 files, a few
512-byte directory sectors found through the header), so it is safe on 40 MB
payloads.

Magic numbers decide first, so a ZIP that stores a PDF (or a file named
``x.pdf``) stays a ZIP. `filetype` knows most binary formats by their magic
numbers; it does not know TNEF or bare OLE2 (Outlook .msg), only finds OOXML
when a ``word/``, ``xl/`` or ``ppt/`` entry is among the first few ZIP entries,
and only looks for PDFs at byte 0. Those gaps, HTML and plain text are handled
here.
"""

from __future__ import annotations

import re
import struct
import zlib

import filetype

_SAMPLE = 8192
# Acrobat accepts "%PDF-" anywhere in the first KiB (mailers and scanners
# sometimes prepend junk); filetype only looks at offset 0.
_PDF_WINDOW = 1024
_PDF_HEADER = re.compile(rb"%PDF-\d\.\d")
# An indirect object ("1 0 obj") is the body of a PDF, not a quote of its header.
_PDF_OBJECT = re.compile(rb"\d+\s+\d+\s+obj\b")
_HTML_START = re.compile(
    rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|meta|table|div|p|br)\b",
    re.IGNORECASE | re.DOTALL,
)
_HTML_ANYWHERE = re.compile(rb"<(?:html|body)\b[^>]*>", re.IGNORECASE)
# Bytes a text file does not contain. ESC (0x1b) is allowed: ISO-2022-JP
# text is full of it. Tab, LF, FF and CR are ordinary text.
_BINARY_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27)) + b"\x7f"

_TNEF_MAGIC = b"\x78\x9f\x3e\x22"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")

_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
_OOXML_BY_PART = {b"word/": _DOCX, b"xl/": _XLSX, b"ppt/": _PPTX}
# The content type [Content_Types].xml gives the main part; macro-enabled and
# template variants are the same family of document.
_OOXML_BY_MAIN = (
    (b"wordprocessingml.document.main+xml", _DOCX),
    (b"wordprocessingml.template.main+xml", _DOCX),
    (b"ms-word.document.macroenabled.main+xml", _DOCX),
    (b"spreadsheetml.sheet.main+xml", _XLSX),
    (b"spreadsheetml.template.main+xml", _XLSX),
    (b"ms-excel.sheet.macroenabled.main+xml", _XLSX),
    (b"presentationml.presentation.main+xml", _PPTX),
    (b"presentationml.slideshow.main+xml", _PPTX),
    (b"ms-powerpoint.presentation.macroenabled.main+xml", _PPTX),
)


def sniff_content_type(data: bytes) -> str | None:
    """Return a MIME type judged from the bytes, or None when unsure."""
    if not data:
        return None
    sample = bytes(data[:_SAMPLE])
    if sample.startswith(_TNEF_MAGIC):
        return "application/vnd.ms-tnef"
    if sample.startswith(_OLE_MAGIC):
        return _ole_type(data, sample)
    kind = filetype.guess_mime(sample)
    if sample.startswith(_ZIP_MAGIC) and kind in (None, "application/zip", _DOCX, _XLSX, _PPTX):
        # filetype calls any ZIP whose first entry is under word/ a .docx; an
        # OOXML package is known by its [Content_Types].xml or _rels/.rels.
        return _ooxml_type(sample) or "application/zip"
    if kind:
        return kind
    if _is_pdf_after_junk(sample):
        return "application/pdf"
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        # UTF-16 text: only a BOM lets us say so without guessing.
        return "text/plain"
    if _looks_like_text(sample):
        if _HTML_START.match(sample) or _HTML_ANYWHERE.search(sample):
            return "text/html"
        return "text/plain"
    return None


def _looks_like_text(sample: bytes) -> bool:
    if b"\x00" in sample:
        return False
    # Control bytes are rare in any 8-bit or UTF-8 text, common in binaries;
    # a small tolerance keeps slightly dirty text (a stray ^L, ^Z) as text.
    controls = len(sample) - len(sample.translate(None, _BINARY_BYTES))
    return controls * 100 <= len(sample)


def _is_pdf_after_junk(sample: bytes) -> bool:
    m = _PDF_HEADER.search(sample, 0, _PDF_WINDOW + 8)
    if not m or m.start() > _PDF_WINDOW:
        return False
    prefix = sample[: m.start()]
    if not prefix.strip() or len(prefix) != len(prefix.translate(None, _BINARY_BYTES)):
        # Whitespace or binary garbage before the header: the junk readers skip.
        return True
    # Readable text before the header is a mail or a note that mentions PDFs
    # ("the file starts with %PDF-1.4"), unless a PDF body follows.
    return _PDF_OBJECT.search(sample, m.end()) is not None


# --- ZIP: which OOXML document, if any -----------------------------------------

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def _ooxml_type(sample: bytes) -> str | None:
    """The OOXML type of a ZIP whose first entries are in ``sample``, else None.

    Walks the local file headers that fit in the sample. [Content_Types].xml
    and _rels/.rels are what make a ZIP an OOXML package (Office writes the
    first, LibreOffice the second, first); the main part's content type in
    [Content_Types].xml, or else a ``word/``/``xl/``/``ppt/`` entry, says which
    one. A ZIP that merely holds a ``word/`` folder is not a document.
    """
    is_package = False
    by_part = None
    pos = 0
    for _ in range(64):
        if pos + _LOCAL_HEADER.size > len(sample):
            break
        sig, _ver, flags, method, _t, _d, _crc, csize, _usize, nlen, xlen = _LOCAL_HEADER.unpack_from(sample, pos)
        if sig != b"PK\x03\x04":
            break
        name = sample[pos + 30 : pos + 30 + nlen]
        start = pos + 30 + nlen + xlen
        if name == b"_rels/.rels":
            is_package = True
        elif name == b"[Content_Types].xml":
            is_package = True
            main = _main_part_type(sample[start : start + csize] if csize else sample[start:], method)
            if main:
                return main
        elif by_part is None:
            by_part = next((t for prefix, t in _OOXML_BY_PART.items() if name.startswith(prefix)), None)
        if flags & 0x08 or not csize:
            # Sizes are in a data descriptor after the data: find the next entry.
            nxt = sample.find(b"PK\x03\x04", start)
            if nxt < 0:
                break
            pos = nxt
        else:
            pos = start + csize
    return by_part if is_package else None


def _main_part_type(blob: bytes, method: int) -> str | None:
    if method == 8:
        try:
            # Bounded: a few KiB of XML is all [Content_Types].xml ever needs.
            blob = zlib.decompressobj(-15).decompress(blob, 65536)
        except zlib.error:
            return None
    elif method != 0:
        return None
    blob = blob.lower()
    return next((t for needle, t in _OOXML_BY_MAIN if needle in blob), None)


# --- OLE2 (compound file): Word, Excel, PowerPoint, Outlook .msg, or other -------

_ENDOFCHAIN = 0xFFFFFFFE
_MSG_NAMES = ("__substg1.0_", "__properties_version1.0", "__nameid_version1.0", "__recip_version1.0_", "__attach_version1.0_")
_OLE_BY_STREAM = {
    "WordDocument": "application/msword",
    "Workbook": "application/vnd.ms-excel",
    "Book": "application/vnd.ms-excel",
    "PowerPoint Document": "application/vnd.ms-powerpoint",
}


def _ole_type(data: bytes, sample: bytes) -> str:
    names = _ole_names(data)
    if any(n.startswith(_MSG_NAMES) for n in names):
        return "application/vnd.ms-outlook"
    for n in names:
        if n in _OLE_BY_STREAM:
            return _OLE_BY_STREAM[n]
    if not names:
        # Unreadable directory: filetype's guesses from the first sectors are
        # all there is (it knows Word's FIB and a few Excel/PowerPoint records).
        kind = filetype.guess_mime(sample)
        if kind in ("application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"):
            return kind
    return "application/x-ole-storage"


def _ole_names(data: bytes, max_sectors: int = 8) -> list[str]:
    """Names in the first few directory sectors of a compound file; [] if it is damaged.

    Follows the directory chain through the FAT sectors the header lists, at
    most ``max_sectors`` sectors: the top-level streams that tell a .msg from
    a .doc sit in the first ones.
    """
    try:
        shift = struct.unpack_from("<H", data, 30)[0]
        if shift not in (9, 12):
            return []
        size = 1 << shift
        sid = struct.unpack_from("<I", data, 48)[0]
        difat = struct.unpack_from("<109I", data, 76)
        per_fat = size // 4
        names: list[str] = []
        for _ in range(max_sectors):
            if sid >= _ENDOFCHAIN:
                break
            off = (sid + 1) * size
            sector = data[off : off + size]
            if len(sector) < size:
                break
            for e in range(0, size, 128):
                nlen = struct.unpack_from("<H", sector, e + 64)[0]
                if 2 <= nlen <= 64 and sector[e + 66] in (1, 2, 5):
                    names.append(bytes(sector[e : e + nlen - 2]).decode("utf-16-le", "replace"))
            fat_index = sid // per_fat
            if fat_index >= len(difat):
                break
            fat_off = (difat[fat_index] + 1) * size + (sid % per_fat) * 4
            if fat_off + 4 > len(data):
                break
            sid = struct.unpack_from("<I", data, fat_off)[0]
        return names
    except (struct.error, IndexError):
        return []
