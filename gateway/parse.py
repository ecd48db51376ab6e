"""Raw message bytes → the body, inline parts, attachments and nested files.

Pure: no I/O, no database, no asyncio. Callers run it in a thread
(`asyncio.to_thread(parse_message, raw)`). It never raises on mail content:
what it cannot make sense of becomes a defect string.

Two parsers, each where it is good:

* `mail-parser` reads the envelope headers (From, To, Cc, Subject, Date): its
  address and date parsers are strict, decode display names and report what
  they reject.
* The MIME tree is walked with stdlib `email` (compat32, the most forgiving
  policy; `policy.default` raises on some broken headers). mail-parser
  flattens the tree into one attachment list: it cannot say which inline
  image the HTML references, it does not stop at a message/rfc822 part (the
  forwarded message's body text is merged into the outer body and its files
  into the outer attachments), and it has no notion of depth.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.header
import email.utils
import hashlib
import io
import mimetypes
import quopri
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from urllib.parse import unquote

import mailparser

from gateway.sniff import sniff_content_type

__all__ = [
    "MAX_NESTING_DEPTH",
    "ParsedDocument",
    "ParsedMail",
    "message_fingerprint",
    "parse_message",
    "sanitize_filename",
    "sniff_content_type",
]

MAX_NESTING_DEPTH = 3
MAX_FILENAME_BYTES = 200
MAX_DEFECTS = 200  # a torture message can yield thousands; the first ones say enough

# Added by relays and the receiving MTA, never by the sender: a re-delivery of
# the same message differs from the first copy in these only.
TRACE_HEADERS = frozenset({
    b"received", b"x-received", b"return-path", b"delivered-to", b"x-original-to",
    b"authentication-results", b"arc-seal", b"arc-message-signature",
    b"arc-authentication-results", b"received-spf", b"x-envelope-from", b"x-envelope-to",
})

_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
# Machine-readable parts of bounces, read receipts and abuse reports: status
# records, not files anyone attached. (Their text/* siblings and the returned
# message are handled by the general rules.) external-body holds no content.
_REPORT_TYPES = frozenset({
    "message/delivery-status", "message/global-delivery-status",
    "message/disposition-notification", "message/global-disposition-notification",
    "message/feedback-report", "message/global-headers", "message/external-body",
})
_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{p}{i}" for p in ("COM", "LPT") for i in "0123456789¹²³"}
)
_SAFE_PUNCTUATION = frozenset(" .-_()+,@")
_CID_REF = re.compile(r"cid:([^\s\"'<>()]+)", re.IGNORECASE)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# A fixed table, not the host's /etc/mime.types: fallback names must not
# change with the machine that parsed the mail.
_MIME = mimetypes.MimeTypes()
_MIME.add_type("text/calendar", ".ics")
_MIME.add_type("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx")
_MIME.add_type("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx")
_MIME.add_type("application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx")


@dataclass(frozen=True)
class ParsedDocument:
    kind: str  # "body" | "attachment" | "nested" | "inline"
    filename: str  # safe (sanitize_filename), never empty
    original_filename: str | None  # decoded name as the mail gave it
    content_type: str  # declared, lowercased
    sniffed_type: str | None  # judged from the bytes
    data: bytes
    parent: int | None = None  # inline: 0 (the body); nested: its message/rfc822 document
    content_id: str | None = None
    depth: int = 0


@dataclass(frozen=True)
class ParsedMail:
    message_id: str | None
    from_addr: str | None
    to: list[str]
    cc: list[str]
    delivered_to: list[str]
    subject: str | None
    date: datetime | None
    auth_results: list[str]
    defects: list[str]
    documents: list[ParsedDocument]  # [0] is always the body
    fingerprint: str


def parse_message(raw: bytes, *, max_depth: int = MAX_NESTING_DEPTH) -> ParsedMail:
    fingerprint = message_fingerprint(raw)
    try:
        return _parse(raw, max_depth, fingerprint)
    except Exception as exc:  # the contract: a mail is never lost to a parser bug
        text = raw.decode("utf-8", "replace").encode("utf-8")
        body = ParsedDocument("body", "body.txt", None, "text/plain", sniff_content_type(text), text)
        return ParsedMail(
            message_id=None, from_addr=None, to=[], cc=[], delivered_to=[], subject=None,
            date=None, auth_results=[], documents=[body], fingerprint=fingerprint,
            defects=[f"unparseable: {type(exc).__name__}: {exc}"],
        )


def message_fingerprint(raw: bytes) -> str:
    """sha256 of the message without trace headers, line endings normalised.

    Only the header block is looked at line by line; the body is hashed as
    one slice, so a 40 MB message costs a few copies, not a Python loop.
    """
    data = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if data.startswith(b"\n"):
        head, body = b"", data[1:]
    else:
        head, _, body = data.partition(b"\n\n")
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for lines in fields:
        name = lines[0].split(b":", 1)[0].strip().lower()
        if name not in TRACE_HEADERS:
            kept.append(b"".join(lines))  # unfolded: a relay may refold
    return hashlib.sha256(b"\n".join(kept) + b"\n\n" + body.rstrip()).hexdigest()


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


# --- the walk ------------------------------------------------------------

def _parse(raw: bytes, max_depth: int, fingerprint: str) -> ParsedMail:
    msg = email.message_from_bytes(raw, _class=_Part, policy=compat32)
    first_line = raw[: raw.find(b"\n") + 1]
    walk = _Walk(max_depth, linesep="\r\n" if first_line.endswith(b"\r\n") else "\n")
    walk.message(msg, "", depth=0, parent=None)
    fields, defects = _header_fields(msg)
    defects += walk.defects
    for root, base in [(msg, "")] + walk.reparsed:
        defects += _part_defects(root, base)
    if len(defects) > MAX_DEFECTS:
        defects = defects[:MAX_DEFECTS] + [f"... and {len(defects) - MAX_DEFECTS} more defects"]
    return ParsedMail(**fields, defects=defects, documents=walk.documents, fingerprint=fingerprint)


class _Part(Message):
    """compat32 keeps the line break of a folded boundary parameter, so no
    delimiter line ever matches it; unfolding (RFC 5322 2.2.3) fixes that."""

    def get_boundary(self, failobj=None):
        boundary = super().get_boundary(failobj)
        return _unfold(boundary) if isinstance(boundary, str) else boundary


class _Walk:
    """Turns one message tree into documents, in MIME order.

    A message is walked without entering the messages attached to it; each
    of those becomes a document and is walked in turn, one level deeper,
    with its files becoming "nested" documents.
    """

    def __init__(self, max_depth: int, linesep: str):
        self.max_depth = max_depth
        self.linesep = linesep  # attached messages keep the line ends of the mail they came in
        self.documents: list[ParsedDocument] = []
        self.defects: list[str] = []
        self.reparsed: list[tuple[Message, str]] = []  # inner messages decoded from base64/QP

    def message(self, msg: Message, base: str, *, depth: int, parent: int | None) -> None:
        leaves = list(_leaves(msg, base))
        body = _choose_body(leaves)
        text = self._text_of(*body) if body else ""
        html = body is not None and body[0].get_content_type() == "text/html"
        cids = {_norm_cid(unquote(ref)) for ref in _CID_REF.findall(text)} if html else set()
        if depth == 0:
            data = text.encode("utf-8", "replace")
            self.documents.append(ParsedDocument(
                kind="body", filename="body.html" if html else "body.txt",
                original_filename=None, content_type="text/html" if html else "text/plain",
                sniffed_type=sniff_content_type(data), data=data,
            ))
        for part, path, control in leaves:
            if body is not None and part is body[0]:
                continue
            try:
                self._leaf(part, path, control, cids, depth, parent)
            except Exception as exc:  # one bad part must not cost the others
                self.defects.append(f"part {path}: skipped, {type(exc).__name__}: {exc}")

    def _leaf(self, part, path, control, cids, depth, parent) -> None:
        role = _role(part, control, cids)
        kind = "attachment" if depth == 0 else "nested"
        if role == "inline" and depth == 0:
            self._add("inline", part, path, depth=0, parent=0)
        elif role == "inline":
            pass  # an image of the attached message's own body: inside its .eml already
        elif role == "attachment":
            self._add(kind, part, path, depth=depth, parent=parent)
        elif role == "message":
            data, inner = self._attached_message(part, path)
            name = _filename(part)
            subject = _decode_words(_unfold(_text(inner.get("subject", "")))) if inner else ""
            # A subject is not a path: its slashes are characters to replace.
            stem = sanitize_filename(re.sub(r"[/\\]", "_", subject), fallback="")
            fallback = sanitize_filename(f"{stem}.eml", fallback="forwarded.eml") if stem else "forwarded.eml"
            index = self._add(kind, part, path, depth=depth, parent=parent, data=data,
                              content_type="message/rfc822", name=name, fallback=fallback)
            if inner is None:
                return
            if depth + 1 > self.max_depth:
                self.defects.append(f"nesting depth limit reached: part {path} not opened"
                                    f" (max depth {self.max_depth})")
                return
            self.message(inner, path, depth=depth + 1, parent=index)

    def _add(self, kind, part, path, *, depth, parent, data=None, content_type=None,
             name=None, fallback=None) -> int:
        index = len(self.documents)
        if data is None:
            data = part.get_payload(decode=True) or b""
        if content_type is None:
            content_type = _declared_type(part)
        if name is None:
            name = _filename(part)
        sniffed = sniff_content_type(data)
        if fallback is None:
            prefix = "inline" if kind == "inline" else "attachment"
            fallback = f"{prefix}-{index}{_extension(content_type, sniffed)}"
        cid = _norm_cid(str(_content_headers(part).get("content-id") or ""), lower=False)
        self.documents.append(ParsedDocument(
            kind=kind, filename=sanitize_filename(name, fallback=fallback),
            original_filename=name, content_type=content_type,
            sniffed_type=sniffed, data=data, parent=parent,
            content_id=cid or None, depth=depth,
        ))
        return index

    def _attached_message(self, part: Message, path: str) -> tuple[bytes, Message | None]:
        """The attached message's bytes, and its tree to walk."""
        payload = part.get_payload()
        if not isinstance(payload, list) or not payload:
            data = part.get_payload(decode=True) or b""
            inner = email.message_from_bytes(data, _class=_Part, policy=compat32) if data.strip() else None
            if inner is not None:
                self.reparsed.append((inner, path))
            return data, inner
        inner = payload[0]
        data = _flatten(inner, self.linesep)
        # compat32 parses the part's text as a message whatever its
        # Content-Transfer-Encoding; an encoded one (some clients base64 a
        # forwarded mail) parsed to garbage and must be decoded and re-read.
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):
            data = _decode_transfer(data, cte)
            inner = email.message_from_bytes(data, _class=_Part, policy=compat32)
            self.reparsed.append((inner, path))
        return data, inner

    def _text_of(self, part: Message, path: str) -> str:
        payload = part.get_payload(decode=True) or b""
        return _decode_text(payload, part.get_content_charset(), f"part {path}", self.defects)


def _leaves(msg: Message, base: str):
    """(part, path, is_control) for the non-multipart parts of one message.

    Iterative on purpose: torture mails nest multiparts deeper than the
    recursion limit allows a recursive walk. Attached messages are leaves.
    """
    stack = [(msg, base, False)]
    while stack:
        part, path, control = stack.pop()
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            subtype = part.get_content_subtype()
            children = part.get_payload()
            for i in reversed(range(len(children))):
                # The signature of multipart/signed and the control part of
                # multipart/encrypted belong to the structure: nobody attached them.
                is_control = (subtype == "signed" and i == 1) or (subtype == "encrypted" and i == 0)
                stack.append((children[i], f"{path}.{i + 1}" if path else str(i + 1), is_control))
        else:
            yield part, path or "1", control


def _role(part: Message, control: bool, cids: set[str]) -> str:
    """What a leaf is: "inline", "attachment", "message", or "" (no document).

    Text parts without a filename and without an attachment disposition are
    body content, never attachments: the alternatives of the body, mailing
    list footers appended to multipart/mixed, text/rfc822-headers of a
    bounce, text/calendar of an invite. Only the chosen body becomes a
    document; the rest stays readable in the stored raw message.
    """
    if control:
        return ""
    ctype = part.get_content_type()
    if ctype in _MESSAGE_TYPES:
        return "message"
    headers = _content_headers(part)
    cid = headers.get("content-id")
    # The HTML needs it to render, so it stays with the body even when a
    # client also marked it "attachment".
    if cid and _norm_cid(str(cid)) in cids:
        return "inline"
    if part.get_content_disposition() == "attachment" or _filename(part):
        return "attachment"
    if part.get_content_maintype() in ("text", "multipart"):  # multipart here: boundary lost
        return ""
    if ctype in _REPORT_TYPES:
        return ""
    return "attachment"  # images, PDFs... even inline: a person attached them


def _choose_body(leaves):
    """First HTML part, else first text/plain, else any other text part.

    A multipart whose boundary never appears is a leaf holding the whole
    raw text: shown as plain text so that a person can still read it.
    """
    candidates = [(p, path) for p, path, control in leaves
                  if not control and _role(p, control, set()) == ""
                  and p.get_content_type() not in _REPORT_TYPES]
    for want in ("text/html", "text/plain"):
        for part, path in candidates:
            ctype = part.get_content_type()
            if ctype == want or (want == "text/plain" and part.get_content_maintype() == "multipart"):
                return part, path
    return next(iter(candidates), None)


# --- headers ---------------------------------------------------------------

_MAILPARSER_HEADERS = frozenset({"from", "to", "cc", "subject", "date"})


def _header_fields(msg: Message) -> tuple[dict, list[str]]:
    """The ParsedMail header fields, and the defects found reading them."""
    defects: list[str] = []
    # mail-parser gets a copy of the few headers it reads, already turned
    # into text: it would otherwise walk and decode every part again, and it
    # renders raw 8-bit header bytes as backslash escapes.
    view = Message()
    for name, value in msg.raw_items():
        if name.lower() in _MAILPARSER_HEADERS:
            view[name] = _unfold(_text(value))
    view.set_payload("")
    try:
        mp = mailparser.MailParser(view)
        from_pairs, to_pairs, cc_pairs = mp.from_, mp.to, mp.cc
        subject, date = mp.subject, mp.date
        for group in mp.defects:
            for found in group.values():
                defects.extend(found)
    except Exception as exc:
        defects.append(f"header parsing failed: {type(exc).__name__}: {exc}")
        from_pairs = email.utils.getaddresses(_values(msg, "from"))
        to_pairs = email.utils.getaddresses(_values(msg, "to"))
        cc_pairs = email.utils.getaddresses(_values(msg, "cc"))
        subject, date = None, None
    if isinstance(subject, list):
        subject = subject[0]
    if date is None:
        date = _lenient_date(next(iter(_values(msg, "date")), None))

    from_addr = None
    if from_pairs:
        name, addr = from_pairs[0]
        from_addr = f"{name} <{addr}>" if name else addr
    elif _values(msg, "from"):  # "MAILER-DAEMON <>" and friends: show what is there
        from_addr = _decode_words(_values(msg, "from")[0]).strip() or None

    message_id = next(iter(_values(msg, "message-id")), "").strip()
    bracketed = re.search(r"<([^<>]*)>", message_id)
    message_id = (bracketed.group(1) if bracketed else message_id).strip() or None

    return {
        "message_id": message_id,
        "from_addr": from_addr,
        "to": _bare(to_pairs),
        "cc": _bare(cc_pairs),
        # mail-parser keeps only the first occurrence of an address header;
        # every hop may add its own Delivered-To, and it ignores X-Original-To.
        "delivered_to": _bare(email.utils.getaddresses(
            _values(msg, "delivered-to") + _values(msg, "x-original-to"))),
        "subject": (subject or "").strip() if _values(msg, "subject") else None,
        "date": date.astimezone(timezone.utc) if date else None,
        "auth_results": [v.strip() for v in _values(msg, "authentication-results")],
    }, defects


def _values(msg: Message, name: str) -> list[str]:
    name = name.lower()
    return [_unfold(_text(v)) for k, v in msg.raw_items() if k.lower() == name]


def _bare(pairs) -> list[str]:
    seen: dict[str, None] = {}
    for _, addr in pairs:
        addr = addr.strip().lower()
        if addr and "@" in addr:
            seen.setdefault(addr)
    return list(seen)


def _lenient_date(value: str | None) -> datetime | None:
    # mail-parser refuses dates without a zone or with "-600"; such mail
    # (old, or from broken software) still had a date, read as UTC.
    if not value:
        return None
    try:
        date = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return date if date.tzinfo else date.replace(tzinfo=timezone.utc)


# --- parts -----------------------------------------------------------------

def _content_headers(part: Message) -> Message:
    """The part's Content-* headers with raw 8-bit bytes turned into text.

    compat32 replaces each raw non-ASCII byte in a parameter by U+FFFD; many
    clients put UTF-8 (or KOI8-R, ...) filenames there unencoded.
    """
    view = Message()
    for name, value in part.raw_items():
        if name.lower() in ("content-type", "content-disposition", "content-id"):
            view[name] = _text(value)
    return view


def _filename(part: Message) -> str | None:
    """The filename as the mail meant it: RFC 2231 and RFC 2047 decoded.

    compat32 joins RFC 2231 continuations and applies their charset (an
    unknown charset leaves the %-decoded bytes as latin-1). RFC 2047 words
    are decoded afterwards, also inside quotes, where Outlook puts them.
    """
    view = _content_headers(part)
    try:
        name = view.get_filename()
    except Exception:  # malformed parameters: treat as unnamed
        return None
    if not name:
        return None
    name = _unfold(name)
    if "=?" in name:
        name = _decode_words(name)
    name = re.sub(r"[\r\n]", "", name).strip()
    return name or None


def _declared_type(part: Message) -> str:
    ctype = part.get_content_type()
    declared = str(part.get("content-type") or "").strip().lower()
    # compat32 says text/plain for a missing or malformed type ("pdf"); for
    # a file that means "unknown bytes", not "text".
    if ctype == "text/plain" and not declared.startswith("text/plain") and part.get_default_type() == "text/plain":
        return "application/octet-stream"
    return ctype


def _extension(content_type: str, sniffed: str | None) -> str:
    for candidate in (content_type, sniffed):
        if candidate and (ext := _MIME.guess_extension(candidate)):
            return ext
    return ".eml" if content_type.startswith("message/") else ".bin"


def _norm_cid(value: str, *, lower: bool = True) -> str:
    value = _unfold(_text(value)).strip().strip("<>").strip()
    return value.lower() if lower else value


def _flatten(msg: Message, linesep: str) -> bytes:
    # Regenerated, not sliced from the input (the stdlib keeps no offsets):
    # headers folded as they came, body bytes unchanged but line ends.
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0).flatten(msg, linesep=linesep)
    return out.getvalue()


def _decode_transfer(data: bytes, cte: str) -> bytes:
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    try:
        return base64.b64decode(b"".join(data.split()) + b"==", validate=False)
    except (binascii.Error, ValueError):
        return data


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    name = str(charset).strip().strip("\"'").lower()
    for candidate in (name, name.removeprefix("x-"), name.replace("unicode-1-1-", "")):
        try:
            info = codecs.lookup(candidate)
        except (LookupError, ValueError, TypeError):
            continue
        if getattr(info, "_is_text_encoding", True):  # not rot13, base64_codec...
            return info.name
    return None


def _decode_text(payload: bytes, charset: str | None, where: str, defects: list[str]) -> str:
    """Declared charset, then UTF-8 (the usual mislabel), then lossy."""
    codec = _codec(charset)
    if charset and codec is None:
        defects.append(f"unknown charset {charset!r} in {where}: read as utf-8/latin-1")
    for attempt in (codec, "utf-8"):
        if attempt:
            try:
                return payload.decode(attempt)
            except UnicodeError:
                pass
    if codec is None:
        return payload.decode("latin-1")
    defects.append(f"undecodable text in {where} as {charset!r}: characters replaced")
    return payload.decode(codec, "replace")


def _text(value) -> str:
    """A header value as text: raw 8-bit bytes read as UTF-8, else latin-1."""
    value = str(value)
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # UTF-8 cut mid-character (Yahoo truncates long names) reads better with
    # one replacement character than as latin-1 mojibake.
    lossy = raw.decode("utf-8", "replace")
    bad = lossy.count("\ufffd")
    if bad <= 2 and bad * 10 < sum(b > 127 for b in raw):
        return lossy
    return raw.decode("latin-1")


def _unfold(value: str) -> str:
    return _FOLD.sub("", value)


def _decode_words(value: str) -> str:
    """RFC 2047 decoding that never raises; bad words stay as written."""
    value = _text(value)
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
            codec = _codec(charset)
            try:
                out.append(chunk.decode(codec or "utf-8"))
            except UnicodeError:
                out.append(chunk.decode(codec or "latin-1", "replace"))
    return "".join(out)


def _part_defects(root: Message, base: str) -> list[str]:
    found = []
    stack = [(root, base)]
    while stack:
        part, path = stack.pop()
        ctype = part.get_content_type()
        for defect in part.defects:
            found.append(f"{type(defect).__name__} in part {path or 'root'} ({ctype})")
        encoded = str(part.get("content-transfer-encoding", "")).strip().lower() in ("base64", "quoted-printable")
        if part.is_multipart() and not (part.get_content_maintype() == "message" and encoded):
            children = part.get_payload()
            nested = part.get_content_maintype() == "message" and len(children) == 1
            for i in reversed(range(len(children))):
                child_path = path if nested else (f"{path}.{i + 1}" if path else str(i + 1))
                stack.append((children[i], child_path))
    return found
