"""ZIP: stored and deflated members, nested archives, bombs refused before they expand.

Order of checks, cheapest first, each before any byte is inflated:

1. the central directory is walked by hand and counting stops at the member
   limit (``zipfile`` would build one ZipInfo per entry of a forged directory
   of millions);
2. every entry's local header and compressed data ``[offset, end)`` must lie
   apart from every other's and before the central directory: overlapping
   entries (Fifield 2019: many entries sharing one compressed kernel, or
   "quoting" the next local header in a stored block) are a bomb;
3. per member, the declared uncompressed size against the budget left and
   against ``max_ratio`` x the compressed size;
4. inflating by 64 KiB reads: ``zipfile`` never yields more than the
   declared size (the CRC check fails on a stream that lied), and each chunk
   is taken from the budget as it comes.

Only methods 0 (stored) and 8 (deflate) are inflated: ``zipfile`` hands bzip2
and LZMA whole input chunks to the decompressor with no output cap, and bzip2
reaches ratios of a million, so those members are ``skipped``
(``unsupported_compression``), as are encrypted ones (``encrypted``).
"""

from __future__ import annotations

import struct
import zipfile
from io import BytesIO

from gateway.archives import Bomb, Budget, Member, NotAnArchive, file_member, member_type, safe_name

_CHUNK = 64 * 1024
_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, cd disk, entries on disk, entries, cd size, cd offset, comment length
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")


def open_zip(data: bytes, budget: Budget, depth: int, defects: list[str]) -> list[Member]:
    if not data:
        raise NotAnArchive("empty")
    _precount(data, budget)
    try:
        zf = zipfile.ZipFile(BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error) as exc:
        raise NotAnArchive(f"not a ZIP archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > budget.members_left:
            raise Bomb(f"more than {budget.limits.max_members} members")
        _check_overlaps(data, infos, getattr(zf, "start_dir", len(data)))
        members = []
        for index, info in enumerate(infos):
            budget.member()
            members.append(_member(zf, info, index, budget, depth, defects))
        return members


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, index: int, budget: Budget, depth: int, defects: list[str]) -> Member:
    raw_name = info.orig_filename
    name = safe_name(raw_name.rstrip("/\\"), fallback=f"member-{index + 1}")

    def skipped(reason: str) -> Member:
        return Member(raw_name, name, member_type(name, None), None, "skipped", reason)

    if info.is_dir() or raw_name.endswith(("/", "\\")):
        return skipped("empty")
    if info.flag_bits & 0x1:
        return skipped("encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        defects.append(f"{raw_name}: compression method {info.compress_type} not opened")
        return skipped("unsupported_compression")
    if info.file_size == 0:
        return skipped("empty")
    limits = budget.limits
    if info.file_size > budget.bytes_left:
        raise Bomb(f"{info.file_size} bytes declared for {raw_name!r}, over the {limits.max_total_bytes} bytes budget")
    if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise Bomb(
            f"expansion ratio {info.file_size // max(info.compress_size, 1)} for {raw_name!r}, over {limits.max_ratio}"
        )
    chunks: list[bytes] = []
    try:
        with zf.open(info) as stream:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                budget.take(len(chunk))
                chunks.append(chunk)
    except Bomb:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # bad CRC, a stream that ends early or lied, a header that differs
        defects.append(f"{raw_name}: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})")
        return skipped("unparseable")
    content = b"".join(chunks)
    del chunks
    return file_member(raw_name, name, content, budget, depth, defects)


def _precount(data: bytes, budget: Budget) -> None:
    """Walk the central directory's fixed-size headers; a bomb past the member limit."""
    tail_start = max(0, len(data) - (_EOCD.size + 65535))
    pos = data.rfind(b"PK\x05\x06", tail_start)
    if pos < 0 or pos + _EOCD.size > len(data):
        return  # zipfile will say what is wrong
    _sig, _d, _cdd, _n_disk, _n, cd_size, _cd_offset, _clen = _EOCD.unpack_from(data, pos)
    loc = pos - _ZIP64_LOCATOR.size
    if loc >= 0 and data[loc : loc + 4] == b"PK\x06\x07":
        _s, _disk, z64_offset, _disks = _ZIP64_LOCATOR.unpack_from(data, loc)
        z64 = loc - _ZIP64_EOCD.size
        if z64 >= 0 and data[z64 : z64 + 4] == b"PK\x06\x06":
            cd_size = _ZIP64_EOCD.unpack_from(data, z64)[8]
            pos = z64
    cd_start = pos - cd_size
    if cd_start < 0:
        return
    count = 0
    p = cd_start
    while p + _CENTRAL.size <= pos and data[p : p + 4] == b"PK\x01\x02":
        fields = _CENTRAL.unpack_from(data, p)
        nlen, xlen, clen = fields[12], fields[13], fields[14]
        count += 1
        if count > budget.members_left:
            raise Bomb(f"more than {budget.limits.max_members} members")
        p += _CENTRAL.size + nlen + xlen + clen


def _check_overlaps(data: bytes, infos: list[zipfile.ZipInfo], cd_start: int) -> None:
    spans = []
    for info in infos:
        start = info.header_offset
        if start < 0 or start + _LOCAL.size > len(data) or data[start : start + 4] != b"PK\x03\x04":
            continue  # reading it will fail: an unreadable member, not a bomb
        fields = _LOCAL.unpack_from(data, start)
        nlen, xlen = fields[10], fields[11]
        end = start + _LOCAL.size + nlen + xlen + info.compress_size
        if end > cd_start and info.compress_size:
            raise Bomb(f"entry {info.orig_filename!r} runs into the central directory")
        spans.append((start, end, info.orig_filename))
    spans.sort()
    for (s1, e1, n1), (s2, _e2, n2) in zip(spans, spans[1:]):
        if s2 < e1:
            raise Bomb(f"overlapping entries {n1!r} and {n2!r}")
