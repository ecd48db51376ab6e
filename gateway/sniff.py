"""Guess a content type from bytes, whatever a sender declared.

Pure and cheap: it only looks at the first few KiB, so it is safe on 40 MB
payloads. `filetype` knows binary formats by their magic numbers; it has
nothing for PDFs that do not start at byte 0, HTML or plain text, which are
handled by the small heuristics below.
"""

from __future__ import annotations

import re

import filetype

_SAMPLE = 8192
# Acrobat accepts "%PDF-" anywhere in the first KiB (mailers and scanners
# sometimes prepend junk); filetype only looks at offset 0.
_PDF_WINDOW = 1024
_HTML_START = re.compile(
    rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|meta|table|div|p|br)\b",
    re.IGNORECASE | re.DOTALL,
)
_HTML_ANYWHERE = re.compile(rb"<(?:html|body)\b[^>]*>", re.IGNORECASE)
# Bytes a text file does not contain. ESC (0x1b) is allowed: ISO-2022-JP
# text is full of it. Tab, LF, FF and CR are ordinary text.
_BINARY_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27)) + b"\x7f"


def sniff_content_type(data: bytes) -> str | None:
    """Return a MIME type judged from the bytes, or None when unsure."""
    if not data:
        return None
    sample = bytes(data[:_SAMPLE])
    if b"%PDF-" in sample[:_PDF_WINDOW]:
        return "application/pdf"
    kind = filetype.guess_mime(sample)
    if kind:
        return kind
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
