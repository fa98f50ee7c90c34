"""Split a reply into Discord-sized messages (2,000 characters) without breaking code blocks.

A code block cut in two renders the rest of the reply as code, so a chunk that ends inside a
fence closes it, and the next chunk reopens it with the same language tag.
"""

from __future__ import annotations

import re

from bot.types import Content

DISCORD_LIMIT = 2000
_FENCE = re.compile(r"^\s*```(\S*)")
_CLOSE = "\n```"


def _cut_at(text: str, limit: int) -> int:
    """Where to cut `text` so the first part is at most `limit` long: a newline, a space, or hard."""
    for separator in ("\n", " "):
        at = text.rfind(separator, 0, limit)
        if at >= limit // 2:
            return at + 1
    return limit


class _Splitter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[str] = []
        self.language: str | None = None  # the open fence's language while inside a code block
        self.current = ""

    @property
    def opener(self) -> str:
        return "" if self.language is None else f"```{self.language}\n"

    def has_content(self) -> bool:
        return bool(self.current[len(self.opener):].strip())

    def flush(self) -> None:
        if self.has_content():
            body = self.current.rstrip("\n")
            self.chunks.append(body + _CLOSE if self.language is not None else body.strip("\n"))
        self.current = self.opener

    def add_line(self, line: str) -> None:
        fence = _FENCE.match(line)
        reserve = len(_CLOSE) if self.language is not None or fence else 0
        while len(self.current) + len(line) > self.limit - reserve:
            if self.has_content():
                self.flush()
                continue
            room = self.limit - reserve - len(self.current)
            cut = _cut_at(line, room)
            self.current += line[:cut]
            line = line[cut:]
            self.flush()
        self.current += line
        if fence:
            self.language = None if self.language is not None else fence.group(1)


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Chunks of at most `limit` characters, each with balanced ``` fences; none is blank."""
    if limit <= 2 * len(_CLOSE) + 40:
        raise ValueError("limit is too small to keep code fences balanced")
    splitter = _Splitter(limit)
    for line in text.splitlines(keepends=True):
        splitter.add_line(line)
    splitter.flush()
    return splitter.chunks


def reply_text(content: Content) -> str:
    """The text a reply's messages carry: its text, then the links of attachments that have no data."""
    links = [a.url for a in content.attachments if a.data is None and a.url]
    return "\n".join([content.text, *links]).strip()
