"""Uuencoded files inside a text body → files, and the text without them.

Pure: no I/O, and nothing here raises on mail content (issue 13 item 3).
Old mailers and some scanners still send attachments as uuencode blocks in
the body instead of MIME parts::

    begin 644 invoices.csv
    M:6YV;VEC92QA;6]U;G0L...
    `
    end

and the base64 variant (``uuencode -m``)::

    begin-base64 644 invoices.csv
    aW52b2ljZSxhbW91bnQsY3VycmVuY3kNCg==
    ====

A block must start at the beginning of a line with ``begin`` (or
``begin-base64``), a space, a 3-4 digit octal mode, a space and a name; then
come lines that are uuencode data (characters 0x20-0x60, the first giving the
byte count and the line long enough for it) and a zero-length line (a
backquote, or empty once a relay stripped its trailing space) followed by
``end``. ``end`` straight after the data (no zero-length line) is accepted
too. A base64 block is lines of base64 alphabet ended by ``====``. Anything
else stays text: "begin 644" inside a sentence, a begin line followed by
prose, a block cut off before its end (reported as a defect).

One pass over the lines, each line looked at a bounded number of times, and
no regular expression that can backtrack: linear in the size of the text.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

__all__ = ["UUFile", "extract_uuencoded"]

MAX_DEFECTS = 20

_BEGIN = re.compile(r"begin(-base64)? ([0-7]{3,4}) (.*)")
_UU_LINE = re.compile(r"[ -`]+")  # 0x20-0x60, the uuencode alphabet
_B64_LINE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_TRAILING_SLACK = 2  # a check character or a stray pad some encoders add


@dataclass(frozen=True)
class UUFile:
    filename: str  # as written on the begin line: may hold a path, not sanitized
    mode: str  # the octal mode as written, e.g. "644"
    data: bytes


def _uu_decode(line: str) -> bytes | None:
    """One uuencode data line → its bytes; None if it is not one."""
    if not _UU_LINE.fullmatch(line):
        return None
    count = (ord(line[0]) - 32) & 63
    expected = (count + 2) // 3 * 4
    if len(line) - 1 > expected + _TRAILING_SLACK:
        return None
    try:
        return binascii.a2b_uu(line)
    except (binascii.Error, ValueError):
        pass
    # Trailing garbage after the counted characters (the bug uu.py worked around).
    try:
        return binascii.a2b_uu(line[: (count * 4 + 5) // 3])
    except (binascii.Error, ValueError):
        return None


def _zero_length(line: str) -> bool:
    """The last line of a uuencode block: a count of zero (backquote or space),
    or nothing once a relay stripped the trailing space."""
    return len(line) <= 1 + _TRAILING_SLACK and line.strip("` ") == ""


def extract_uuencoded(
    text: str, *, max_files: int = 50, max_bytes: int = 50 * 1024 * 1024
) -> tuple[str, list[UUFile], list[str]]:
    """Remove the uuencode and begin-base64 blocks from ``text``.

    Returns the text without the blocks (the lines from ``begin`` to ``end``
    or ``====`` inclusive are dropped; everything before and after is kept
    byte for byte, line ends included), the files in order, and defect
    strings: a block cut off before its end, undecodable data, more than
    ``max_files`` blocks or more than ``max_bytes`` decoded bytes in all
    (such blocks stay text). A begin line followed by something that is not
    uuencode data is prose and no defect. At most `MAX_DEFECTS` defects are
    listed, then one that counts the rest. Never raises.
    """
    try:
        return _extract(text, max_files, max_bytes)
    except Exception as exc:  # a bug here must not lose the body
        return text, [], [f"uuencode extraction failed ({type(exc).__name__}): body kept as text"]


def _extract(text: str, max_files: int, max_bytes: int) -> tuple[str, list[UUFile], list[str]]:
    if not isinstance(text, str) or "begin" not in text:
        return text, [], []
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    files: list[UUFile] = []
    defects: list[str] = []
    dropped_defects = 0
    total = 0

    def defect(message: str) -> None:
        nonlocal dropped_defects
        if len(defects) < MAX_DEFECTS:
            defects.append(message)
        else:
            dropped_defects += 1

    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        match = _BEGIN.fullmatch(line.rstrip("\r\n")) if line.startswith("begin") else None
        name = match.group(3).strip() if match else ""
        if not match or not name:
            kept.append(line)
            i += 1
            continue
        base64_variant = match.group(1) is not None
        reader = _read_base64 if base64_variant else _read_uu
        budget = max_bytes - total
        end, data, problem = reader(lines, i + 1, budget)
        if data is None:
            if problem:
                defect(f"{'base64 ' if base64_variant else ''}uuencoded block {name!r} at line {i + 1}: {problem}; kept as text")
            kept.extend(lines[i:end])
            i = end
            continue
        if len(files) >= max_files:
            defect(f"uuencoded block {name!r} at line {i + 1}: more than {max_files} files; kept as text")
            kept.extend(lines[i : end + 1])
            i = end + 1
            continue
        files.append(UUFile(filename=name, mode=match.group(2), data=data))
        total += len(data)
        i = end + 1  # the begin..end lines are dropped
    if dropped_defects:
        defects.append(f"{dropped_defects} more uuencode defects not listed")
    return "".join(kept), files, defects


def _read_uu(lines: list[str], start: int, budget: int) -> tuple[int, bytes | None, str | None]:
    """Read data lines from ``start``.

    Returns (index of the ``end`` line, data, None) for a block; otherwise
    (index to resume scanning at, None, problem or None when it was prose).
    """
    chunks: list[bytes] = []
    size = 0
    j, n = start, len(lines)
    while j < n:
        body = lines[j].rstrip("\r\n")
        if body.rstrip() == "end":  # end straight after the data, no zero-length line
            if chunks:
                return j, b"".join(chunks), None
            return j, None, None  # "begin ..." then "end", nothing between: prose
        if _zero_length(body):
            if j + 1 < n and lines[j + 1].rstrip("\r\n").rstrip() == "end":
                return j + 1, b"".join(chunks), None
            problem = "no end after the last line" if j + 1 >= n else "no end after the zero-length line"
            return j, None, problem if (chunks or j + 1 >= n) else None
        decoded = _uu_decode(body)
        if decoded is None:
            return j, None, ("data stops without an end" if chunks else None)
        size += len(decoded)
        if size > budget:
            while j < n and _uu_decode(lines[j].rstrip("\r\n")) is not None:
                j += 1
            return j, None, "over the size limit for decoded files"
        chunks.append(decoded)
        j += 1
    return j, None, "cut off before its end" if chunks or start >= n else None


def _read_base64(lines: list[str], start: int, budget: int) -> tuple[int, bytes | None, str | None]:
    parts: list[str] = []
    size = 0
    j, n = start, len(lines)
    while j < n:
        body = lines[j].rstrip("\r\n").rstrip()
        if body == "====":
            try:
                data = binascii.a2b_base64("".join(parts))
            except (binascii.Error, ValueError):
                return j + 1, None, "undecodable base64"
            return j, data, None
        if not _B64_LINE.fullmatch(body):
            return j, None, ("data stops without ====" if parts else None)
        size += len(body) * 3 // 4
        if size > budget:
            while j < n and _B64_LINE.fullmatch(lines[j].rstrip("\r\n").rstrip()):
                j += 1
            return j, None, "over the size limit for decoded files"
        parts.append(body)
        j += 1
    return j, None, "cut off before its ====" if parts or start >= n else None
