"""Bytes of unknown or mislabelled charset → text.

Pure: no I/O, and nothing here raises on mail content.

Mail declares charsets loosely. The rules applied here (issue 13 item 4):

* A declared name is mapped to the codec that senders actually use under it
  (`effective_codec`): GB2312/GBK → GB18030 (its superset: Chinese clients
  label GBK text GB2312), Shift_JIS → CP932, EUC-KR/KS C 5601 → CP949,
  Big5 → Big5-HKSCS, ISO-8859-1/US-ASCII → CP1252 (Windows says latin-1 and
  writes CP1252 smart quotes in 0x80-0x9F), TIS-620 → CP874.
* ISO-2022-JP is tried as the stdlib codecs read it, then as Microsoft writes
  it (CP50221: NEC/IBM extensions such as ① and ㈱ inside ESC $ B, and
  half-width katakana), and, when the bytes carry no ESC at all, as
  Shift_JIS/CP932 (Japanese mailers label Shift_JIS text ISO-2022-JP).
* Raw 8-bit bytes (`decode_bytes`) are read with the hints in order (the
  part's charset, then the container's), then UTF-8, then a detector
  (charset-normalizer), then as latin-1.  Valid UTF-8 wins over a
  single-byte hint (UTF-8 labelled latin-1 is the common mislabel; any byte
  string "decodes" as latin-1, so the hint proves nothing), and over a
  multibyte hint when it holds a 3- or 4-byte sequence (CJK text in UTF-8
  under a GB2312 label).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = ["decode_bytes", "decode_header_value", "decode_with", "effective_codec"]

# Names mail uses that Python's codec registry does not know, before lookup.
_ALIASES = {
    "x-gbk": "gb18030",
    "gb_2312-80": "gb18030",
    "gb2312-80": "gb18030",
    "chinese": "gb18030",
    "csgb2312": "gb18030",
    "windows-936": "gb18030",
    "windows-31j": "cp932",
    "x-sjis": "cp932",
    "sjis-open": "cp932",
    "sjis-win": "cp932",
    "x-euc-jp": "euc_jp",
    "cp50220": "iso2022_jp",
    "cp50221": "iso2022_jp",
    "cp50222": "iso2022_jp",
    "x-windows-949": "cp949",
    "windows-949": "cp949",
    "ks_c_5601": "cp949",
    "ks_c_5601-1989": "cp949",
    "uhc": "cp949",
    "x-uhc": "cp949",
    "big5-eten": "big5hkscs",
    "x-x-big5": "big5hkscs",
    "utf8mb4": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "unicode-1-1-utf-7": "utf-7",
    "unicode-2-0-utf-7": "utf-7",
    "unicode-2-0-utf-8": "utf-8",
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-8-e": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "iso-8859-6-e": "iso8859_6",
}

# Canonical codec (codecs.lookup(...).name) → the superset senders really write.
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "big5": "big5hkscs",
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
    "tis-620": "cp874",
    "iso8859-11": "cp874",
}

# Registered "text" codecs that are not charsets: they would unescape or
# transform the bytes instead of reading them.
_NOT_CHARSETS = {
    "idna",
    "punycode",
    "unicode-escape",
    "raw-unicode-escape",
    "undefined",
    "charmap",
    "mbcs",
    "oem",
    "unicode_internal",
}

# When the effective codec fails cleanly, these are tried next (in order).
_FALLBACKS = {
    "cp1252": ("latin-1",),  # the five holes of CP1252 are C1 controls in Windows too
    "big5hkscs": ("cp950",),
    "euc_jp": ("euc_jis_2004",),
    "cp949": ("johab",),
}

_ISO2022_JP_CODECS = ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004", "iso2022_jp_3")
_UTF8 = ("utf-8", "utf-8-sig")
_WIDE = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")
_DECLARED_ASCII = {"ascii"}  # canonical name; 8-bit bytes under it are no evidence of anything
_SURROGATES = re.compile("[\udc80-\udcff]")
_MAX_NAME = 64


@lru_cache(maxsize=512)
def _canonical(charset: str) -> str | None:
    """The registry's name for a declared charset, before the superset rules."""
    name = charset.strip().strip("\"'").strip().rstrip(";").strip().lower()
    if not name or len(name) > _MAX_NAME:
        return None
    name = _ALIASES.get(name, name)
    candidates = [name]
    if name.startswith("x-"):
        candidates.append(_ALIASES.get(name[2:], name[2:]))
    match = re.fullmatch(r"(?:windows|win|cp|ms|ibm)[-_ ]?(\d{3,5})", name)
    if match:
        candidates.append(f"cp{match.group(1)}")
    found = []
    for candidate in candidates:
        try:
            info = codecs.lookup(candidate)
        except (LookupError, ValueError, TypeError):
            continue
        if not getattr(info, "_is_text_encoding", True):  # rot13, base64_codec, hex...
            return None
        if info.name.replace("_", "-") in _NOT_CHARSETS or info.name in _NOT_CHARSETS:
            return None
        found.append(info)
    # The standard library's codec first: a library may register a codec
    # search function of its own (extract-msg does, for "windows-874" and
    # "x-mac-cyrillic"), which would otherwise win depending on import order.
    for info in found:
        if _stdlib_codec(info):
            return info.name
    return found[0].name if found else None


def _stdlib_codec(info: codecs.CodecInfo) -> bool:
    if type(info.decode).__name__ == "builtin_function_or_method":  # the C codecs (CJK, latin-1)
        return True
    module = getattr(info.decode, "__module__", "") or ""
    owner = getattr(getattr(info.decode, "__self__", None), "__module__", "") or ""
    return module.startswith("encodings") or owner.startswith("encodings") or module in ("_codecs", "codecs")


def effective_codec(charset: str | None) -> str | None:
    """The Python codec to read text declared as ``charset`` with, or None.

    None for no name, an unknown name, or a codec that is not a charset
    (rot13, base64_codec, idna, unicode_escape...). Known supersets replace
    what was declared: gb2312/euc-cn/gbk/x-gbk → gb18030, shift_jis → cp932,
    ks_c_5601-1987/euc-kr → cp949, big5 → big5hkscs, iso-8859-1/latin1/
    us-ascii → cp1252, tis-620 → cp874; an ``x-`` prefix is dropped when the
    full name is unknown, windows-NNNN → cpNNNN, unicode-1-1-utf-7 → utf-7.
    ISO-2022-JP stays ``iso2022_jp``: its Shift_JIS mislabel can only be told
    from the bytes (`decode_with`).
    """
    if not isinstance(charset, str):
        return None
    try:
        name = _canonical(charset)
    except Exception:  # a name no registry lookup should choke on, but never raise
        return None
    if name is None:
        return None
    return _SUPERSETS.get(name, name)


def _strict(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except Exception:  # UnicodeDecodeError, and whatever an exotic codec raises
        return None


def _jis_to_cp932(data: bytes) -> bytes | None:
    """ISO-2022-JP as Microsoft writes it (CP50220/50221/50222) → CP932 bytes.

    ESC $ @ / ESC $ B two-byte runs are moved to Shift_JIS arithmetically, so
    the NEC row 13 (①, ㈱, Ⅰ) and NEC-selected IBM extensions that the stdlib
    iso2022_jp codecs reject come out as CP932 reads them; ESC ( I and SO/SI
    half-width katakana become their single CP932 bytes. None for anything
    else (8-bit bytes, other designations, a broken pair).
    """
    out = bytearray()
    mode = "ascii"  # ascii | kanji | kana
    shifted = False  # SO ... SI (CP50222 katakana)
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x1B:
            seq = data[i + 1 : i + 3]
            if seq in (b"(B", b"(J", b"(H"):
                mode, i = "ascii", i + 3
            elif seq in (b"$@", b"$B"):
                mode, i = "kanji", i + 3
            elif seq == b"(I":
                mode, i = "kana", i + 3
            elif data[i + 1 : i + 6] == b"&@\x1b$B":  # JIS X 0208-1990 announcer
                mode, i = "kanji", i + 6
            else:
                return None
            continue
        if b >= 0x80:
            return None
        if b == 0x0E:
            shifted, i = True, i + 1
            continue
        if b == 0x0F:
            shifted, i = False, i + 1
            continue
        if b in (0x0A, 0x0D):  # a line end resets to ASCII in mail
            out.append(b)
            mode, shifted, i = "ascii", False, i + 1
            continue
        if shifted or mode == "kana":
            if not 0x21 <= b <= 0x5F:
                return None
            out.append(b + 0x80)
            i += 1
            continue
        if mode == "ascii":
            out.append(b)
            i += 1
            continue
        if i + 1 >= n:
            return None
        j1, j2 = b, data[i + 1]
        if not (0x21 <= j1 <= 0x7E and 0x21 <= j2 <= 0x7E):
            return None
        s1 = ((j1 - 0x21) >> 1) + 0x81
        if s1 > 0x9F:
            s1 += 0x40
        if j1 & 1:
            s2 = j2 + 0x1F
            if s2 >= 0x7F:
                s2 += 1
        else:
            s2 = j2 + 0x7E
        out += bytes((s1, s2))
        i += 2
    return bytes(out)


def _iso2022_jp(data: bytes) -> tuple[str, str] | None:
    if b"\x1b" in data or b"\x0e" in data:
        # The stdlib codecs pass SO/SI through as controls: with SO present,
        # the CP50222 reading (half-width katakana) goes first.
        for codec in _ISO2022_JP_CODECS[:2] if b"\x0e" not in data else ():
            text = _strict(data, codec)
            if text is not None:
                return text, codec
        converted = _jis_to_cp932(data)
        if converted is not None:
            text = _strict(converted, "cp932")
            if text is not None:
                return text, "cp50221"  # Microsoft's name for what this is; no Python codec has it
        for codec in _ISO2022_JP_CODECS[2:]:
            text = _strict(data, codec)
            if text is not None:
                return text, codec
        return None
    if data.isascii():
        return data.decode("ascii"), "iso2022_jp"
    text = _strict(data, "cp932")  # Shift_JIS labelled ISO-2022-JP
    return (text, "cp932") if text is not None else None


def _decode_with(data: bytes, charset: str | None) -> tuple[str, str] | None:
    codec = effective_codec(charset)
    if codec is None:
        return None
    if codec == "iso2022_jp":
        return _iso2022_jp(data)
    for attempt in (codec, *_FALLBACKS.get(codec, ())):
        text = _strict(data, attempt)
        if text is not None:
            return text, attempt
    return None


def decode_with(data: bytes, charset: str | None) -> str | None:
    """``data`` read as ``charset`` declares, known mislabels applied; None if
    it does not decode cleanly (or the name is unknown or not a charset).

    The name goes through `effective_codec`; ISO-2022-JP is read by the
    stdlib codecs, then as CP50221 (Microsoft's extensions), and bytes with no
    ESC as CP932 (Shift_JIS mislabelled). CP1252 falls back to latin-1 (its
    five undefined bytes), Big5-HKSCS to CP950, EUC-JP to EUC-JIS-2004.
    """
    try:
        found = _decode_with(bytes(data), charset)
    except Exception:
        return None
    return found[0] if found else None


@lru_cache(maxsize=256)
def _single_byte(codec: str) -> bool:
    """True when no byte 0x80-0xFF starts a multibyte sequence in ``codec``."""
    try:
        decoder = codecs.getincrementaldecoder(codec)()
    except Exception:
        return False
    for byte in range(0x80, 0x100):
        decoder.reset()
        try:
            if decoder.decode(bytes((byte,)), final=False) == "":
                return False
        except UnicodeDecodeError:
            continue
        except Exception:
            return False
    return True


@lru_cache(maxsize=256)
def _ascii_transparent(codec: str) -> bool:
    """True when ``codec`` reads every ASCII byte as itself (not UTF-16, UTF-7, EBCDIC, ISO-2022)."""
    sample = bytes(range(0x80))
    return _strict(sample, codec) == sample.decode("ascii")


def _utf8_beats(codec: str, utf8_text: str) -> bool:
    """Whether valid UTF-8 should win over a hint that also decodes the bytes."""
    if codec in ("iso2022_jp",):  # its mislabel is CP932, a multibyte charset
        return any(ord(ch) >= 0x800 for ch in utf8_text)
    if _single_byte(codec):
        return True
    # A 3- or 4-byte sequence: GBK/Shift_JIS text forms one by chance only
    # rarely, while UTF-8 CJK text under a legacy label is common. Two-byte
    # sequences alone (Latin, Cyrillic) are too often valid GBK/Big5 pairs too.
    return any(ord(ch) >= 0x800 for ch in utf8_text)


def _truncated(data: bytes, codec: str) -> str | None:
    """``data`` decoded except an incomplete character cut off at the end."""
    for cut in (1, 2, 3):
        if len(data) <= cut:
            break
        head = data[:-cut]
        if head.isascii():
            break
        text = _strict(head, codec)
        if text is not None:
            return text + "\ufffd"
    return None


def _detect(data: bytes) -> tuple[str, str] | None:
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    wide_ok = b"\x00" in data or data[:2] in (b"\xff\xfe", b"\xfe\xff")
    try:
        results = from_bytes(data)
    except Exception:
        return None
    for match in results:
        name = effective_codec(match.encoding) or match.encoding
        try:
            if not wide_ok and not _ascii_transparent(name):
                continue
        except Exception:
            continue
        found = _decode_with(data, name)
        if found is not None:
            return found
        text = _strict(data, match.encoding)
        if text is not None:
            return text, match.encoding
    return None


def decode_bytes(data: bytes, hints: Sequence[str | None] = ()) -> tuple[str, str | None]:
    """Text from raw bytes of unknown charset, and the codec that read them.

    Order: pure ASCII → ``"ascii"`` (unless a 7-bit hint such as ISO-2022-JP
    or UTF-7 reads it, or it holds ISO-2022 escapes); each hint in order
    (through `decode_with`, so the mislabel rules apply; None and unknown
    names are skipped, and a hint that decodes only with errors is skipped);
    then UTF-8; then a multibyte hint or UTF-8 that fails only on a
    character cut off at the end; then the detector (charset-normalizer);
    then latin-1.

    Hints are weak evidence, so: a US-ASCII hint says nothing about 8-bit
    bytes and is skipped; valid UTF-8 wins over a single-byte hint (any bytes
    "decode" as latin-1/CP1252), and over a multibyte hint when the UTF-8
    reading has a 3- or 4-byte sequence; UTF-16/32 hints and detector
    results are used only for bytes with a NUL or a BOM.

    The codec is the name of what read the bytes cleanly: a Python codec name,
    or ``"cp50221"`` for ISO-2022-JP with Microsoft's extensions. It is None
    when nothing read them cleanly and the text is a lossy rendering (U+FFFD
    for a cut-off character, or latin-1 byte for byte). A detector result
    comes with its codec: it decoded cleanly, but it is a guess, and the
    detector is unreliable on short input (under ~20 bytes of non-ASCII it
    confuses GBK, CP949, Big5 and Shift_JIS). Never raises.
    """
    try:
        data = bytes(data)
    except Exception:
        return "", None
    if isinstance(hints, str):  # one name passed bare
        hints = (hints,)
    try:
        return _decode_bytes(data, tuple(h for h in hints or () if isinstance(h, str)))
    except Exception:  # a bug here must not lose the message
        return data.decode("latin-1"), None


def _decode_bytes(data: bytes, hints: tuple[str, ...]) -> tuple[str, str | None]:
    if data.isascii():
        for hint in hints:
            codec = effective_codec(hint)
            if codec and not _ascii_transparent(codec) and (codec not in _WIDE or b"\x00" in data):
                found = _decode_with(data, hint)
                if found is not None:
                    return found
        if b"\x1b$" in data or b"\x1b(" in data:
            found = _iso2022_jp(data)
            if found is not None:
                return found
            text = _strict(data, "iso2022_kr")
            if text is not None:
                return text, "iso2022_kr"
        return data.decode("ascii"), "ascii"

    utf8 = _strict(data, "utf-8")
    wide_ok = b"\x00" in data or data[:2] in (b"\xff\xfe", b"\xfe\xff")
    usable: list[str] = []
    for hint in hints:
        canonical = _canonical_or_none(hint)
        codec = effective_codec(hint)
        if codec is None or canonical in _DECLARED_ASCII:
            continue
        if codec.startswith(("utf-16", "utf-32")) and not wide_ok:
            continue
        usable.append(hint)
        if codec in _UTF8:
            if utf8 is not None:
                return utf8, "utf-8"
            continue
        if utf8 is not None and _utf8_beats(codec, utf8):
            continue
        found = _decode_with(data, hint)
        if found is not None:
            return found
    if utf8 is not None:
        return utf8, "utf-8"
    # A hint or UTF-8 that reads everything but a character cut off at the
    # end (long names truncated by a mailer) is better evidence than a guess.
    for codec in (*(effective_codec(h) for h in usable), "utf-8"):
        codec = "cp932" if codec == "iso2022_jp" else codec  # its 8-bit mislabel
        if codec and not _single_byte(codec) and _ascii_transparent(codec):
            text = _truncated(data, codec)
            if text is not None:
                return text, None
    # UTF-8 cut mid-character inside the value (Yahoo truncates a name's
    # stem and keeps its extension) reads better with one replacement
    # character than as any guess.
    high = sum(b > 127 for b in data)
    lossy = data.decode("utf-8", "replace")
    bad = lossy.count("\ufffd")
    if bad <= 2 and bad * 10 < high:
        return lossy, None
    # The detector guesses wildly on a few 8-bit bytes ("caf\xe9" came out
    # as CP1006, Urdu); below this many the Western default is likelier.
    if high >= _DETECT_MIN_HIGH_BYTES:
        detected = _detect(data)
        if detected is not None:
            return detected
    text = _strict(data, "cp1252")
    return (text, None) if text is not None else (data.decode("latin-1"), None)


_DETECT_MIN_HIGH_BYTES = 8


def _canonical_or_none(charset: str) -> str | None:
    try:
        return _canonical(charset)
    except Exception:
        return None


def decode_header_value(value: object, hints: Sequence[str | None] = ()) -> str:
    """A header value from the stdlib ``email`` package (compat32) as text.

    compat32 hands raw 8-bit header bytes back as surrogate-escaped
    characters (U+DC80-U+DCFF) in ``Message.raw_items()``/``_headers``, and
    as an ``email.header.Header`` (charset unknown-8bit) from ``msg[name]`` /
    ``msg.get(name)``, whose ``str()`` has already replaced those bytes with
    U+FFFD. Both are accepted: the bytes are recovered and read with
    `decode_bytes` and ``hints`` (the part's charset, then the container's).
    A clean str comes back unchanged; RFC 2047 words are left as they are.
    Never raises.
    """
    try:
        return _decode_header_value(value, hints)
    except Exception:
        try:
            return _SURROGATES.sub("\ufffd", str(value))
        except Exception:
            return ""


def _decode_header_value(value: object, hints: Sequence[str | None]) -> str:
    from email.header import Header, decode_header

    if isinstance(value, Header):
        out = []
        for chunk, charset in decode_header(value):
            if isinstance(chunk, str):
                out.append(chunk)
            elif charset in (None, "unknown-8bit"):
                out.append(decode_bytes(chunk, hints)[0])
            else:
                out.append(decode_bytes(chunk, (charset, *hints))[0])
        return "".join(out)
    if not isinstance(value, str):
        value = str(value)
    if not _SURROGATES.search(value):
        return value
    if value.isascii() or all(ord(ch) < 0x80 or 0xDC80 <= ord(ch) <= 0xDCFF for ch in value):
        raw = value.encode("ascii", "surrogateescape")
    else:  # real characters mixed in: keep them as UTF-8 around the raw bytes
        raw = value.encode("utf-8", "surrogateescape")
    return decode_bytes(raw, hints)[0]
