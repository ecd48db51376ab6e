"""Open what senders wrap: ZIP archives, TNEF (``winmail.dat``), Outlook ``.msg``.

Pure: no database, no asyncio, no files. ``unpack`` never raises on hostile
input: an archive that cannot be read comes back with ``error`` set, one that
breaks a limit with ``bomb`` set (the caller keeps it whole as one document and
the ledger says ``bomb_limit``), and problems that still let the rest be read
are ``defects``.

Memory: members are held as bytes, so what one call holds is bounded by
``limits.max_total_bytes`` (the mail's remaining budget) plus one read chunk.
A bomb is refused before its bytes exist: the sizes a ZIP declares are checked
against the limits before anything is inflated, and inflating never produces
more than the declared size (``zipfile`` truncates there and the CRC check then
fails) nor more than the budget left.

Limits (``Limits``) and why:

``max_members`` (1,000)
    members (files, nested archives, bodies, skipped entries) in one call,
    nested archives included: the ledger's own part limit is 1,000 documents
    per mail, and 16 x 16 x 16 nested copies (42.zip) must not get through.
``max_total_bytes`` (1 GiB)
    expanded bytes for one call; the caller passes what is left of the
    mail's budget and subtracts ``Unpacked.expanded``.
``max_ratio`` (200) above ``ratio_floor`` (1 MiB)
    a member whose size over its compressed size exceeds 200 is a bomb once
    it expands past 1 MiB. Real documents stay far below: PDFs and images
    are already compressed (1-3x), text, CSV and XML invoices reach 5-30x,
    the worst real cases (a near-empty spreadsheet export, a log of
    repeated lines) 50-150x. Deflate's ceiling is ~1,032x and zero-filled
    bombs sit right at it, so 200 leaves a margin of 5 over anything a person
    sends while refusing every classic bomb; small members under the floor
    (a 100 KiB file of spaces) are harmless whatever their ratio.
``max_depth`` (2)
    archives opened inside the archive given: depth 0 is that archive, a ZIP
    in it is depth 1, a ZIP in that depth 2; one deeper makes the whole
    archive a bomb (42.zip nests 5 levels).

Overlapping ZIP entries (Fifield 2019, "A better zip bomb") are always a
bomb: no archiver writes them, and they are how one compressed kernel is
counted many times.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from gateway.mime import sanitize_filename
from gateway.sniff import sniff_content_type

__all__ = ["Limits", "Member", "Unpacked", "archive_kind", "unpack", "KINDS"]

KINDS = ("zip", "tnef", "msg")

Outcome = Literal["document", "container", "skipped"]


@dataclass(frozen=True)
class Limits:
    max_members: int = 1000
    max_total_bytes: int = 1 << 30
    max_ratio: int = 200
    ratio_floor: int = 1 << 20
    max_depth: int = 2


@dataclass
class Member:
    """One entry of an archive, or the body of a .msg/TNEF (``kind="body"``).

    ``path_in_archive`` is the name as the archive stored it (decoded, may be
    hostile: for display only); ``filename`` is its last component made safe.
    A ``container`` member (a nested archive or message) holds its own bytes
    in ``data`` and what it held in ``members``.
    """

    path_in_archive: str
    filename: str
    content_type: str
    data: bytes | None
    outcome: Outcome
    reason: str | None = None
    kind: Literal["file", "body"] = "file"
    archive: str | None = None  # for a container: "zip", "tnef" or "msg"
    members: list[Member] = field(default_factory=list)


@dataclass
class Unpacked:
    members: list[Member] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    bomb: str | None = None  # "bomb_limit: ..." when the archive is to be kept whole
    error: str | None = None  # "unparseable: ..." when it could not be opened at all
    expanded: int = 0  # bytes of member content produced (count against the mail's budget)

    def walk(self) -> Iterator[tuple[int, Member]]:
        """Every member, depth first, with its nesting level below this archive (0 = direct)."""

        def rec(members: list[Member], level: int) -> Iterator[tuple[int, Member]]:
            for m in members:
                yield level, m
                yield from rec(m.members, level + 1)

        return rec(self.members, 0)


class Bomb(Exception):
    """A limit was crossed: the whole archive is kept as it is."""


class Budget:
    """What one ``unpack`` call may still produce, shared by nested archives."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.bytes_left = max(0, limits.max_total_bytes)
        self.members_left = max(0, limits.max_members)
        self.expanded = 0

    def member(self) -> None:
        if self.members_left <= 0:
            raise Bomb(f"more than {self.limits.max_members} members")
        self.members_left -= 1

    def take(self, n: int) -> None:
        if n > self.bytes_left:
            raise Bomb(f"expanded size over the {self.limits.max_total_bytes} bytes budget")
        self.bytes_left -= n
        self.expanded += n


# ZIP-based formats that are documents, not archives a sender wrapped files in.
_ZIP_DOCUMENT_EXTENSIONS = frozenset(
    ".docx .docm .dotx .xlsx .xlsm .xltx .pptx .pptm .ppsx .odt .ods .odp .odg .ott .epub .jar .apk .aab "
    ".ipa .xps .oxps .kmz .3mf .vsdx .nupkg .whl .xpi .sketch .pages .numbers .key .usdz".split()
)
_ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip", "multipart/x-zip")
_TNEF_TYPES = ("application/ms-tnef", "application/vnd.ms-tnef")
_MSG_TYPES = ("application/vnd.ms-outlook", "application/x-ole-storage")  # the second only with a .msg name
_TNEF_NAMES = ("winmail.dat", "win.dat")


def archive_kind(filename: str | None, content_type: str, sniffed: str | None) -> str | None:
    """"zip", "tnef", "msg", or None (not an archive we open).

    The bytes decide first (``sniffed`` from ``gateway.sniff``): a PDF named
    ``x.zip`` is a PDF, a ZIP named ``x.pdf`` a ZIP, an OOXML document or a
    ZIP-based format known by its extension (.odt, .epub, .jar...) is not
    opened. When the bytes say nothing (``sniffed`` None: damaged, truncated),
    the declared type and then the name decide, and ``unpack`` reports
    ``error`` if it is no archive after all.
    """
    name = (filename or "").strip().lower()
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    ext = os.path.splitext(base)[1]
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if sniffed:
        if sniffed == "application/zip":
            return None if ext in _ZIP_DOCUMENT_EXTENSIONS else "zip"
        if sniffed == "application/vnd.ms-tnef":
            return "tnef"
        if sniffed == "application/vnd.ms-outlook":
            return "msg"
        if sniffed == "application/x-ole-storage" and (ext == ".msg" or ctype == "application/vnd.ms-outlook"):
            # sniff reads only the first directory sectors; extract-msg decides.
            return "msg"
        return None
    if ctype in _ZIP_TYPES or ext == ".zip":
        return "zip"
    if ctype in _TNEF_TYPES or base in _TNEF_NAMES:
        return "tnef"
    if ctype == "application/vnd.ms-outlook" or ext == ".msg":
        return "msg"
    return None


def unpack(data: bytes, kind: str, limits: Limits, *, depth: int = 0) -> Unpacked:
    """Open ``data`` as ``kind`` ("zip", "tnef", "msg") within ``limits``.

    ``depth`` is how deep this archive already sits inside other archives
    (0 for an attachment of the mail). Never raises (but MemoryError, as
    everywhere else).
    """
    result = Unpacked()
    if kind not in KINDS:
        result.error = f"unparseable: unknown archive kind {kind!r}"
        return result
    budget = Budget(limits)
    try:
        if depth > limits.max_depth:
            raise Bomb(f"nested deeper than {limits.max_depth} archives")
        opener = _OPENERS[kind]
        result.members = opener(bytes(data), budget, depth, result.defects)
    except Bomb as exc:
        result.members = []
        result.bomb = f"bomb_limit: {exc}"
    except NotAnArchive as exc:
        result.members = []
        result.error = f"unparseable: {exc}"
    except RecursionError:
        result.members = []
        result.error = "unparseable: structure nested too deeply"
    except MemoryError:
        raise
    except Exception as exc:  # a library tripping over hostile bytes
        result.members = []
        result.error = f"unparseable: {type(exc).__name__}: {_short(str(exc))}"
    result.expanded = budget.expanded
    return result


class NotAnArchive(Exception):
    """The bytes are not the kind of archive they were taken for."""


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def member_type(filename: str, data: bytes | None) -> str:
    """Content type from the bytes, else from the name, else octet-stream."""
    sniffed = sniff_content_type(data) if data else None
    if sniffed:
        return sniffed
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


def safe_name(raw: str | None, fallback: str) -> str:
    # NUL and other controls are dropped by sanitize_filename; so are path
    # components ("../../etc/passwd" -> "passwd", "/abs/x" -> "x").
    return sanitize_filename(raw, fallback=fallback)


def open_nested(
    data: bytes, filename: str, content_type: str, budget: Budget, depth: int, defects: list[str]
) -> tuple[str | None, list[Member], str | None]:
    """If ``data`` is an archive, (kind, members, reason) opened one level deeper.

    A nested archive that cannot be read is no bomb: it stays a document
    (kind None) and a defect says why.
    """
    kind = archive_kind(filename, content_type, sniff_content_type(data))
    if kind is None or kind not in _OPENERS:
        return None, [], None
    if depth + 1 > budget.limits.max_depth:
        raise Bomb(f"nested deeper than {budget.limits.max_depth} archives")
    inner_defects: list[str] = []
    try:
        members = _OPENERS[kind](data, budget, depth + 1, inner_defects)
    except (Bomb, MemoryError, RecursionError):
        raise
    except NotAnArchive as exc:
        defects.append(f"{filename}: unparseable: {exc}")
        return None, [], None
    except Exception as exc:
        defects.append(f"{filename}: unparseable: {type(exc).__name__}: {_short(str(exc))}")
        return None, [], None
    defects.extend(f"{filename}: {d}" for d in inner_defects)
    return kind, members, None


def file_member(
    path: str, name: str, content: bytes, budget: Budget, depth: int, defects: list[str]
) -> Member:
    """A member's bytes (already charged to the budget) as a document, or as
    a container when they are an archive themselves."""
    ctype = member_type(name, content)
    kind, inner, _ = open_nested(content, name, ctype, budget, depth, defects)
    if kind is not None:
        return Member(path, name, ctype, content, "container", None, archive=kind, members=inner)
    return Member(path, name, ctype, content, "document")


def _open_zip(data: bytes, budget: Budget, depth: int, defects: list[str]) -> list[Member]:
    from gateway.archives.zip import open_zip

    return open_zip(data, budget, depth, defects)


def _open_tnef(data: bytes, budget: Budget, depth: int, defects: list[str]) -> list[Member]:
    from gateway.archives.tnef import open_tnef

    return open_tnef(data, budget, depth, defects)


def _open_msg(data: bytes, budget: Budget, depth: int, defects: list[str]) -> list[Member]:
    from gateway.archives.msg import open_msg

    return open_msg(data, budget, depth, defects)


_OPENERS = {"zip": _open_zip, "tnef": _open_tnef, "msg": _open_msg}
