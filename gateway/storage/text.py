"""Text as every database column can hold it, the same on both backends.

PostgreSQL's ``text`` refuses NUL (``invalid byte sequence for encoding "UTF8":
0x00``), and neither backend's driver can encode a lone surrogate (what
``surrogateescape`` makes of undecodable bytes) as UTF-8. Mail carries both in
names and headers (a NUL in a filename, ``=00`` in an RFC 2047 word), and so
does a processor's output. A message with one must not be refused with a
temporary error on every retry, forever, on PostgreSQL while SQLite takes it,
so every text that reaches a column goes through ``storable`` first.

Both become U+FFFD REPLACEMENT CHARACTER. It is what every decoder already puts
where the input had something it could not represent, so readers of the API
and processors already know what it means; U+2400 (SYMBOL FOR NULL) would be
one more convention, and reads as a character the sender wrote. Nothing is
lost: the raw message stays byte-exact in the blob store.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_str(value: str) -> str:
    # The common case (clean text) returns the very object: a str subclass
    # such as a TaskStatus stays what it is.
    if _UNSTORABLE.search(value) is None:
        return value
    return _UNSTORABLE.sub(REPLACEMENT, value)


def storable(value: Any) -> Any:
    """``value`` with NUL and lone surrogates replaced by U+FFFD, in every str
    it holds: dict keys and values and list items too (JSON columns), at any
    depth. Anything else (numbers, None, datetimes) comes back unchanged."""
    if isinstance(value, str):
        return storable_str(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


def storable_row(row: dict) -> dict:
    """A row about to be inserted, every column made storable."""
    return {k: storable(v) for k, v in row.items()}
