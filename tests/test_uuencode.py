"""gateway.uuencode: uuencoded files inside a text body (issue 13 item 3)."""

from __future__ import annotations

import base64
import binascii
import email
import time
from email.policy import compat32
from pathlib import Path

import pytest

from gateway.uuencode import MAX_DEFECTS, UUFile, extract_uuencoded

FIXTURES = Path(__file__).parent / "fixtures" / "emails"

CSV = b"invoice,amount,currency\r\nINV-1001,1250.00,EUR\r\nINV-1002,89.90,EUR\r\nINV-1003,15000.00,USD\r\n"
BINARY = bytes(range(256)) * 3 + b"\x00" * 50  # zero runs: space-style encoders end lines in spaces


def uu_block(name: str, data: bytes, *, mode: str = "644", backtick: bool = True, nl: str = "\n") -> str:
    """A block as uuencode(1) writes it: binascii.b2a_uu over 45-byte chunks."""
    lines = [f"begin {mode} {name}"]
    for i in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[i : i + 45], backtick=backtick).decode("ascii").rstrip("\n"))
    lines += ["`" if backtick else " ", "end"]
    return nl.join(lines) + nl


def b64_block(name: str, data: bytes, *, nl: str = "\n") -> str:
    encoded = base64.encodebytes(data).decode("ascii").split()
    return nl.join([f"begin-base64 644 {name}", *encoded, "===="]) + nl


@pytest.mark.parametrize("nl", ["\n", "\r\n"])
@pytest.mark.parametrize("backtick", [True, False])
def test_block_between_paragraphs(nl, backtick):
    before = f"Hello,{nl}{nl}the file:{nl}"
    after = f"{nl}Regards,{nl}Accounts{nl}"
    text, files, defects = extract_uuencoded(before + uu_block("data.bin", BINARY, backtick=backtick, nl=nl) + after)
    assert files == [UUFile(filename="data.bin", mode="644", data=BINARY)]
    assert text == before + after
    assert defects == []


def test_two_files_and_text_around_them_kept():
    body = "Intro\n" + uu_block("a.csv", CSV) + "middle text\n" + uu_block("b.bin", BINARY, mode="0600") + "outro"
    text, files, defects = extract_uuencoded(body)
    assert [(f.filename, f.mode, f.data) for f in files] == [("a.csv", "644", CSV), ("b.bin", "0600", BINARY)]
    assert text == "Intro\nmiddle text\noutro"
    assert defects == []


def test_name_with_spaces_and_path_kept_as_written():
    text, files, _ = extract_uuencoded(uu_block("C:\\Scans\\my invoice.pdf", b"%PDF-1.4"))
    assert files[0].filename == "C:\\Scans\\my invoice.pdf"
    assert text == ""


def test_base64_variant():
    body = "See below.\r\n" + b64_block("list.csv", CSV, nl="\r\n") + "Thanks\r\n"
    text, files, defects = extract_uuencoded(body)
    assert files == [UUFile("list.csv", "644", CSV)]
    assert text == "See below.\r\nThanks\r\n"
    assert defects == []


def test_relay_stripped_trailing_spaces():
    # Space-style lines that end in spaces lose them in transit; the
    # zero-length " " line becomes empty. a2b_uu pads the short lines.
    block = uu_block("z.bin", BINARY, backtick=False)
    stripped = "\n".join(line.rstrip(" ") for line in block.split("\n"))
    assert stripped != block
    text, files, defects = extract_uuencoded("x\n" + stripped + "y\n")
    assert files and files[0].data == BINARY
    assert text == "x\ny\n"
    assert defects == []


def test_trailing_garbage_on_a_line_tolerated():
    lines = uu_block("g.csv", CSV).split("\n")
    lines[1] += "!"  # one stray character after the counted ones (the uu.py workaround)
    _, files, defects = extract_uuencoded("\n".join(lines))
    assert files and files[0].data == CSV
    assert defects == []


def test_end_without_zero_length_line_accepted():
    lines = uu_block("n.csv", CSV).split("\n")
    lines.remove("`")
    text, files, _ = extract_uuencoded("a\n" + "\n".join(lines) + "b\n")
    assert files and files[0].data == CSV
    assert text == "a\nb\n"


def test_empty_file():
    _, files, _ = extract_uuencoded("begin 644 empty.txt\n`\nend\n")
    assert files == [UUFile("empty.txt", "644", b"")]


@pytest.mark.parametrize(
    "prose",
    [
        "To send it, type begin 644 report.txt and paste the lines.\nend of story\n",
        "begin 644 is the usual mode, then the name.\nend\n",
        "begin 644 notes\nPlease read the attached notes before the meeting.\nend\n",
        "begin 9 x\nM86)C\n`\nend\n",  # not an octal mode of 3-4 digits
        "begin 644\n`\nend\n",  # no name
        "  begin 644 x\n`\nend\n",  # not at the start of the line
    ],
)
def test_prose_untouched(prose):
    text, files, defects = extract_uuencoded(prose)
    assert text == prose
    assert files == []
    assert defects == []


def test_base64_begin_then_words_stays_text():
    # Single words are base64 alphabet: without ==== it is not a block (a defect says so).
    prose = "begin-base64 644 words\nHello\nWorld\nand more prose here\n"
    text, files, _ = extract_uuencoded(prose)
    assert text == prose and files == []


def test_truncated_block_stays_text_with_a_defect():
    block = uu_block("cut.bin", BINARY)
    cut = "Before\n" + "".join(block.splitlines(keepends=True)[:5])
    text, files, defects = extract_uuencoded(cut)
    assert text == cut
    assert files == []
    assert len(defects) == 1 and "cut.bin" in defects[0] and "kept as text" in defects[0]


def test_block_interrupted_by_prose_stays_text_with_a_defect():
    lines = uu_block("i.bin", BINARY).splitlines(keepends=True)
    body = "".join(lines[:3]) + "-- \nSent from my phone\n"
    text, files, defects = extract_uuencoded(body)
    assert text == body and files == [] and len(defects) == 1


def test_truncated_base64_block():
    body = "".join(b64_block("t.csv", CSV).splitlines(keepends=True)[:-1])
    text, files, defects = extract_uuencoded(body)
    assert text == body and files == [] and len(defects) == 1


def test_max_files():
    body = "".join(uu_block(f"f{i}.csv", CSV) for i in range(4))
    text, files, defects = extract_uuencoded(body, max_files=2)
    assert [f.filename for f in files] == ["f0.csv", "f1.csv"]
    assert text == "".join(uu_block(f"f{i}.csv", CSV) for i in (2, 3))
    assert len(defects) == 2 and "more than 2 files" in defects[0]


def test_max_bytes():
    body = uu_block("small.csv", CSV) + uu_block("big.bin", BINARY)
    text, files, defects = extract_uuencoded(body, max_bytes=len(CSV) + 100)
    assert [f.filename for f in files] == ["small.csv"]
    assert text == uu_block("big.bin", BINARY)
    assert len(defects) == 1 and "size limit" in defects[0]


def test_hostile_begin_lines_linear_and_defects_capped():
    body = "begin 644 x\n" * (2 * 1024 * 1024 // len("begin 644 x\n"))
    started = time.perf_counter()
    text, files, defects = extract_uuencoded(body)
    assert time.perf_counter() - started < 2
    assert text == body and files == []
    assert len(defects) <= 1  # each begin line is followed by another: prose, except the last one

    # begin + one data line, repeated: every block is cut off
    body = ("begin 644 x\n" + "M" + "A" * 60 + "\n") * 60_000
    started = time.perf_counter()
    text, files, defects = extract_uuencoded(body)
    assert time.perf_counter() - started < 2
    assert text == body and files == []
    assert len(defects) == MAX_DEFECTS + 1 and defects[-1].startswith(f"{60_000 - MAX_DEFECTS} more")


def test_one_huge_line_is_not_quadratic():
    body = "begin 644 " + "x " * 1_000_000 + "\n" + "M" * 1_000_000 + "\n"
    started = time.perf_counter()
    text, _, _ = extract_uuencoded(body)
    assert time.perf_counter() - started < 2
    assert text == body


@pytest.mark.parametrize("junk", ["", "begin", "begin 644 x", "begin 644 x\n", "\x00begin\udcff", "end\n" * 3])
def test_garbage_never_raises(junk):
    text, files, defects = extract_uuencoded(junk)
    assert isinstance(text, str) and files == []


def test_fixture_uuencoded_in_body():
    raw = (FIXTURES / "uuencoded_in_body.eml").read_bytes()
    msg = email.message_from_bytes(raw, policy=compat32)
    body = msg.get_payload(decode=True).decode("ascii")
    text, files, defects = extract_uuencoded(body)
    assert files == [UUFile("invoices.csv", "644", CSV)]
    assert defects == []
    assert "please find this month's invoice list below." in text and "Regards,\r\nAccounts" in text
    assert "begin" not in text and "end\r\n" not in text
