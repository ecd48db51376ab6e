"""MIME helpers shared by the parser and the part ledger: header text,
filenames, charsets, transfer encodings. Pure functions; none raises on mail
content."""

from __future__ import annotations

import base64
import binascii
import email
import email.header
import email.parser
import io
import mimetypes
import quopri
import re
import unicodedata
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from typing import Sequence

from gateway import charsets

MAX_FILENAME_BYTES = 200

_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{p}{i}" for p in ("COM", "LPT") for i in "0123456789¹²³"}
)
_SAFE_PUNCTUATION = frozenset(" .-_()+,@")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# A fixed table, not the host's /etc/mime.types: fallback names must not
# change with the machine that parsed the mail.
_MIME = mimetypes.MimeTypes()
_MIME.add_type("text/calendar", ".ics")
_MIME.add_type("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx")
_MIME.add_type("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx")
_MIME.add_type("application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx")
_MIME.add_type("message/delivery-status", ".txt")
_MIME.add_type("message/disposition-notification", ".txt")
_MIME.add_type("message/feedback-report", ".txt")
_MIME.add_type("text/rfc822-headers", ".txt")


# The parser is fed this many bytes at a time (see parse_bytes).
_FEED_BYTES = 1024 * 1024


def parse_bytes(data: bytes) -> Message:
    """``email.message_from_bytes``, fed in pieces: the stdlib decodes the whole
    message to one str and copies it into a StringIO before splitting it into
    lines, a peak of 7.7 times a 30 MB message (tracemalloc); fed 1 MiB at a
    time, 2.8 times. The tree is the same (the stdlib feeds its parser in
    pieces too, and ASCII with surrogateescape decodes byte by byte)."""
    parser = email.parser.BytesFeedParser(_factory=Part, policy=compat32)
    view = memoryview(data)
    for start in range(0, len(data), _FEED_BYTES):
        parser.feed(view[start:start + _FEED_BYTES].tobytes())
    return parser.close()


class Part(Message):
    """compat32 keeps the line break of a folded boundary parameter, so no
    delimiter line ever matches it; unfolding (RFC 5322 2.2.3) fixes that."""

    def get_boundary(self, failobj=None):
        boundary = super().get_boundary(failobj)
        return unfold(boundary) if isinstance(boundary, str) else boundary


def sanitize_filename(name: str | None, *, fallback: str) -> str:
    """A name safe on any filesystem, or `fallback` when nothing usable is left."""
    if not name:
        return fallback
    name = unicodedata.normalize("NFC", re.split(r"[/\\]", name)[-1])
    chars = []
    for ch in name:
        category = unicodedata.category(ch)
        if category == "Cc":
            continue
        if category[0] in "LMN" or ch in _SAFE_PUNCTUATION:
            chars.append(ch)
        else:  # separators (NBSP...), symbols, bidi overrides, ':' '*' '?' '"' '<' '>' '|'
            chars.append(" " if category == "Zs" else "_")
    name = re.sub(r"_{2,}", "_", re.sub(r" {2,}", " ", "".join(chars)))
    name = _cap_bytes(name.strip(". "), MAX_FILENAME_BYTES).lstrip(". ")
    if not name or name.split(".")[0].strip().upper() in _RESERVED_NAMES:
        return fallback
    return name


def _cap_bytes(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    ext = dot + ext
    if not stem or len(ext.encode("utf-8")) > 20:  # no dot, or not an extension
        stem, ext = name, ""
    budget = limit - len(ext.encode("utf-8"))
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(". ")
    return stem + ext


def content_headers(part: Message, hints: Sequence[str | None] = ()) -> Message:
    """The part's Content-* headers with raw 8-bit bytes turned into text.

    compat32 replaces each raw non-ASCII byte in a parameter by U+FFFD; many
    clients put UTF-8 (or GBK, KOI8-R, ...) filenames there unencoded. They
    are read with the part's own charset, then ``hints`` (the containers'),
    then UTF-8, then a detector (``gateway.charsets``).
    """
    view = Message()
    hints = (_charset_param(part), *hints)
    for name, value in part.raw_items():
        if name.lower() in ("content-type", "content-disposition", "content-id"):
            view[name] = text(value, hints)
    return view


def _charset_param(part: Message) -> str | None:
    try:
        value = part.get_param("charset")
    except Exception:
        return None
    if isinstance(value, tuple):  # RFC 2231 form
        value = value[2]
    return str(value) if value else None


def filename(part: Message, hints: Sequence[str | None] = ()) -> str | None:
    """The filename as the mail meant it: RFC 2231 and RFC 2047 decoded.

    compat32 joins RFC 2231 continuations and applies their charset (an
    unknown charset leaves the %-decoded bytes as latin-1). RFC 2047 words
    are decoded afterwards, also inside quotes, where Outlook puts them.
    """
    view = content_headers(part, hints)
    try:
        name = view.get_filename()
    except Exception:  # malformed parameters: treat as unnamed
        return None
    if not name:
        return None
    name = unfold(name)
    if "=?" in name:
        name = decode_words(name, hints)
    name = re.sub(r"[\r\n]", "", name).strip()
    return name or None


def declared_type(part: Message) -> str:
    ctype = part.get_content_type()
    declared = str(part.get("content-type") or "").strip().lower()
    # compat32 says text/plain for a missing or malformed type ("pdf"); for
    # a file that means "unknown bytes", not "text".
    if ctype == "text/plain" and not declared.startswith("text/plain") and part.get_default_type() == "text/plain":
        return "application/octet-stream"
    return ctype


def extension(content_type: str, sniffed: str | None) -> str:
    for candidate in (content_type, sniffed):
        if candidate and (ext := _MIME.guess_extension(candidate)):
            return ext
    return ".eml" if content_type.startswith("message/") else ".bin"


def norm_cid(value: str, *, lower: bool = True) -> str:
    value = unfold(text(value)).strip().strip("<>").strip()
    return value.lower() if lower else value


def flatten(msg: Message, linesep: str) -> bytes:
    # Regenerated, not sliced from the input (the stdlib keeps no offsets):
    # headers folded as they came, body bytes unchanged but line ends.
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0).flatten(msg, linesep=linesep)
    return out.getvalue()


def decode_transfer(data: bytes, cte: str) -> bytes:
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    try:
        return base64.b64decode(b"".join(data.split()) + b"==", validate=False)
    except (binascii.Error, ValueError):
        return data


def decode_text(payload: bytes, charset: str | None, where: str, defects: list[str]) -> str:
    """A text part's content: its declared charset (with the known mislabels
    put right, ``charsets.decode_with``), then UTF-8, then a detector."""
    if charset and charsets.effective_codec(charset) is None:
        defects.append(f"unknown charset {charset!r} in {where}: read as utf-8 or detected")
    decoded = charsets.decode_with(payload, charset) if charset else None
    if decoded is not None:
        return decoded
    text, codec = charsets.decode_bytes(payload, (charset,) if charset else ())
    if charset and charsets.effective_codec(charset) is not None and codec != "ascii":
        defects.append(f"undecodable text in {where} as {charset!r}: read as {codec or 'latin-1, lossy'}")
    return text


def text(value, hints: Sequence[str | None] = ()) -> str:
    """A header value as text: raw 8-bit bytes read with ``hints`` (declared
    charsets, nearest first), then UTF-8, then a detector; see
    ``charsets.decode_bytes``."""
    return charsets.decode_header_value(value, hints)


def unfold(value: str) -> str:
    return _FOLD.sub("", value)


def decode_words(value: str, hints: Sequence[str | None] = ()) -> str:
    """RFC 2047 decoding that never raises; bad words stay as written.

    A word's declared charset goes through ``charsets.decode_with``, which
    knows the usual mislabels (GBK bytes said to be GB2312, Shift_JIS said
    to be ISO-2022-JP)."""
    value = text(value, hints)
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # HeaderParseError on bad base64, ...
        return value
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        elif charset is None:  # the unencoded runs, handed back this way by decode_header
            out.append(chunk.decode("raw-unicode-escape", "replace"))
        else:
            decoded = charsets.decode_with(chunk, charset)
            out.append(decoded if decoded is not None else charsets.decode_bytes(chunk, (charset, *hints))[0])
    return "".join(out)


