"""The part ledger: every MIME part of a mail, and what became of it.

Walks a parsed message tree (stdlib ``email``, compat32) and gives each part
exactly one outcome:

=============  ==============================================================
``body``       its text is in the body document (all the mail's own inline
               text and HTML parts, in order)
``inline``     kept with the body (an image the HTML references by cid)
``alternative`` the other rendering of the body (multipart/alternative)
``document``   stored as a document of its own, which gets a task
``container``  opened: a multipart, a forwarded message (message/rfc822)
``skipped``    no document; ``reason`` says why (``SKIP_REASONS``)
=============  ==============================================================

A uuencoded file inside a text part is listed too, as ``PATH#uuN``.

Paths follow IMAP's part numbering (RFC 3501 6.4.5): ``1``, ``1.2``; a
multipart at the root of a message is ``0`` (``2.0`` inside the forwarded
message at ``2``).

Pure: no I/O. Never raises on mail content.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.message import Message
from urllib.parse import unquote

from gateway import mime, uuencode
from gateway.bodytext import Frag, render_html, render_text
from gateway.sniff import sniff_content_type

OUTCOMES = ("body", "inline", "alternative", "document", "container", "skipped")
# Why a part made no document. Documented in docs/ledger.md.
SKIP_REASONS = {
    "signature": "a detached S/MIME or PGP signature",
    "pgp_control": "the control part of multipart/encrypted (\"Version: 1\")",
    "empty": "no content (0 bytes, or only whitespace for text)",
    "external_body": "message/external-body: a pointer to content elsewhere, none carried",
    "depth_limit": "nested deeper than the limit; kept in the raw message",
    "too_large": "over a size limit; kept in the raw message",
    "part_limit": "past the first MAX_DOCUMENTS documents of one mail; kept in the raw message",
    "unparseable": "its content could not be decoded; kept in the raw message",
}

# A mail with more files than this is a part bomb, not a delivery: 24,000 tiny
# parts made 24,000 tasks and one commit of 16 s. The rest stays in the raw
# message, each part listed as skipped (part_limit).
MAX_DOCUMENTS = 1000

# Deeper multipart nesting than this is a torture test, not a mail: the rest
# of that branch is skipped (depth_limit), the walk stays within the stack.
MAX_MULTIPART_DEPTH = 60

_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_SIGNATURE_TYPES = frozenset({
    "application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature",
})
_CID_REF = re.compile(r"cid:([^\s\"'<>()]+)", re.IGNORECASE)


@dataclass
class Entry:
    path: str
    content_type: str
    filename: str | None
    size: int
    sha256: str | None
    outcome: str
    reason: str | None = None
    document: int | None = None  # index into the mail's documents

    def as_dict(self) -> dict:
        return {
            "path": self.path, "content_type": self.content_type, "filename": self.filename,
            "size": self.size, "sha256": self.sha256, "outcome": self.outcome,
            "reason": self.reason, "document": self.document,
        }


@dataclass(frozen=True)
class ParsedDocument:
    kind: str  # body | alternative | inline | attachment | forwarded | nested
    filename: str  # safe (sanitize_filename), never empty
    original_filename: str | None  # decoded name as the mail gave it
    content_type: str  # declared, lowercased
    sniffed_type: str | None  # judged from the bytes
    data: bytes
    parent: int | None = None  # inline: its body; nested: its forwarded message
    content_id: str | None = None
    depth: int = 0
    part: str | None = None  # ledger path; None for the body, made of several parts
    blank: bool = False  # a body with no visible text
    nbytes: int | None = None  # the size, once ``data`` is dropped (a helper's answer)

    @property
    def size(self) -> int:
        return len(self.data) if self.nbytes is None else self.nbytes


class Ledger:
    """One mail's walk: documents (``[0]`` is the body), entries, defects."""

    def __init__(self, max_depth: int, linesep: str) -> None:
        self.max_depth = max_depth
        self.linesep = linesep  # attached messages keep the line ends of the mail they came in
        self.documents: list[ParsedDocument] = []
        self.entries: list[Entry] = []
        self.defects: list[str] = []
        self.reparsed: list[tuple[Message, str]] = []  # inner messages decoded from base64/QP
        self.charsets: tuple[str, ...] = ()  # declared in the mail, root first: hints for raw 8-bit headers
        self._limit_noted = False
        self._headers_cache: dict[tuple[int, tuple[str, ...]], Message] = {}
        self._names_cache: dict[tuple[int, tuple[str, ...]], str | None] = {}

    # --- one message ---------------------------------------------------------

    def message(self, msg: Message, base: str, *, depth: int, parent: int | None,
                subject: str = "") -> int:
        """Walk one message; return the index of its body document."""
        body_index = len(self.documents)
        self.documents.append(None)  # type: ignore[arg-type]  # filled below, once the text is known
        cids, hints = _scan(msg)
        if depth == 0:
            self.charsets = hints
        ctx = _Ctx(depth=depth, parent=parent, body=body_index, cids=cids, hints=hints)
        if msg.get_content_maintype() == "multipart" and msg.is_multipart():
            frags = self._multipart(msg, f"{base}.0" if base else "0", base, ctx, 0)
        else:
            frags = self._leaf(msg, f"{base}.1" if base else "1", ctx)
        has_html = any(f.html is not None for f in frags)
        alt_index = len(self.documents) if depth == 0 and has_html else None  # appended last, below
        for f in frags:
            for i in f.entries:
                self.entries[i].outcome, self.entries[i].document = "body", body_index
            for i in f.alt_entries:
                self.entries[i].outcome = "alternative"
                self.entries[i].document = alt_index
        text = render_text(frags)
        blank = not text.strip()
        if has_html:
            data, ctype, ext = render_html(frags).encode("utf-8"), "text/html", ".html"
        else:
            data, ctype, ext = text.encode("utf-8"), "text/plain", ".txt"
        if depth == 0:
            name = "body" + ext
            kind = "body"
        else:
            stem = mime.sanitize_filename(re.sub(r"[/\\]", "_", subject), fallback="") if subject else ""
            name = mime.sanitize_filename(f"{stem}{ext}", fallback="forwarded-body" + ext) if stem else "forwarded-body" + ext
            kind = "nested"
        self.documents[body_index] = ParsedDocument(
            kind=kind, filename=name, original_filename=None, content_type=ctype,
            sniffed_type=sniff_content_type(data), data=data, parent=parent, depth=depth, blank=blank,
        )
        if depth == 0 and has_html:
            # The plain rendering, for queues with body_format = "text".
            alt = text.encode("utf-8")
            self.documents.append(ParsedDocument(
                kind="alternative", filename="body.txt", original_filename=None,
                content_type="text/plain", sniffed_type=sniff_content_type(alt), data=alt,
                parent=body_index, blank=blank,
            ))
        return body_index

    def _multipart(self, part: Message, path: str, child_base: str, ctx: "_Ctx", level: int) -> list[Frag]:
        self._entry(part, path, "container", size=0, sha=None)
        children = part.get_payload()
        if not isinstance(children, list):
            children = []
        subtype = part.get_content_subtype()
        if level >= MAX_MULTIPART_DEPTH:
            self._skip_subtree(children, child_base or path)
            self.defects.append(f"part {path}: multipart nesting over {MAX_MULTIPART_DEPTH}, not opened")
            return []
        rendered: list[list[Frag]] = []
        for i, child in enumerate(children, 1):
            child_path = f"{child_base}.{i}" if child_base else str(i)
            # The signature of multipart/signed and the control part of
            # multipart/encrypted belong to the structure: nobody attached them.
            if subtype == "signed" and i == 2:
                self._entry_skip(child, child_path, "signature")
                rendered.append([])
            elif subtype == "encrypted" and i == 1:
                self._entry_skip(child, child_path, "pgp_control")
                rendered.append([])
            elif child.get_content_maintype() == "multipart" and child.is_multipart():
                rendered.append(self._multipart(child, child_path, child_path, ctx, level + 1))
            else:
                rendered.append(self._leaf(child, child_path, ctx))
        if subtype != "alternative":
            return [f for frags in rendered for f in frags]
        return self._alternative(rendered)

    def _alternative(self, rendered: list[list[Frag]]) -> list[Frag]:
        """The richest HTML rendering (the last one: RFC 2046 5.1.4 orders
        them plainest first) and the first plain one; the rest is ``alternative``."""
        with_html = [i for i, fr in enumerate(rendered) if any(f.html is not None for f in fr)]
        plain = [i for i, fr in enumerate(rendered) if fr and all(f.html is None for f in fr)]
        h = with_html[-1] if with_html else None
        t = plain[0] if plain else None
        if h is None and t is None:
            return []
        for i, frags in enumerate(rendered):
            if i not in (h, t):
                for f in frags:
                    for e in f.entries + f.alt_entries:
                        self.entries[e].outcome = "alternative"
        if h is None:
            return rendered[t]
        html_frags = rendered[h]
        merged = Frag(
            text=render_text(rendered[t]) if t is not None else render_text(html_frags),
            html=render_html(html_frags),
            entries=[e for f in html_frags for e in f.entries],
            alt_entries=[e for f in html_frags for e in f.alt_entries],
        )
        if t is not None:
            merged.alt_entries += [e for f in rendered[t] for e in f.entries + f.alt_entries]
        return [merged]

    def _skip_subtree(self, children, base: str) -> None:
        stack = [(c, f"{base}.{i}") for i, c in enumerate(children, 1)]
        while stack:
            part, path = stack.pop()
            sub = part.get_payload() if part.is_multipart() else None
            if isinstance(sub, list) and part.get_content_maintype() == "multipart":
                self._entry(part, path, "skipped", size=0, sha=None, reason="depth_limit")
                stack.extend((c, f"{path}.{i}") for i, c in enumerate(sub, 1))
            else:
                self._entry_skip(part, path, "depth_limit")

    # --- one leaf ------------------------------------------------------------

    def _leaf(self, part: Message, path: str, ctx: "_Ctx") -> list[Frag]:
        try:
            return self._classify(part, path, ctx)
        except Exception as exc:  # one bad part must not cost the others
            self.defects.append(f"part {path}: skipped, {type(exc).__name__}: {exc}")
            self._entry(part, path, "skipped", size=0, sha=None, reason="unparseable")
            return []

    def _classify(self, part: Message, path: str, ctx: "_Ctx") -> list[Frag]:
        ctype = part.get_content_type()
        if ctype in _MESSAGE_TYPES:
            self._forwarded(part, path, ctx)
            return []
        if ctype == "message/external-body":
            self._entry_skip(part, path, "external_body")
            return []
        if ctype in _SIGNATURE_TYPES:
            self._entry_skip(part, path, "signature")
            return []
        if part.get_content_maintype() == "message":
            # delivery-status, disposition-notification...: compat32 holds
            # their fields as sub-messages; the bytes are what was sent.
            data = _message_part_bytes(part, self.linesep)
            return self._document(part, path, ctx, data=data)
        headers = self._content_headers(part, ctx.hints)
        cid = headers.get("content-id")
        data = part.get_payload(decode=True) or b""
        # The HTML needs it to render, so it stays with the body even when a
        # client also marked it "attachment".
        if cid and mime.norm_cid(str(cid)) in ctx.cids:
            if not data:
                self._entry(part, path, "skipped", size=0, sha=None, reason="empty")
                return []
            if self._full(part, path, data):
                return []
            index = self._add_document(part, path, "inline", ctx, data=data, parent=ctx.body)
            self._entry(part, path, "inline", data=data, document=index)
            return []
        named = part.get_content_disposition() == "attachment" or self._filename(part, ctx.hints)
        if not named and (ctype in ("text/plain", "text/html") or part.get_content_maintype() == "multipart"):
            return self._body_text(part, path, data)
        return self._document(part, path, ctx, data=data)

    def _body_text(self, part: Message, path: str, payload: bytes) -> list[Frag]:
        # A multipart whose boundary never appears is a leaf holding the raw
        # text: shown as plain text so that a person can still read it.
        text = mime.decode_text(payload, part.get_content_charset(), f"part {path}", self.defects)
        index = self._entry(part, path, "body", data=payload)
        if not text.strip():
            self.entries[index].outcome, self.entries[index].reason = "skipped", "empty"
            return []
        if part.get_content_type() == "text/html":
            return [Frag(text=None, html=text, entries=[index])]
        if "begin" in text:
            text = self._uudecode(text, path)
        return [Frag(text=text, html=None, entries=[index])]

    def _uudecode(self, text: str, path: str) -> str:
        rest, files, defects = uuencode.extract_uuencoded(text)
        self.defects += [f"part {path}: {d}" for d in defects]
        for n, f in enumerate(files, 1):
            name = f.filename
            sniffed = sniff_content_type(f.data)
            ctype = "application/octet-stream"
            entry_path = f"{path}#uu{n}"
            if not f.data:
                self.entries.append(Entry(entry_path, ctype, name, 0, None, "skipped", "empty"))
                continue
            if len(self.documents) >= MAX_DOCUMENTS:
                self.entries.append(Entry(entry_path, ctype, name, len(f.data), _sha(f.data), "skipped", "part_limit"))
                continue
            index = len(self.documents)
            self.documents.append(ParsedDocument(
                kind="attachment", filename=mime.sanitize_filename(name, fallback=f"attachment-{index}.bin"),
                original_filename=name, content_type=ctype, sniffed_type=sniffed, data=f.data,
                part=entry_path,
            ))
            self.entries.append(Entry(entry_path, ctype, name, len(f.data), _sha(f.data), "document", document=index))
        return rest

    def _document(self, part: Message, path: str, ctx: "_Ctx", *, data: bytes) -> list[Frag]:
        if not data.strip() if part.get_content_maintype() == "text" else not data:
            self._entry(part, path, "skipped", data=data, reason="empty")
            return []
        if self._full(part, path, data):
            return []
        kind = "attachment" if ctx.depth == 0 else "nested"
        index = self._add_document(part, path, kind, ctx, data=data, parent=ctx.parent)
        self._entry(part, path, "document", data=data, document=index)
        return []

    def _forwarded(self, part: Message, path: str, ctx: "_Ctx") -> None:
        data, inner = self._attached_message(part, path)
        if not data.strip():
            self._entry(part, path, "skipped", data=data, reason="empty")
            return
        if self._full(part, path, data):
            return
        if inner is not None:
            raw_subject = next((v for k, v in inner.raw_items() if k.lower() == "subject"), "")
            subject = mime.decode_words(mime.unfold(mime.text(raw_subject, ctx.hints)), ctx.hints)
        else:
            subject = ""
        # A subject is not a path: its slashes are characters to replace.
        stem = mime.sanitize_filename(re.sub(r"[/\\]", "_", subject), fallback="")
        fallback = mime.sanitize_filename(f"{stem}.eml", fallback="forwarded.eml") if stem else "forwarded.eml"
        too_deep = inner is None or ctx.depth + 1 > self.max_depth
        # Not opened: the .eml itself is the document (and gets a task).
        kind = ("attachment" if ctx.depth == 0 else "nested") if too_deep else "forwarded"
        index = self._add_document(part, path, kind, ctx, data=data, parent=ctx.parent,
                                   content_type="message/rfc822", fallback=fallback)
        if inner is None:
            self._entry(part, path, "document", data=data, document=index)
            return
        if too_deep:
            self.defects.append(f"nesting depth limit reached: part {path} not opened (max depth {self.max_depth})")
            self._entry(part, path, "document", data=data, document=index, reason="depth_limit")
            return
        self._entry(part, path, "container", data=data, document=index)
        self.message(inner, path, depth=ctx.depth + 1, parent=index, subject=subject)

    def _attached_message(self, part: Message, path: str) -> tuple[bytes, Message | None]:
        """The attached message's bytes, and its tree to walk."""
        payload = part.get_payload()
        if not isinstance(payload, list) or not payload:
            data = part.get_payload(decode=True) or b""
            if isinstance(payload, str) and not data:
                data = payload.encode("utf-8", "surrogateescape")
            inner = mime.parse_bytes(data) if data.strip() else None
            if inner is not None:
                self.reparsed.append((inner, path))
            return data, inner
        inner = payload[0]
        data = mime.flatten(inner, self.linesep)
        # compat32 parses the part's text as a message whatever its
        # Content-Transfer-Encoding; an encoded one (some clients base64 a
        # forwarded mail) parsed to garbage and must be decoded and re-read.
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):
            data = mime.decode_transfer(data, cte)
            inner = mime.parse_bytes(data)
            self.reparsed.append((inner, path))
        return data, inner

    # --- bookkeeping ------------------------------------------------------------

    # A part's Content-* headers and filename are asked for by several rules
    # (cid, attachment, the document, its ledger entry); decoding them (charset
    # detection included) once per part saved about 0.3 ms of a 200 KB mail's
    # 3.6 ms parse. Keyed by the part's id: the tree outlives the walk.

    def _content_headers(self, part: Message, hints: tuple[str, ...]) -> Message:
        key = (id(part), hints)
        if key not in self._headers_cache:
            self._headers_cache[key] = mime.content_headers(part, hints)
        return self._headers_cache[key]

    def _filename(self, part: Message, hints: tuple[str, ...]) -> str | None:
        key = (id(part), hints)
        if key not in self._names_cache:
            self._names_cache[key] = mime.filename(part, hints)
        return self._names_cache[key]

    def _full(self, part: Message, path: str, data: bytes) -> bool:
        """Past MAX_DOCUMENTS: the part is listed, skipped, not stored."""
        if len(self.documents) < MAX_DOCUMENTS:
            return False
        if not self._limit_noted:
            self._limit_noted = True
            self.defects.append(f"more than {MAX_DOCUMENTS} documents: part {path} and later ones not stored (part_limit)")
        self._entry(part, path, "skipped", data=data, reason="part_limit")
        return True

    def _add_document(self, part, path, kind, ctx, *, data, parent, content_type=None, fallback=None) -> int:
        index = len(self.documents)
        content_type = content_type or mime.declared_type(part)
        name = self._filename(part, ctx.hints)
        sniffed = sniff_content_type(data)
        if fallback is None:
            prefix = "inline" if kind == "inline" else "attachment"
            fallback = f"{prefix}-{index}{mime.extension(content_type, sniffed)}"
        cid = mime.norm_cid(str(self._content_headers(part, ctx.hints).get("content-id") or ""), lower=False)
        self.documents.append(ParsedDocument(
            kind=kind, filename=mime.sanitize_filename(name, fallback=fallback),
            original_filename=name, content_type=content_type, sniffed_type=sniffed, data=data,
            parent=parent, content_id=cid or None, depth=ctx.depth, part=path,
        ))
        return index

    def _entry(self, part: Message, path: str, outcome: str, *, data: bytes | None = None,
               size: int | None = None, sha: str | None = None, reason: str | None = None,
               document: int | None = None) -> int:
        if data is not None:
            size, sha = len(data), _sha(data) if data else None
        try:
            name = self._filename(part, self.charsets)
        except Exception:
            name = None
        self.entries.append(Entry(path, part.get_content_type(), name, size or 0, sha, outcome, reason, document))
        return len(self.entries) - 1

    def _entry_skip(self, part: Message, path: str, reason: str) -> None:
        try:
            data = part.get_payload(decode=True) or b""
        except Exception:
            data = b""
        if not isinstance(data, bytes):
            data = b""
        self._entry(part, path, "skipped", data=data, reason=reason)


@dataclass
class _Ctx:
    depth: int
    parent: int | None  # the document files of this message hang under (its .eml)
    body: int  # this message's body document
    cids: set[str]
    hints: tuple[str, ...] = ()  # charsets declared in this message, for raw 8-bit names


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _scan(msg: Message) -> tuple[set[str], tuple[str, ...]]:
    """Content-IDs the message's own HTML parts refer to, and the charsets it
    declares (root first), without entering attached messages, which are
    walked on their own."""
    cids: set[str] = set()
    found: dict[str, None] = {}
    stack = [msg]
    seen = 0
    while stack and seen < 10_000:
        part = stack.pop()
        seen += 1
        charset = part.get_param("charset")
        if isinstance(charset, str) and charset.strip():
            found.setdefault(charset.strip().strip('"').lower())
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(reversed(children))
        elif part.get_content_type() == "text/html":
            try:
                payload = part.get_payload(decode=True) or b""
            except Exception:
                continue
            text = payload.decode("latin-1")  # cid: references are ASCII
            cids |= {mime.norm_cid(unquote(ref)) for ref in _CID_REF.findall(text)}
    return cids, tuple(found)


def _message_part_bytes(part: Message, linesep: str) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, list):
        # Each field block flattens with its blank line: joined, they are the part.
        return b"".join(mime.flatten(p, linesep) for p in payload).rstrip(b"\r\n") + linesep.encode() if payload else b""
    data = part.get_payload(decode=True)
    if data:
        return data
    return str(payload or "").encode("utf-8", "surrogateescape")
