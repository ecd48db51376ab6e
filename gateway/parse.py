"""Raw message bytes → header fields, the part ledger, documents, defects.

Pure: no I/O, no database, no asyncio. Callers run it off the event loop (a
helper process or a thread). It never raises on mail content: what it cannot
make sense of becomes a defect string.

Two parsers, each where it is good:

* `mail-parser` reads the envelope headers (From, To, Cc, Subject, Date): its
  address and date parsers are strict, decode display names and report what
  they reject.
* The MIME tree is walked with stdlib `email` (compat32, the most forgiving
  policy; `policy.default` raises on some broken headers) by `gateway.ledger`,
  which gives every part an outcome. mail-parser flattens the tree into one
  attachment list: it cannot say which inline image the HTML references, it
  does not stop at a message/rfc822 part, and it has no notion of depth.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message

import mailparser

from gateway import mime, parse_guard
from gateway.ledger import Entry, Ledger, ParsedDocument
from gateway.mime import sanitize_filename
from gateway.sniff import sniff_content_type

__all__ = [
    "FINGERPRINT_HEADERS",
    "MAX_NESTING_DEPTH",
    "ParsedDocument",
    "ParsedMail",
    "message_fingerprint",
    "parse_message",
    "sanitize_filename",
    "sniff_content_type",
]

MAX_NESTING_DEPTH = 3
MAX_DEFECTS = 200  # a torture message can yield thousands; the first ones say enough

# The author's headers: what the fingerprint covers, with the body. Everything
# else (Received, DKIM-Signature, X-Spam-Status, X-MS-Exchange-*, Resent-*,
# ...) may be added, removed or rewritten by relays, filters, mailboxes and
# re-senders in transit. Sender, Reply-To and the threading headers are
# written by the author's client; the Content-* headers say how to read the
# body, so they belong to it.
FINGERPRINT_HEADERS = (
    b"message-id", b"from", b"date", b"subject", b"to", b"cc",
    b"sender", b"reply-to", b"in-reply-to", b"references",
    b"content-type", b"content-transfer-encoding", b"content-disposition",
)
_TRAILING_SPACE = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.rstrip() strips
_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but ':'


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
    parts: list[Entry]  # the part ledger, in walk order

    def ledger(self) -> list[dict]:
        return [e.as_dict() for e in self.parts]


def parse_message(raw: bytes, *, max_depth: int = MAX_NESTING_DEPTH) -> ParsedMail:
    fingerprint = message_fingerprint(raw)  # of the message as received
    try:
        capped, cut = parse_guard.cap_headers(raw)
        mail = _parse(capped, max_depth, fingerprint)
        if cut:
            mail.defects[:0] = cut
        return mail
    except Exception as exc:  # the contract: a mail is never lost to a parser bug
        text = raw.decode("utf-8", "replace").encode("utf-8")
        body = ParsedDocument("body", "body.txt", None, "text/plain", sniff_content_type(text), text)
        entry = Entry("1", "message/rfc822", None, len(raw), hashlib.sha256(raw).hexdigest(),
                      "body", "unparseable", 0)
        return ParsedMail(
            message_id=None, from_addr=None, to=[], cc=[], delivered_to=[], subject=None,
            date=None, auth_results=[], documents=[body], fingerprint=fingerprint, parts=[entry],
            defects=[f"unparseable: {type(exc).__name__}: {exc}"],
        )


# An unparsed mail's headers are read from this much of its start only.
_UNPARSED_HEAD = 64 * 1024
_UNPARSED_VALUE = 2048


def unparsed_mail(raw: bytes, reason: str) -> ParsedMail:
    """A mail whose parse did not finish (it ran past the deadline): its few
    routing headers read from the start of the message with bounded
    effort, the raw message itself as the body document."""
    head = raw[:_UNPARSED_HEAD]
    end = re.search(rb"\r?\n\r?\n", head)
    head = head[: end.start()] if end else head
    fields: dict[str, list[str]] = {}
    for m in re.finditer(rb"(?im)^(message-id|from|to|cc|subject|date|delivered-to|x-original-to)[ \t]*:(.*(?:\r?\n[ \t].*)*)", head):
        value = m.group(2)[:_UNPARSED_VALUE].decode("utf-8", "replace")
        fields.setdefault(m.group(1).decode().lower(), []).append(" ".join(value.split()))

    def addresses(*names: str) -> list[str]:
        return _bare(email.utils.getaddresses([v for n in names for v in fields.get(n, [])]))

    message_id = (fields.get("message-id") or [""])[0].strip("<> ") or None
    subject = fields.get("subject")
    sha = hashlib.sha256(raw).hexdigest()
    body = ParsedDocument("body", "message.eml", None, "message/rfc822", sniff_content_type(raw), raw)
    return ParsedMail(
        message_id=message_id,
        from_addr=(fields.get("from") or [None])[0],
        to=addresses("to"),
        cc=addresses("cc"),
        delivered_to=addresses("delivered-to", "x-original-to"),
        subject=mime.decode_words(subject[0])[:_UNPARSED_VALUE] if subject else None,
        date=_lenient_date((fields.get("date") or [None])[0]),
        auth_results=[],
        defects=[reason],
        documents=[body],
        fingerprint=message_fingerprint(raw),
        parts=[Entry("1", "message/rfc822", None, len(raw), sha, "document", "parse_timeout", 0)],
    )


def message_fingerprint(raw: bytes) -> str:
    """sha256 of the author's headers and the body, line endings normalised.

    Only the header block is looked at line by line; the body is hashed as
    one slice, so a 40 MB message costs a few copies, not a Python loop.
    Header values are unfolded and their whitespace collapsed (a relay may
    refold them); names are compared without case; repeated fields keep
    their order among themselves.
    """
    data = raw.replace(b"\r\n", b"\n")
    if b"\r" in data:  # bare CRs (old Mac line ends) are rare: no second copy otherwise
        data = data.replace(b"\r", b"\n")
    if data.startswith(b"\n"):
        head_end, body_start = 0, 1
    else:
        i = data.find(b"\n\n")
        head_end, body_start = (len(data), len(data)) if i == -1 else (i, i + 2)
    head = data[:head_end]
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for lines in fields:
        line = b"".join(lines)
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        if name in FINGERPRINT_HEADERS:
            kept.append(name + b":" + b" ".join(value.split()))
        elif not colon or not _FIELD_NAME.fullmatch(name):
            # Not a header field: a message without headers, or text before
            # them. It is content, and must tell such messages apart.
            kept.append(b"\x00" + line)
    # By name (stable for repeated fields): Exchange and some filters
    # rewrite the header block in an order of their own.
    kept.sort(key=lambda field: field.partition(b":")[0])
    # The body hashed where it lies, trailing whitespace left out: no copies
    # of a 40 MB body for partition, rstrip and concatenation.
    end = len(data)
    while end > body_start and data[end - 1] in _TRAILING_SPACE:
        end -= 1
    digest = hashlib.sha256(b"\n".join(kept) + b"\n\n")
    digest.update(memoryview(data)[body_start:end])
    return digest.hexdigest()


# --- the walk ------------------------------------------------------------

def _parse(raw: bytes, max_depth: int, fingerprint: str) -> ParsedMail:
    msg = mime.parse_bytes(raw)
    first_line = raw[: raw.find(b"\n") + 1]
    ledger = Ledger(max_depth, linesep="\r\n" if first_line.endswith(b"\r\n") else "\n")
    ledger.message(msg, "", depth=0, parent=None)
    fields, defects = _header_fields(msg, ledger.charsets)
    defects += ledger.defects
    for root, base in [(msg, "")] + ledger.reparsed:
        defects += _part_defects(root, base)
    if len(defects) > MAX_DEFECTS:
        defects = defects[:MAX_DEFECTS] + [f"... and {len(defects) - MAX_DEFECTS} more defects"]
    return ParsedMail(**fields, defects=defects, documents=ledger.documents,
                      fingerprint=fingerprint, parts=ledger.entries)


# --- headers ---------------------------------------------------------------

_MAILPARSER_HEADERS = frozenset({"from", "to", "cc", "subject", "date"})


def _header_fields(msg: Message, hints: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """The ParsedMail header fields, and the defects found reading them."""
    defects: list[str] = []
    # mail-parser gets a copy of the few headers it reads, already turned
    # into text: it would otherwise walk and decode every part again, and it
    # renders raw 8-bit header bytes as backslash escapes.
    view = Message()
    for name, value in msg.raw_items():
        if name.lower() in _MAILPARSER_HEADERS:
            view[name] = mime.unfold(mime.text(value, hints))
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
    if _values(msg, "subject"):
        # Our own RFC 2047 decoding: it knows the charset mislabels (a
        # Shift_JIS word labelled ISO-2022-JP) that mail-parser's does not.
        subject = mime.decode_words(_values(msg, "subject", hints)[0], hints)
    if date is None:
        date = _lenient_date(next(iter(_values(msg, "date")), None))

    from_addr = None
    if from_pairs:
        name, addr = from_pairs[0]
        from_addr = f"{name} <{addr}>" if name else addr
    elif _values(msg, "from"):  # "MAILER-DAEMON <>" and friends: show what is there
        from_addr = mime.decode_words(_values(msg, "from")[0]).strip() or None

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


def _values(msg: Message, name: str, hints: tuple[str, ...] = ()) -> list[str]:
    name = name.lower()
    return [mime.unfold(mime.text(v, hints)) for k, v in msg.raw_items() if k.lower() == name]


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
