"""Text that comes from outside (a remote system's error answer, a proxy's error page) made fit
to store in a job's error and log: markup and control characters gone, whitespace collapsed,
length bounded."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# What a job's error keeps of a remote's words; the rest is noise (or a whole HTML page).
MAX_REMOTE_TEXT = 300
# Enough of a body to find its words in; a multi-megabyte page is not parsed whole.
_READ_AT_MOST = 64 * 1024
_MARKUP = re.compile(r"<\s*(!doctype|html|head|body|title|div|p|h[1-6]|pre|center|br|hr)\b", re.I)
# C0 and C1 controls, DEL, and the invisible format characters that can reorder text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


class _Words(HTMLParser):
    """The text an HTML page shows, without scripts and styles."""

    _HIDDEN = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in ("br", "p", "div", "li", "tr", "h1", "h2", "h3", "title"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1
        else:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def clean_remote_text(text: str, limit: int = MAX_REMOTE_TEXT) -> str:
    """``text`` as one clean line of at most ``limit`` characters: an HTML page reduced to the
    words it shows, control characters dropped, whitespace collapsed, the end cut with "…"."""
    text = text[:_READ_AT_MOST]
    if _MARKUP.search(text):
        words = _Words()
        words.feed(text)  # no close(): markup cut off by the bound above is dropped, not shown
        text = "".join(words.parts)
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
