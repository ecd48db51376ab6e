"""TNEF (``winmail.dat``, ``application/ms-tnef``): attachments and body, with tnefparse.

TNEF does not compress (but for the RTF body's LZFu, whose output is a few
times its input at most), so no ratio applies; what is produced counts
against the budget like any member. tnefparse copies the rest of the buffer
for every attribute it reads (``data[offset:]``), quadratic in the number of
attribute, quadratic in the number of attributes: it is handed a buffer
whose open-ended slices are zero-copy views (``_Buffer``), and the count is
capped before it runs (``_MAX_OBJECTS``). A message attached inside the TNEF
is parsed by tnefparse as it reads the attachment, with plain bytes.

The body is one member of ``kind="body"``: the HTML body if there is one,
else the plain text, else the RTF (its HTML when the RTF only encapsulates
HTML, ``\\fromhtml1``, as Outlook writes it). Whether it is used depends on
the mail having no other body: the caller's decision.
"""

from __future__ import annotations

import struct

from gateway.archives import Bomb, Budget, Member, NotAnArchive, file_member, member_type, safe_name

_MAGIC = b"\x78\x9f\x3e\x22"
_MAX_OBJECTS = 20_000  # a real winmail.dat has a few dozen attributes, ~10 per attachment
_LEVEL_ATTACHMENT = 0x02


def open_tnef(data: bytes, budget: Budget, depth: int, defects: list[str]) -> list[Member]:
    from tnefparse.tnef import TNEF

    if not data.startswith(_MAGIC):
        raise NotAnArchive("no TNEF signature")
    _precount(data)
    _install_views()
    try:
        tnef = TNEF(_Buffer(data), do_checksum=False)
    except (Bomb, MemoryError):
        raise
    except Exception as exc:
        raise NotAnArchive(f"TNEF unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    return _members(tnef, budget, depth, defects)


def _members(tnef, budget: Budget, depth: int, defects: list[str]) -> list[Member]:
    members: list[Member] = []
    body = _body(tnef, defects)
    if body is not None:
        budget.member()
        content, ctype, fname = body
        budget.take(len(content))
        members.append(Member("body", fname, ctype, content, "document", kind="body"))
    for index, att in enumerate(getattr(tnef, "attachments", []) or []):
        budget.member()
        raw = _name(att)
        name = safe_name(raw, fallback=f"attachment-{index + 1}")
        path = raw or name
        content = att.data if isinstance(att.data, (bytes, bytearray)) else b""
        embed = getattr(att, "embed", None)
        if embed is not None:
            # An attached message (IMessage): TNEF again, one level deeper.
            if depth + 1 > budget.limits.max_depth:
                raise Bomb(f"nested deeper than {budget.limits.max_depth} archives")
            budget.take(len(content))
            inner = _members(embed, budget, depth + 1, defects)
            members.append(
                Member(path, name if raw else f"message-{index + 1}.tnef", "application/vnd.ms-tnef", bytes(content),
                       "container", archive="tnef", members=inner)
            )
            continue
        if not content:
            members.append(Member(path, name, member_type(name, None), None, "skipped", "empty"))
            continue
        content = bytes(content)
        budget.take(len(content))
        members.append(file_member(path, name, content, budget, depth, defects))
    return members


def _name(att) -> str | None:
    for get in (lambda: att.long_filename(), lambda: att.name):
        try:
            value = get()
        except Exception:
            continue
        if isinstance(value, (bytes, bytearray)):
            value = _decode(bytes(value))
        if isinstance(value, str):
            value = value.replace("\x00", "").strip()
            if value:
                return value
    return None


def _decode(raw: bytes) -> str:
    if raw[:2] in (b"\xff\xfe",) or (len(raw) > 1 and raw[1:2] == b"\x00"):
        return raw.decode("utf-16-le", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def _body(tnef, defects: list[str]) -> tuple[bytes, str, str] | None:
    html = getattr(tnef, "htmlbody", None)
    if html:
        return _text_bytes(html), "text/html; charset=utf-8", "body.html"
    text = getattr(tnef, "body", None)
    if text and (text.strip() if isinstance(text, str) else text.strip(b"\x00 \r\n\t")):
        return _text_bytes(text), "text/plain; charset=utf-8", "body.txt"
    if getattr(tnef, "_rtfbody", None):
        try:
            rtf = tnef.rtfbody
        except Exception as exc:
            defects.append(f"RTF body unreadable ({type(exc).__name__})")
            return None
        if rtf:
            return rtf_body(bytes(rtf), defects)
    return None


def rtf_body(rtf: bytes, defects: list[str]) -> tuple[bytes, str, str]:
    """The HTML an RTF body encapsulates (``\\fromhtml1``), else the RTF itself."""
    rtf = rtf.rstrip(b"\x00")
    if b"\\fromhtml1" in rtf[:4096]:
        try:
            from RTFDE.deencapsulate import DeEncapsulator

            de = DeEncapsulator(rtf)
            de.deencapsulate()
            if de.content_type == "html" and de.html:
                return _text_bytes(de.html), "text/html; charset=utf-8", "body.html"
        except Exception as exc:
            defects.append(f"RTF-encapsulated HTML unreadable ({type(exc).__name__}); kept as RTF")
    return rtf, "application/rtf", "body.rtf"


def _text_bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").rstrip(b"\x00")
    raw = bytes(value).rstrip(b"\x00")
    try:
        raw.decode("utf-8")
        return raw
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace").encode("utf-8")


def _precount(data: bytes) -> None:
    # Each attribute: level (1), id (4), length (4), data, checksum (2).
    offset, count = 6, 0
    n = len(data)
    while offset + 12 < n:
        count += 1
        if count > _MAX_OBJECTS:
            raise Bomb(f"more than {_MAX_OBJECTS} TNEF attributes")
        (length,) = struct.unpack_from("<I", data, offset + 5)
        offset += min(n - offset, length + 11)


class _Buffer(bytes):
    """bytes whose ``[offset:]`` is a memoryview, not a copy of the rest."""

    def __getitem__(self, key):
        if isinstance(key, slice) and key.stop is None and key.step is None:
            return memoryview(self)[key]
        return super().__getitem__(key)


def _install_views() -> None:
    """Make tnefparse's attribute objects copy their own bytes out of a view.

    Its ``TNEFObject`` keeps ``data[9:length - 2]`` of what it is given; from a
    memoryview that is a view, and the rest of tnefparse wants bytes
    (``.decode``, ``.startswith``). Same behaviour for bytes input.
    """
    import tnefparse.tnef as module

    base = module.TNEFObject
    if getattr(base, "_gateway_views", False):
        return

    class TNEFObject(base):  # noqa: N801 - stands in for tnefparse's own
        _gateway_views = True

        def __init__(self, data, do_checksum=False):
            super().__init__(data, do_checksum)
            if isinstance(self.data, memoryview):
                self.data = self.data.tobytes()

    module.TNEFObject = TNEFObject
