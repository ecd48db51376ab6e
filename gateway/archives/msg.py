"""Outlook ``.msg`` (OLE2 compound file): body and attachments, with extract-msg.

The body is one member of ``kind="body"``: the HTML body (extract-msg's, which
includes HTML de-encapsulated from the RTF body), else the plain text, else
the RTF. Attachments stored as bytes are documents (a ZIP among them is
opened, one level deeper); an attached message is a ``container`` whose
``data`` is that message exported as a ``.msg`` and whose members are its
own body and attachments. Web (link) attachments carry no content: skipped,
``external_body``, as in the mail ledger.

OLE2 stores streams as they are (no compression), so no ratio applies: what
is produced counts against the byte budget.
"""

from __future__ import annotations

import logging

from gateway.archives import Bomb, Budget, Member, NotAnArchive, file_member, member_type, safe_name
from gateway.archives.tnef import rtf_body

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

# extract-msg logs every oddity of a hostile file at WARNING and above; the
# defects list says what matters.
logging.getLogger("extract_msg").setLevel(logging.CRITICAL)
logging.getLogger("RTFDE").setLevel(logging.CRITICAL)


def open_msg(data: bytes, budget: Budget, depth: int, defects: list[str]) -> list[Member]:
    import extract_msg
    from extract_msg.enums import ErrorBehavior

    if not data.startswith(_OLE_MAGIC):
        raise NotAnArchive("not an OLE2 compound file")
    try:
        msg = extract_msg.openMsg(data, strict=False, errorBehavior=ErrorBehavior.SUPPRESS_ALL)
    except (Bomb, MemoryError):
        raise
    except Exception as exc:
        raise NotAnArchive(f"not an Outlook message ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    try:
        return _members(msg, budget, depth, defects)
    finally:
        try:
            msg.close()
        except Exception:
            pass


def _members(msg, budget: Budget, depth: int, defects: list[str]) -> list[Member]:
    from extract_msg.enums import AttachmentType

    members: list[Member] = []
    body = _body(msg, defects)
    if body is not None:
        content, ctype, fname = body
        budget.member()
        budget.take(len(content))
        members.append(Member("body", fname, ctype, content, "document", kind="body"))
    try:
        attachments = list(getattr(msg, "attachments", None) or [])
    except (Bomb, MemoryError):
        raise
    except Exception as exc:
        defects.append(f"attachments unreadable ({type(exc).__name__})")
        attachments = []
    for index, att in enumerate(attachments):
        budget.member()
        raw = _name(att)
        fallback = f"attachment-{index + 1}"
        name = safe_name(raw, fallback=fallback)
        path = raw or name
        att_type = _attr(att, "type")
        if att_type in (AttachmentType.MSG, AttachmentType.SIGNED_EMBEDDED):
            inner_msg = _attr(att, "data")
            if inner_msg is None:
                members.append(Member(path, name, "application/vnd.ms-outlook", None, "skipped", "unparseable"))
                continue
            if depth + 1 > budget.limits.max_depth:
                raise Bomb(f"nested deeper than {budget.limits.max_depth} archives")
            try:
                exported = inner_msg.exportBytes(allowBadEmbed=True)
            except (Bomb, MemoryError):
                raise
            except Exception as exc:
                defects.append(f"{path}: attached message not exported ({type(exc).__name__})")
                exported = None
            if exported is not None:
                budget.take(len(exported))
            if not name.lower().endswith(".msg"):
                name = safe_name(f"{raw or _subject(inner_msg) or fallback}.msg", fallback=f"{fallback}.msg")
            inner = _members(inner_msg, budget, depth + 1, defects)
            members.append(
                Member(path, name, "application/vnd.ms-outlook", exported, "container", archive="msg", members=inner)
            )
            continue
        if att_type == AttachmentType.WEB:
            members.append(Member(path, name, member_type(name, None), None, "skipped", "external_body"))
            continue
        content = _attr(att, "data")
        if not isinstance(content, (bytes, bytearray)):
            reason = "empty" if content is None and att_type == AttachmentType.DATA else "unparseable"
            members.append(Member(path, name, member_type(name, None), None, "skipped", reason))
            continue
        if not content:
            members.append(Member(path, name, member_type(name, None), None, "skipped", "empty"))
            continue
        content = bytes(content)
        budget.take(len(content))
        members.append(file_member(path, name, content, budget, depth, defects))
    return members


def _attr(obj, name: str):
    try:
        return getattr(obj, name)
    except (Bomb, MemoryError):
        raise
    except Exception:
        return None


def _name(att) -> str | None:
    for attr in ("longFilename", "shortFilename", "displayName", "name"):
        value = _attr(att, attr)
        if isinstance(value, str):
            value = value.replace("\x00", "").strip()
            if value:
                return value
    return None


def _subject(msg) -> str | None:
    value = _attr(msg, "subject")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _body(msg, defects: list[str]) -> tuple[bytes, str, str] | None:
    html = _attr(msg, "htmlBody")
    if isinstance(html, (bytes, bytearray)) and html.strip(b"\x00 \r\n\t"):
        raw = bytes(html).rstrip(b"\x00")
        return raw, "text/html", "body.html"
    text = _attr(msg, "body")
    if isinstance(text, str) and text.strip("\x00 \r\n\t"):
        return text.rstrip("\x00").encode("utf-8", "surrogatepass"), "text/plain; charset=utf-8", "body.txt"
    rtf = _attr(msg, "rtfBody")
    if isinstance(rtf, (bytes, bytearray)) and rtf.strip(b"\x00"):
        return rtf_body(bytes(rtf), defects)
    return None
