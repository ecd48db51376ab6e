"""gateway.charsets: raw 8-bit and mislabelled charsets (issue 13 item 4)."""

from __future__ import annotations

import codecs

import email
import email.header
import random
from email.message import Message
from email.policy import compat32
from pathlib import Path

import pytest

from gateway.charsets import decode_bytes, decode_header_value, decode_with, effective_codec

FIXTURES = Path(__file__).parent / "fixtures" / "emails"

# What each fixture's Subject and attachment filename must decode to (for the
# parse tests too):
#
# * charset_gbk_filename_on_container.eml: multipart/mixed whose top-level
#   Content-Type says charset=gb2312; raw 8-bit GBK Subject and raw 8-bit GBK
#   filename (name= and filename=, not RFC 2047/2231 encoded), each with 堃/镕,
#   which are in GBK but not in GB2312; the text part has no charset and a
#   GBK body ("您好，附件是堃镕公司的报价单，请查收。").
# * charset_sjis_as_iso2022jp.eml: Subject and filename (name= and
#   filename=, RFC 2047 inside quotes as Outlook writes them) are
#   =?ISO-2022-JP?B?...?= words whose bytes are Shift_JIS; the text part says
#   charset=ISO-2022-JP and is 8-bit Shift_JIS too
#   ("いつもお世話になっております。請求書を送付いたします。").
# * charset_raw_utf8_subject.eml: raw 8-bit UTF-8 Subject and filename; the
#   text part says charset=iso-8859-1 and holds CP1252 smart quotes
#   ("Anbei die “Rechnung” – bitte prüfen.").
EXPECTED = {
    "charset_gbk_filename_on_container.eml": {"subject": "关于堃镕公司的报价单", "filename": "堃镕报价单.pdf"},
    "charset_sjis_as_iso2022jp.eml": {"subject": "請求書送付のご案内", "filename": "請求書.pdf"},
    "charset_raw_utf8_subject.eml": {"subject": "Счёт № 42 — Überweisung für März", "filename": "Счёт_42.pdf"},
}
EXPECTED_BODIES = {
    "charset_gbk_filename_on_container.eml": "您好，附件是堃镕公司的报价单，请查收。",
    "charset_sjis_as_iso2022jp.eml": "いつもお世話になっております。請求書を送付いたします。",
    "charset_raw_utf8_subject.eml": "Anbei die “Rechnung” – bitte prüfen.",
}


# -- effective_codec ---------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "codec"),
    [
        ("gb2312", "gb18030"),
        ("GB2312", "gb18030"),
        ("euc-cn", "gb18030"),
        ("x-gbk", "gb18030"),
        ("gbk", "gb18030"),
        ("cp936", "gb18030"),
        ("gb18030", "gb18030"),
        ("iso-2022-jp", "iso2022_jp"),
        ("csISO2022JP", "iso2022_jp"),
        ("shift_jis", "cp932"),
        ("Shift-JIS", "cp932"),
        ("x-sjis", "cp932"),
        ("windows-31j", "cp932"),
        ("ks_c_5601-1987", "cp949"),
        ("euc-kr", "cp949"),
        ("big5", "big5hkscs"),
        ("iso-8859-1", "cp1252"),
        ("ISO_8859-1", "cp1252"),
        ("latin1", "cp1252"),
        ("us-ascii", "cp1252"),
        ("tis-620", "cp874"),
        ("windows-874", "cp874"),
        ("windows-1251", "cp1251"),
        ("koi8-r", "koi8-r"),
        ("utf-8", "utf-8"),
        ('"UTF-8"', "utf-8"),
        (" utf-8 ", "utf-8"),
        ("unicode-1-1-utf-7", "utf-7"),
        ("x-mac-cyrillic", "mac-cyrillic"),
        ("iso-8859-8-i", "iso8859-8"),
        ("iso-8859-15", "iso8859-15"),
    ],
)
def test_effective_codec(declared, codec):
    assert effective_codec(declared) == codec


@pytest.mark.parametrize(
    "declared",
    [None, "", "x-klingon", "unknown-8bit", "rot13", "rot_13", "base64", "base64_codec", "hex", "uu", "zlib",
     "idna", "punycode", "unicode_escape", "raw_unicode_escape", "undefined", "x" * 500, "utf\x00-8", 42],
)
def test_effective_codec_rejects(declared):
    assert effective_codec(declared) is None


# -- decode_with: the mislabel rules ------------------------------------------


def test_gbk_bytes_labelled_gb2312():
    text = "堃镕公司报价单"  # 堃 and 镕 are in GBK, not in GB2312
    with pytest.raises(UnicodeEncodeError):
        text.encode("gb2312")
    assert decode_with(text.encode("gbk"), "gb2312") == text
    assert decode_with(text.encode("gbk"), "euc-cn") == text


def test_gb18030_four_byte_characters_labelled_gb2312():
    text = "𠀀𪚥文件€"  # CJK Extension B, four bytes each in GB18030
    data = text.encode("gb18030")
    assert len(data) > len(text) * 2
    assert decode_with(data, "gb2312") == text
    assert decode_bytes(data, ["gb2312"]) == (text, "gb18030")


def test_shift_jis_labelled_iso_2022_jp():
    data = "請求書.pdf".encode("cp932")
    assert b"\x1b" not in data
    assert decode_with(data, "iso-2022-jp") == "請求書.pdf"
    assert decode_bytes(data, ["ISO-2022-JP"]) == ("請求書.pdf", "cp932")


def test_proper_iso_2022_jp():
    data = "請求書のご案内.pdf".encode("iso2022_jp")
    assert data.isascii() and b"\x1b$B" in data
    assert decode_with(data, "iso-2022-jp") == "請求書のご案内.pdf"
    assert decode_bytes(data, ["iso-2022-jp"]) == ("請求書のご案内.pdf", "iso2022_jp")
    # Escape sequences tell ISO-2022-JP even without a label.
    assert decode_bytes(data) == ("請求書のご案内.pdf", "iso2022_jp")


def test_iso_2022_jp_with_microsoft_extensions():
    # ① (NEC row 13) and ㈱ inside ESC $ B, as Outlook writes them (CP50221):
    # the stdlib iso2022_jp codecs reject them.
    data = b"\x1b$B-!-j@A5a=q\x1b(B"
    with pytest.raises(UnicodeDecodeError):
        data.decode("iso2022_jp")
    assert decode_with(data, "iso-2022-jp") == "①㈱請求書"
    # Half-width katakana: ESC ( I, and SO/SI.
    assert decode_with(b"\x1b(I12\x1b(B", "iso-2022-jp") == "ｱｲ"
    assert decode_with(b"a\x0e12\x0fb", "iso-2022-jp") == "aｱｲb"


def test_cp1252_smart_quotes_labelled_latin1():
    text = "“Invoice” – 5 € … ‘ok’"
    data = text.encode("cp1252")
    assert decode_with(data, "iso-8859-1") == text
    assert decode_bytes(data, ["iso-8859-1"]) == (text, "cp1252")
    # The five bytes CP1252 leaves undefined still decode, as the C1 controls.
    assert decode_with(b"a\x81b", "iso-8859-1") == "a\x81b"


def test_utf8_labelled_latin1():
    text = "Überweisung für März – café"
    assert decode_bytes(text.encode("utf-8"), ["iso-8859-1"]) == (text, "utf-8")
    assert decode_bytes(text.encode("utf-8"), ["windows-1252", "koi8-r"]) == (text, "utf-8")
    # ... while real latin-1 keeps its label.
    assert decode_bytes(text.encode("cp1252"), ["iso-8859-1"]) == (text, "cp1252")


def test_utf8_chinese_labelled_gb2312():
    text = "关于发票的通知"
    assert decode_bytes(text.encode("utf-8"), ["gb2312"]) == (text, "utf-8")


def test_short_gbk_that_is_also_valid_utf8_keeps_its_label():
    # 模 is C4 A3 in GBK, which is also the UTF-8 for "ģ": two-byte UTF-8
    # alone does not beat a multibyte label.
    data = "模".encode("gbk")
    assert data.decode("utf-8") == "ģ"
    assert decode_bytes(data, ["gbk"]) == ("模", "gb18030")


def test_hints_in_order_and_bad_hints_skipped():
    data = "Счёт".encode("koi8_r")
    assert decode_bytes(data, [None, "x-klingon", "rot13", "koi8-r", "cp1251"]) == ("Счёт", "koi8-r")
    # A hint that decodes only with errors is skipped: GBK bytes are not valid Big5-HKSCS here.
    gbk = "关于堃镕公司的报价单".encode("gbk")
    assert decode_with(gbk, "big5") is None
    assert decode_bytes(gbk, ["big5", "gb2312"]) == ("关于堃镕公司的报价单", "gb18030")


def test_korean_and_thai_supersets():
    assert decode_bytes("똠방각하".encode("cp949"), ["ks_c_5601-1987"]) == ("똠방각하", "cp949")  # 똠 is CP949 only
    assert decode_bytes("สวัสดี\xa0ครับ".encode("cp874"), ["tis-620"]) == ("สวัสดี\xa0ครับ", "cp874")


def test_ascii_short_cut():
    assert decode_bytes(b"plain subject", ["gb2312", "iso-8859-1"]) == ("plain subject", "ascii")
    assert decode_bytes(b"") == ("", "ascii")
    # 7-bit charsets that are not ASCII do read ASCII bytes.
    assert decode_bytes(b"Hi Mom -+Jjo--!", ["utf-7"]) == ("Hi Mom -☺-!", "utf-7")


# -- the detector --------------------------------------------------------------


def test_raw_gbk_subject_with_an_unhelpful_container_hint_goes_to_the_detector():
    # The part has no charset and the container says us-ascii, which says
    # nothing about 8-bit bytes: UTF-8 fails, the detector finds GB18030.
    text = "关于堃镕公司的报价单"
    assert decode_bytes(text.encode("gbk"), [None, "us-ascii"]) == (text, "gb18030")
    # With a useful container hint the detector is not needed.
    assert decode_bytes(text.encode("gbk"), [None, "gb2312"]) == (text, "gb18030")


def test_detector_without_any_hint():
    # charset-normalizer needs some length: ~40+ bytes of Cyrillic are read
    # right; a 34-byte KOI8-R subject came out as Shift_JIS (2024-11,
    # charset-normalizer 3.5.3), and under ~20 bytes CJK text is often taken
    # for another CJK charset. Short raw headers need a hint to be reliable.
    text = "Добрый день! Высылаю вам счёт на оплату за ноябрь. Пожалуйста, подтвердите получение."
    assert decode_bytes(text.encode("koi8_r")) == (text, "koi8-r")
    assert decode_bytes(text.encode("cp1251")) == (text, "cp1251")
    assert decode_bytes("Фактура за месец".encode("cp1251")) == ("Фактура за месец", "cp1251")


def test_truncated_multibyte_name_keeps_its_charset():
    # A mailer cut a long GBK name mid-character: the hint reads all but the
    # last byte, which beats a clean detector guess; the codec is None (lossy).
    data = "关于堃镕公司".encode("gbk")[:-1]
    assert decode_bytes(data, ["gb2312"]) == ("关于堃镕公\ufffd", None)
    data = "請求書のご案内".encode("cp932")[:-1]
    assert decode_bytes(data, ["iso-2022-jp"]) == ("請求書のご案\ufffd", None)
    data = "Счёт_на_оплату".encode("utf-8")[:-1]
    assert decode_bytes(data) == ("Счёт_на_оплат\ufffd", None)


def test_garbage_never_raises():
    rng = random.Random(13)
    hints_choices = [(), ("gb2312",), ("iso-2022-jp",), ("utf-16",), ("utf-8", "big5"), ("us-ascii", None), ("rot13",)]
    samples = [bytes(range(256)), b"\x1b$B\xff\xfe", b"\x1b$(Q!!", b"\xff\xfe\x00", b"\x00" * 5, b"\x80" * 1000]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(150)]
    for data in samples:
        for hints in hints_choices:
            text, codec = decode_bytes(data, hints)
            assert isinstance(text, str) and (codec is None or isinstance(codec, str))
            for charset in ("iso-2022-jp", "gb2312", "utf-7", "utf-16", "cp1252", "bogus"):
                assert decode_with(data, charset) is None or isinstance(decode_with(data, charset), str)
    assert decode_bytes(bytes(range(256)))[0] == bytes(range(256)).decode("latin-1")
    assert decode_bytes(bytearray(b"\xe9t\xe9"), ["latin1"]) == ("été", "cp1252")
    assert decode_bytes(None) == ("", None)  # type: ignore[arg-type]
    assert decode_bytes(b"abc", [None, 5, "utf-8"]) == ("abc", "ascii")  # type: ignore[list-item]


def test_utf16_hint_only_for_bytes_that_look_like_it():
    assert decode_bytes("Счёт".encode("utf-16"), ["utf-16"]) == ("Счёт", "utf-16")
    assert decode_bytes("été".encode("cp1252"), ["utf-16", "latin-1"]) == ("été", "cp1252")
    assert decode_bytes("abc".encode("utf-16-le"), ["utf-16-le"]) == ("abc", "utf-16-le")
    assert decode_bytes(b"abcd", ["utf-16"]) == ("abcd", "ascii")


# -- decode_header_value -----------------------------------------------------


def test_header_value_clean_str_unchanged():
    for value in ("plain", "already decoded 請求書", "=?utf-8?q?caf=C3=A9?=", ""):
        assert decode_header_value(value, ["gb2312"]) == value


def test_header_value_surrogate_escaped_bytes():
    raw = "关于堃镕公司的报价单".encode("gbk")
    value = ("Re: " + raw.decode("ascii", "surrogateescape"))
    assert decode_header_value(value, [None, "gb2312"]) == "Re: 关于堃镕公司的报价单"
    utf8 = "Счёт № 42".encode("utf-8").decode("ascii", "surrogateescape")
    assert decode_header_value(utf8, ["iso-8859-1"]) == "Счёт № 42"


def test_header_value_header_object_from_compat32():
    raw = b"Subject: " + "关于堃镕公司的报价单".encode("gbk") + b"\r\n\r\nbody\r\n"
    msg = email.message_from_bytes(raw, policy=compat32)
    value = msg["subject"]  # an email.header.Header whose str() has lost the bytes
    assert isinstance(value, email.header.Header) and "\ufffd" in str(value)
    assert decode_header_value(value, ["gb2312"]) == "关于堃镕公司的报价单"


def test_header_value_never_raises():
    for value in ("\ud800 lone", "\udcff\u4e2d mixed", object(), None, b"bytes", "\udc80" * 10):
        assert isinstance(decode_header_value(value, ["gb2312"]), str)


# -- the fixtures, read the way parse.py can read them ---------------------------


def _rfc2047(value: str, hints) -> str:
    """RFC 2047 words decoded with the mislabel rules (decode_bytes per word)."""
    out = []
    for chunk, charset in email.header.decode_header(value):
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            out.append(decode_bytes(chunk, (charset, *hints) if charset else tuple(hints))[0])
    return "".join(out)


def _raw_header(part: Message, name: str) -> str | None:
    """The header as it came, raw 8-bit bytes surrogate-escaped: msg[name] and
    get_filename() on compat32 have already replaced them with U+FFFD."""
    for key, value in part.raw_items():
        if key.lower() == name:
            return value
    return None


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_fixture(fixture):
    msg = email.message_from_bytes((FIXTURES / fixture).read_bytes(), policy=compat32)
    container = msg.get_content_charset()
    subject = decode_header_value(_raw_header(msg, "subject"), [container])
    assert _rfc2047(subject, [container]) == EXPECTED[fixture]["subject"]

    text_part, attachment = msg.get_payload()
    hints = [attachment.get_content_charset(), container]
    disposition = decode_header_value(_raw_header(attachment, "content-disposition"), hints)
    holder = Message()
    holder["Content-Disposition"] = disposition
    assert _rfc2047(holder.get_filename(), hints) == EXPECTED[fixture]["filename"]

    body = text_part.get_payload(decode=True)
    text, _ = decode_bytes(body, [text_part.get_content_charset(), container])
    assert text.strip() == EXPECTED_BODIES[fixture]



def test_a_library_registering_its_own_codecs_does_not_change_our_choice():
    """extract-msg (Outlook .msg support) registers a codec search function
    that answers "windows-874" and "x-mac-cyrillic" itself; which codec won
    depended on whether a test had imported it first."""
    import extract_msg  # noqa: F401  (its import registers the codecs)

    from gateway.charsets import _canonical

    _canonical.cache_clear()
    assert codecs.lookup("windows-874").decode.__module__.startswith("extract_msg")
    assert effective_codec("windows-874") == "cp874"
    assert effective_codec("x-mac-cyrillic") == "mac-cyrillic"
    assert effective_codec("gb2312") == "gb18030" and effective_codec("latin1") == "cp1252"
