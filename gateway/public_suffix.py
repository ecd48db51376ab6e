"""The Public Suffix List, loaded once for the process, with the reserved
test TLDs (RFC 2606: example, test, invalid, localhost) counted as public
suffixes, so that `a.example` and `b.example` are different organizations.

Shared by DMARC alignment (`gateway.sender_auth.dmarc`) and the look-alike
check (`gateway.lookalike`): one list in memory, one rule for what a
registrable domain is.
"""

from __future__ import annotations

import functools

from publicsuffixlist import PublicSuffixList

RESERVED_SUFFIXES = frozenset({"example", "test", "invalid", "localhost"})


@functools.cache
def _list() -> PublicSuffixList:
    # Parsing the list takes about 0.15 s: done on first use, not at import.
    return PublicSuffixList()


def registrable(domain: str) -> str | None:
    """The public suffix plus one label of a lowercase A-label ``domain``
    without a trailing dot, or None when ``domain`` is itself a suffix."""
    labels = domain.split(".")
    if labels[-1] in RESERVED_SUFFIXES:
        return ".".join(labels[-2:]) if len(labels) > 1 else None
    return _list().privatesuffix(domain)
