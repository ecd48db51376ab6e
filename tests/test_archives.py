"""gateway.archives: ZIP, TNEF and .msg unpacked; bombs refused in bounded time and memory.

Every fixture is built here: ZIPs with zipfile, or by hand (``_raw_zip``) where
zipfile cannot write what an attacker would (NUL in a name, sizes that lie,
entries that overlap, precompressed gigabytes); the TNEF by hand (bytes
explained in ``_tnef``); the .msg with extract-msg's own OLE writer.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import pytest

from gateway.archives import Limits, archive_kind, unpack
from tests.conftest import ROOT

PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + b"%" * 200 + b"\n%%EOF\n"


def _pdf(n: int) -> bytes:
    return PDF.replace(b"Catalog", f"Catalog /N{n}".encode())


def _zip(files: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _raw_zip(entries: list[dict]) -> bytes:
    """A ZIP written field by field (APPNOTE 4.3.7 / 4.3.12 / 4.3.16).

    Each entry: ``name`` (bytes), ``payload`` (the compressed bytes as
    stored), ``method`` (0 or 8), ``crc``, ``usize`` (the size declared for
    the expanded content), optional ``flags`` and ``offset`` (point the
    central entry at an existing local header instead of writing one) and
    ``csize`` (declared compressed size, default len(payload)).
    """
    out = bytearray()
    central = bytearray()
    for e in entries:
        csize = e.get("csize", len(e["payload"]))
        if "offset" in e:
            offset = e["offset"]
        else:
            offset = len(out)
            out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, e.get("flags", 0), e["method"], 0, 0x21,
                               e["crc"], csize, e["usize"], len(e["name"]), 0)
            out += e["name"] + e["payload"]
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, e.get("flags", 0), e["method"], 0, 0x21,
                               e["crc"], csize, e["usize"], len(e["name"]), 0, 0, 0, 0, 0, offset)
        central += e["name"]
    cd_offset = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), cd_offset, 0)
    return bytes(out)


def _zeros_deflated(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``mib`` MiB of zeros and its CRC-32, made in well under a second.

    After Z_FULL_FLUSH the compressor forgets its history, so every 1 MiB
    block of zeros compresses to the same ~1 KiB: compress it once, repeat it.
    """
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == again
    stream = block * mib + c.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return stream, crc


def test_zeros_stream_is_what_it_claims():
    stream, crc = _zeros_deflated(3)
    out = zlib.decompress(stream, -15)
    assert out == bytes(3 << 20) and zlib.crc32(out) == crc
    assert len(stream) < 4 * 1024


# --- ordinary archives ----------------------------------------------------------


def test_zip_of_invoices_deflated_and_stored():
    data = _zip({f"invoices/2024-{i:02d}.pdf": _pdf(i) for i in range(1, 4)})
    stored = _zip({"a.pdf": _pdf(7), "notes.txt": b"pay by friday\n"}, method=zipfile.ZIP_STORED)
    r = unpack(data, "zip", Limits())
    assert (r.bomb, r.error, r.defects) == (None, None, [])
    assert [(m.path_in_archive, m.filename, m.content_type, m.outcome) for m in r.members] == [
        (f"invoices/2024-{i:02d}.pdf", f"2024-{i:02d}.pdf", "application/pdf", "document") for i in range(1, 4)
    ]
    assert [m.data for m in r.members] == [_pdf(i) for i in range(1, 4)]
    assert r.expanded == sum(len(_pdf(i)) for i in range(1, 4))
    s = unpack(stored, "zip", Limits())
    assert [(m.filename, m.content_type, m.data) for m in s.members] == [
        ("a.pdf", "application/pdf", _pdf(7)),
        ("notes.txt", "text/plain", b"pay by friday\n"),
    ]


def test_nested_zip_is_a_container_with_its_members():
    inner = _zip({"b.pdf": _pdf(2), "c.pdf": _pdf(3)})
    outer = _zip({"a.pdf": _pdf(1), "more.zip": inner, "empty/": b""})
    r = unpack(outer, "zip", Limits())
    assert r.bomb is None and r.error is None
    a, more, empty = r.members
    assert (a.outcome, a.data) == ("document", _pdf(1))
    assert (more.outcome, more.archive, more.content_type, more.data) == ("container", "zip", "application/zip", inner)
    assert [(m.filename, m.outcome, m.data) for m in more.members] == [
        ("b.pdf", "document", _pdf(2)),
        ("c.pdf", "document", _pdf(3)),
    ]
    assert (empty.outcome, empty.reason, empty.data) == ("skipped", "empty", None)
    assert [(level, m.filename) for level, m in r.walk()] == [
        (0, "a.pdf"), (0, "more.zip"), (1, "b.pdf"), (1, "c.pdf"), (0, "empty"),
    ]
    # Depth counts from the archive given: a ZIP in a ZIP in a ZIP in the mail's ZIP is one too many.
    deep = _zip({"l1.zip": _zip({"l2.zip": _zip({"l3.zip": _zip({"x.pdf": PDF})})})})
    assert unpack(deep, "zip", Limits()).bomb == "bomb_limit: nested deeper than 2 archives"
    assert unpack(deep, "zip", Limits(max_depth=3)).bomb is None
    assert unpack(outer, "zip", Limits(), depth=2).bomb == "bomb_limit: nested deeper than 2 archives"


def test_encrypted_member_is_skipped():
    # zipfile cannot write encrypted members: write a plain one and set bit 0
    # (APPNOTE 4.4.4, "file is encrypted") in its local header (offset 6) and
    # its central directory entry (offset 8). The reader decides from that bit
    # alone; the bytes behind it are never looked at.
    data = bytearray(_zip({"secret.pdf": PDF, "open.pdf": _pdf(2)}))
    cd = data.index(b"PK\x01\x02")
    data[6] |= 1
    data[cd + 8] |= 1
    r = unpack(bytes(data), "zip", Limits())
    assert [(m.filename, m.outcome, m.reason) for m in r.members] == [
        ("secret.pdf", "skipped", "encrypted"),
        ("open.pdf", "document", None),
    ]
    assert r.members[0].data is None and r.members[1].data == _pdf(2)


def test_hostile_names_are_sanitised():
    names = [b"../../etc/passwd", b"/abs/x", b"a\x00b.pdf", b"C:\\Windows\\evil.exe", b"x" * 400 + b".pdf", b"..", b"dir/"]
    entries = [dict(name=n, payload=b"content", method=0, crc=zlib.crc32(b"content"), usize=7) for n in names]
    entries[-1].update(payload=b"", crc=0, usize=0)
    r = unpack(_raw_zip(entries), "zip", Limits())
    assert r.bomb is None and r.error is None, r
    got = [(m.path_in_archive, m.filename, m.outcome) for m in r.members]
    assert got[:4] == [
        ("../../etc/passwd", "passwd", "document"),
        ("/abs/x", "x", "document"),
        ("a\x00b.pdf", "ab.pdf", "document"),
        ("C:\\Windows\\evil.exe", "evil.exe", "document"),
    ]
    long_name = r.members[4].filename
    assert long_name.endswith(".pdf") and len(long_name.encode()) <= 255 and "/" not in long_name
    assert got[5] == ("..", "member-6", "document")  # nothing usable left of the name
    assert got[6] == ("dir/", "dir", "skipped")
    for m in r.members:
        assert "/" not in m.filename and "\\" not in m.filename and "\x00" not in m.filename


def test_member_limit_is_counted_before_zipfile_reads_the_directory():
    data = _zip({f"{i}.txt": b"x" for i in range(6)})
    assert unpack(data, "zip", Limits(max_members=6)).bomb is None
    assert unpack(data, "zip", Limits(max_members=5)).bomb == "bomb_limit: more than 5 members"
    # 1,001 entries against the default.
    big = _zip({f"{i}.txt": b"x" for i in range(1001)}, method=zipfile.ZIP_STORED)
    assert unpack(big, "zip", Limits()).bomb == "bomb_limit: more than 1000 members"
    # Nested members count towards the same limit.
    nested = _zip({"a.zip": _zip({f"{i}.txt": b"x" for i in range(4)}), "b.txt": b"y"})
    assert unpack(nested, "zip", Limits(max_members=6)).bomb is None  # a.zip, its 4, b.txt
    assert unpack(nested, "zip", Limits(max_members=5)).bomb == "bomb_limit: more than 5 members"


def test_unsupported_method_and_garbage():
    data = bytearray(_zip({"a.txt": b"hello"}, method=zipfile.ZIP_STORED))
    # method 12 (bzip2) in both headers: zipfile would inflate it with no output cap.
    struct.pack_into("<H", data, 8, 12)
    struct.pack_into("<H", data, data.index(b"PK\x01\x02") + 10, 12)
    r = unpack(bytes(data), "zip", Limits())
    assert [(m.outcome, m.reason) for m in r.members] == [("skipped", "unsupported_compression")]
    assert r.defects == ["a.txt: compression method 12 not opened"]
    for junk in (b"", b"PK\x03\x04garbage", PDF, bytes(range(256)) * 10):
        for kind in ("zip", "tnef", "msg"):
            g = unpack(junk, kind, Limits())
            assert g.error and g.error.startswith("unparseable:") and g.members == [] and g.bomb is None
    assert unpack(b"x", "rar", Limits()).error == "unparseable: unknown archive kind 'rar'"


def test_truncated_and_corrupt_members_are_unparseable_not_fatal():
    good = _zip({"a.pdf": PDF, "b.pdf": _pdf(2)}, method=zipfile.ZIP_STORED)
    corrupt = bytearray(good)
    corrupt[good.index(b"Catalog")] ^= 0xFF  # a.pdf's content: CRC mismatch
    r = unpack(bytes(corrupt), "zip", Limits())
    assert [(m.filename, m.outcome, m.reason) for m in r.members] == [
        ("a.pdf", "skipped", "unparseable"),
        ("b.pdf", "document", None),
    ]
    assert r.defects and "a.pdf: unreadable (BadZipFile" in r.defects[0]


# --- bombs ---------------------------------------------------------------------

_MEASURE = r"""
import json, resource, sys, time
data = open(sys.argv[1], "rb").read()
from gateway.archives import Limits, unpack
import gateway.archives.zip
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
before = hwm()
t = time.perf_counter()
r = unpack(data, "zip", Limits(**json.loads(sys.argv[2])))
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "extra_rss": hwm() - before, "bomb": r.bomb, "error": r.error,
                  "expanded": r.expanded, "members": [(m.filename, m.outcome, m.reason) for _, m in r.walk()]}))
"""


def _measure(tmp_path, data: bytes, **limits) -> dict:
    """Unpack in a fresh interpreter: its VmHWM growth is the extra RSS, nothing of this process's."""
    path = tmp_path / "archive.zip"
    path.write_bytes(data)
    p = subprocess.run([sys.executable, "-c", _MEASURE, str(path), json.dumps(limits)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    print(f"{len(data)} bytes: {result['seconds']:.3f} s, +{result['extra_rss'] / 2**20:.1f} MiB RSS, {result['bomb']}")
    return result


def _bounded(result: dict) -> None:
    assert result["seconds"] <= 1.0, result
    assert result["extra_rss"] <= 100 * 2**20, result


def test_gigabyte_of_zeros_is_refused_by_its_declared_ratio(tmp_path):
    stream, crc = _zeros_deflated(1024)  # 1 GiB of zeros in ~1 MiB
    data = _raw_zip([dict(name=b"zeros.bin", payload=stream, method=8, crc=crc, usize=1 << 30)])
    assert len(data) < 2 * 2**20
    r = _measure(tmp_path, data)
    assert r["bomb"] == "bomb_limit: expansion ratio 1011 for 'zeros.bin', over 200", r
    assert r["expanded"] == 0
    _bounded(r)
    # Allowed any ratio, the budget refuses it before inflating.
    r = _measure(tmp_path, data, max_ratio=10**9, max_total_bytes=100 * 2**20)
    assert r["bomb"] == f"bomb_limit: {1 << 30} bytes declared for 'zeros.bin', over the {100 * 2**20} bytes budget", r
    _bounded(r)


def test_header_that_lies_about_the_size_is_not_trusted(tmp_path):
    # The same GiB of zeros declared as 1 MiB: inflating stops at the declared
    # size (zipfile's cap), the CRC then fails, the member is unparseable.
    stream, crc = _zeros_deflated(1024)
    data = _raw_zip([dict(name=b"small.bin", payload=stream, method=8, crc=crc, usize=1 << 20)])
    r = _measure(tmp_path, data)
    assert r["bomb"] is None and r["members"] == [["small.bin", "skipped", "unparseable"]], r
    assert 0 < r["expanded"] <= 1 << 20
    _bounded(r)


def test_budget_is_taken_while_streaming(tmp_path):
    # Sizes within ratio, but together over the budget the caller has left.
    blob = os.urandom(12 << 20)  # stored: ratio 1
    entries = [dict(name=f"{i}.bin".encode(), payload=blob, method=0, crc=zlib.crc32(blob), usize=len(blob))
               for i in range(3)]
    data = _raw_zip(entries)
    r = unpack(data, "zip", Limits(max_total_bytes=30 * 2**20))
    assert r.bomb == f"bomb_limit: {len(blob)} bytes declared for '2.bin', over the {30 * 2**20} bytes budget"
    ok = unpack(data, "zip", Limits(max_total_bytes=36 * 2**20))
    assert ok.bomb is None and ok.expanded == 3 * len(blob)


def _level(inner: bytes, name: str, copies: int = 16) -> bytes:
    payload = zlib.compress(inner, 9)[2:-4]
    return _raw_zip([dict(name=f"{name}{i}.zip".encode(), payload=payload, method=8, crc=zlib.crc32(inner),
                          usize=len(inner)) for i in range(copies)])


def test_42_zip_style_nested_bomb(tmp_path):
    # 42.zip: 16 copies of a zip of 16 copies of ... of 4.3 GB files. Here:
    # leaf = 16 files of 256 MiB zeros each (4 GiB), then 4 levels of 16
    # copies: 16^4 x 4 GiB = 256 TiB declared, in a few hundred KiB.
    stream, crc = _zeros_deflated(256)
    leaf = _raw_zip([dict(name=f"{i}.bin".encode(), payload=stream, method=8, crc=crc, usize=256 << 20)
                     for i in range(16)])
    bomb = leaf
    for depth in range(4):
        bomb = _level(bomb, f"lib{depth}_")
    assert len(bomb) < 1 << 20
    r = _measure(tmp_path, bomb)
    assert r["bomb"] == "bomb_limit: nested deeper than 2 archives", r
    _bounded(r)
    # Without the depth limit, the leaf's ratio refuses it.
    r = _measure(tmp_path, bomb, max_depth=10)
    assert r["bomb"] == "bomb_limit: expansion ratio 412 for 'lib0_0.zip', over 200", r
    _bounded(r)


def test_overlapping_entries_fifield_bomb(tmp_path):
    # Fifield 2019 ("A better zip bomb"): many central directory entries whose
    # data all end in one shared compressed kernel. Here 500 local headers
    # one after another, then a kernel of 10 MiB of zeros; entry i's
    # compressed data runs from the end of its own header to the end of the
    # kernel, so it covers every later header and the kernel (the "quoted"
    # construction without the quoting). Each entry alone declares 1 MiB,
    # ratio and budget are fine: only the overlap gives it away, and
    # otherwise the kernel would be inflated 500 times.
    kernel, crc = _zeros_deflated(10)
    n = 500
    names = [f"{i:04d}.bin".encode() for i in range(n)]
    header_len = 30 + 8
    kernel_start = n * header_len
    out = bytearray()
    entries = []
    for i, name in enumerate(names):
        offset = i * header_len
        csize = kernel_start + len(kernel) - (offset + header_len)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, csize, 1 << 20, len(name), 0) + name
        entries.append(dict(name=name, payload=b"", csize=csize, method=8, crc=crc, usize=1 << 20, offset=offset))
    out += kernel
    tail = _raw_zip(entries)  # central directory and EOCD only (every entry has an offset)
    cd = bytearray(tail)
    # _raw_zip wrote no local headers, so its central directory starts at 0: move it behind ours.
    struct.pack_into("<L", cd, len(cd) - 6, len(out))
    data = bytes(out + cd)
    r = _measure(tmp_path, data)
    assert r["bomb"] == "bomb_limit: overlapping entries '0000.bin' and '0001.bin'", r
    _bounded(r)
    # Full overlap: every entry points at the very same local header.
    same = _raw_zip([dict(name=b"k.bin", payload=kernel, method=8, crc=crc, usize=1 << 20)]
                    + [dict(name=b"k.bin", payload=kernel, method=8, crc=crc, usize=1 << 20, offset=0)] * 50)
    assert unpack(same, "zip", Limits()).bomb == "bomb_limit: overlapping entries 'k.bin' and 'k.bin'"


# --- archive_kind ---------------------------------------------------------------


@pytest.mark.parametrize(
    "filename, content_type, sniffed, kind",
    [
        ("invoices.zip", "application/octet-stream", "application/zip", "zip"),
        ("scan.pdf", "application/pdf", "application/zip", "zip"),  # the bytes decide
        ("x.zip", "application/zip", "application/pdf", None),
        ("report.docx", "application/zip", "application/zip", None),  # an OOXML document is no archive
        ("book.epub", "application/octet-stream", "application/zip", None),
        (None, "application/octet-stream", "application/vnd.ms-tnef", "tnef"),
        ("winmail.dat", "application/ms-tnef", None, "tnef"),
        ("WINMAIL.DAT", "application/octet-stream", None, "tnef"),
        ("fwd.msg", "application/octet-stream", "application/vnd.ms-outlook", "msg"),
        ("fwd.msg", "application/octet-stream", "application/x-ole-storage", "msg"),
        ("sheet.xls", "application/octet-stream", "application/x-ole-storage", None),
        (None, "application/vnd.ms-outlook", None, "msg"),
        ("damaged.zip", "application/octet-stream", None, "zip"),
        (None, "application/x-zip-compressed", None, "zip"),
        ("a.txt", "text/plain", "text/plain", None),
        (None, "", None, None),
    ],
)
def test_archive_kind(filename, content_type, sniffed, kind):
    assert archive_kind(filename, content_type, sniffed) == kind


# --- TNEF ------------------------------------------------------------------------


def _attr(level: int, attr_id: int, attr_type: int, data: bytes) -> bytes:
    """One TNEF attribute ([MS-OXTNEF] 2.1.3.1): level (1 = message, 2 =
    attachment), id and type (uint16 each), length (uint32), the data, and
    a checksum (uint16: the data's bytes summed modulo 65536)."""
    return struct.pack("<BHHL", level, attr_id, attr_type, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def _tnef(attachments: list[tuple[bytes, bytes]], body: bytes | None = b"Please find the invoice attached.\r\n") -> bytes:
    """A winmail.dat as Outlook writes it, reduced to what matters:

    signature 78 9F 3E 22 and a legacy key (uint16); attTnefVersion (0x9006,
    dword 0x00010000); attOEMCodepage (0x9007: 1252, 0); attBody (0x800C,
    text); per attachment attAttachRendData (0x9002, 14 bytes: it opens the
    attachment), attAttachTitle (0x8010, the NUL-terminated name) and
    attAttachData (0x800F, the bytes).
    """
    out = b"\x78\x9f\x3e\x22" + struct.pack("<H", 0x0101)
    out += _attr(1, 0x9006, 0x0008, struct.pack("<L", 0x00010000))
    out += _attr(1, 0x9007, 0x0006, struct.pack("<LL", 1252, 0))
    if body is not None:
        out += _attr(1, 0x800C, 0x0002, body)
    for name, data in attachments:
        out += _attr(2, 0x9002, 0x0006, struct.pack("<HlLHHL", 1, -1, 0, 0, 0, 0))
        out += _attr(2, 0x8010, 0x0001, name + b"\x00")
        out += _attr(2, 0x800F, 0x0006, data)
    return out


def test_tnef_attachments_and_body():
    inner = _zip({"c.pdf": _pdf(3)})
    data = _tnef([(b"invoice-1.pdf", _pdf(1)), (b"../../x/invoice-2.pdf", _pdf(2)), (b"more.zip", inner)])
    r = unpack(data, "tnef", Limits())
    assert (r.bomb, r.error) == (None, None), r
    body, one, two, more = r.members
    assert (body.kind, body.outcome, body.content_type, body.data) == (
        "body", "document", "text/plain; charset=utf-8", b"Please find the invoice attached.\r\n")
    assert (one.filename, one.content_type, one.data, one.kind) == ("invoice-1.pdf", "application/pdf", _pdf(1), "file")
    assert (two.path_in_archive, two.filename, two.data) == ("../../x/invoice-2.pdf", "invoice-2.pdf", _pdf(2))
    assert (more.outcome, more.archive, [m.data for m in more.members]) == ("container", "zip", [_pdf(3)])
    assert r.expanded == sum(len(x) for x in (body.data, _pdf(1), _pdf(2), inner, _pdf(3)))
    # The member limit and the budget hold for TNEF too.
    assert unpack(data, "tnef", Limits(max_members=3)).bomb == "bomb_limit: more than 3 members"
    assert unpack(data, "tnef", Limits(max_total_bytes=100)).bomb.startswith("bomb_limit: expanded size over")
    assert archive_kind("winmail.dat", "application/ms-tnef", __import__("gateway.sniff").sniff.sniff_content_type(data)) == "tnef"


def test_tnef_damaged_and_attribute_flood():
    data = _tnef([(b"a.pdf", PDF)])
    for cut in (7, 20, len(data) // 2, len(data) - 3):
        r = unpack(data[:cut], "tnef", Limits())  # never raises; whatever is left
        assert r.bomb is None
    flood = b"\x78\x9f\x3e\x22\x01\x01" + _attr(1, 0x8004, 0x0001, b"x\x00") * 25_000
    assert unpack(flood, "tnef", Limits()).bomb == "bomb_limit: more than 20000 TNEF attributes"


# --- Outlook .msg ---------------------------------------------------------------


def _msg(subject: str, body: str, attachments: list[tuple[str, bytes]]) -> bytes:
    """A .msg written with extract-msg's OleWriter ([MS-OXMSG] 2.1-2.4).

    Top level: __properties_version1.0 (32-byte header: 8 reserved, next
    recipient and attachment ids, recipient and attachment counts, 8
    reserved; then 16-byte fixed entries, here PR_MESSAGE_FLAGS), and
    __substg1.0_<tag> streams for the variable properties: 001A001F message
    class, 0037001F subject, 1000001F body (UTF-16LE strings). Each attachment
    is a storage __attach_version1.0_#0000000N with its own properties stream
    (8-byte header; PR_ATTACH_METHOD 37050003 = 1, by value), 3707001F long
    filename, 3704001F short filename and 37010102 the bytes.
    """
    from extract_msg import OleWriter

    def prop(tag: int, value: int) -> bytes:
        return struct.pack("<LLQ", tag, 6, value)

    w = OleWriter()
    w.addEntry("__nameid_version1.0", storage=True)
    for s in ("00020102", "00030102", "00040102"):
        w.addEntry(f"__nameid_version1.0/__substg1.0_{s}", b"")
    w.addEntry("__substg1.0_001A001F", "IPM.Note".encode("utf-16-le"))
    w.addEntry("__substg1.0_0037001F", subject.encode("utf-16-le"))
    w.addEntry("__substg1.0_1000001F", body.encode("utf-16-le"))
    header = struct.pack("<8xLLLL8x", 0, len(attachments), 0, len(attachments))
    w.addEntry("__properties_version1.0", header + prop(0x0E070003, 1))
    for i, (name, data) in enumerate(attachments):
        storage = f"__attach_version1.0_#{i:08X}"
        w.addEntry(storage, storage=True)
        w.addEntry(f"{storage}/__properties_version1.0", bytes(8) + prop(0x37050003, 1) + prop(0x0E200003, len(data)))
        w.addEntry(f"{storage}/__substg1.0_3707001F", name.encode("utf-16-le"))
        w.addEntry(f"{storage}/__substg1.0_3704001F", name[:12].encode("utf-16-le"))
        w.addEntry(f"{storage}/__substg1.0_37010102", data)
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def test_msg_body_and_attachments():
    data = _msg("Invoice 42", "Dear customer,\r\nplease pay.", [("invoice-42.pdf", _pdf(42)), ("../evil.txt", b"hi\n")])
    from gateway.sniff import sniff_content_type

    assert archive_kind("fwd.msg", "application/octet-stream", sniff_content_type(data)) == "msg"
    r = unpack(data, "msg", Limits())
    assert (r.bomb, r.error) == (None, None), r
    body, pdf, txt = r.members
    assert body.kind == "body" and body.outcome == "document"
    assert b"please pay." in body.data
    assert (pdf.filename, pdf.content_type, pdf.data, pdf.outcome) == ("invoice-42.pdf", "application/pdf", _pdf(42), "document")
    assert (txt.path_in_archive, txt.filename, txt.data) == ("../evil.txt", "evil.txt", b"hi\n")
    assert unpack(data, "msg", Limits(max_members=2)).bomb == "bomb_limit: more than 2 members"
