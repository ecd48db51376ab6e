"""The body document's text: runs of text from a mail's parts, joined in
order into an HTML rendering and a plain one.

Pure; the ledger (``gateway.ledger``) decides which parts are body text.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Frag:
    """A run of body text: one or both renderings, and the ledger entries
    whose content it carries."""

    text: str | None
    html: str | None
    entries: list[int] = field(default_factory=list)
    alt_entries: list[int] = field(default_factory=list)  # used only by the text rendering


def render_html(frags: list[Frag]) -> str:
    out = []
    for f in frags:
        if f.html is not None:
            out.append(f.html)
        elif f.text is not None:
            out.append('<pre style="white-space:pre-wrap">' + html.escape(f.text) + "</pre>")
    return "\n".join(out)


def render_text(frags: list[Frag]) -> str:
    out = []
    for f in frags:
        if f.text is not None:
            out.append(f.text)
        elif f.html is not None:
            out.append(html_to_text(f.html))
    return "\n".join(out)


class _TextExtractor(HTMLParser):
    _BLOCK = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre"})
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag in self._BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in self._HIDDEN and self.hidden:
            self.hidden -= 1
        elif tag in self._BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.out.append(data)


def html_to_text(markup: str) -> str:
    """Readable text of an HTML body: tags dropped, blocks on their own lines."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser is lenient; this is a guard, not a path
        return re.sub(r"<[^>]*>", " ", markup)
    text = "".join(parser.out)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()
