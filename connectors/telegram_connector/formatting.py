"""Model Markdown → Telegram HTML, and splitting that HTML into messages Telegram accepts.

HTML parse mode is used because it needs escaping of only `& < >` (MarkdownV2 needs eighteen
characters escaped and models never get that right). Splitting happens *after* formatting, at
paragraph, then line, then word boundaries, never inside a tag or an entity; a tag open at a split
is closed at the end of one chunk and reopened at the start of the next, so every chunk is valid
HTML on its own. Telegram's limits apply to the text after parsing, in UTF-16 code units, so
that is what is measured.
"""

from __future__ import annotations

import html
import re

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024

_FENCE = re.compile(r"```([\w+#-]*)[^\S\n]*\n?(.*?)```", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:https?|tg|mailto):[^)\s]+)\)")
_INLINE_RULES = [
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL), r"<b>\1</b>"),
    (re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)", re.DOTALL), r"<b>\1</b>"),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"), r"<i>\1</i>"),
    (re.compile(r"(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)"), r"<i>\1</i>"),
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"<s>\1</s>"),
    (re.compile(r"\|\|(?=\S)(.+?)(?<=\S)\|\|"), r"<tg-spoiler>\1</tg-spoiler>"),
]
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
_BULLET = re.compile(r"^(\s*)[-*+]\s+", re.MULTILINE)
_TOKEN = re.compile(r"(<[^>]*>|&#?\w+;)")
_TAG = re.compile(r"<(/?)([a-z-]+)")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _quotes(text: str) -> str:
    """Consecutive `> ` lines → one <blockquote>."""
    out: list[str] = []
    quote: list[str] = []
    for line in text.split("\n"):
        if line.startswith("&gt; ") or line == "&gt;":
            quote.append(line[5:])
            continue
        if quote:
            out.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
            quote = []
        out.append(line)
    if quote:
        out.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
    return "\n".join(out)


def markdown_to_html(text: str) -> str:
    """Render the Markdown models write as Telegram HTML; anything else is escaped text.

    Code is cut out first so nothing inside it is formatted. If the result would not nest
    properly (Markdown like `**a *b** c*`), the text is sent escaped and unformatted instead.
    """
    saved: list[str] = []

    def keep(fragment: str) -> str:
        saved.append(fragment)
        return f"\x00{len(saved) - 1}\x00"

    def fence(match: re.Match[str]) -> str:
        language, body = match.group(1), html.escape(match.group(2).rstrip("\n"), quote=False)
        if language:
            return keep(f'<pre><code class="language-{html.escape(language)}">{body}</code></pre>')
        return keep(f"<pre>{body}</pre>")

    work = text.replace("\x00", "")
    work = _FENCE.sub(fence, work)
    work = _INLINE_CODE.sub(lambda m: keep(f"<code>{html.escape(m.group(1), quote=False)}</code>"), work)
    work = html.escape(work, quote=False)
    work = _LINK.sub(lambda m: keep(f'<a href="{m.group(2).replace(chr(34), "%22")}">') + m.group(1)
                     + keep("</a>"), work)
    work = _HEADING.sub(r"<b>\1</b>", work)
    work = _BULLET.sub(r"\1• ", work)
    for pattern, replacement in _INLINE_RULES:
        work = pattern.sub(replacement, work)
    work = _quotes(work)
    rendered = _PLACEHOLDER.sub(lambda m: saved[int(m.group(1))], work)
    if not well_nested(rendered):
        return html.escape(text, quote=False)
    return rendered


def well_nested(markup: str) -> bool:
    """True when every tag closes in order (what Telegram's HTML parser insists on)."""
    stack: list[str] = []
    for token in _TOKEN.findall(markup):
        match = _TAG.match(token)
        if match is None:
            continue
        closing, name = match.groups()
        if not closing:
            stack.append(name)
        elif not stack or stack.pop() != name:
            return False
    return not stack


def html_to_plain(markup: str) -> str:
    """The visible text of Telegram HTML: what is resent when Telegram rejects the markup."""
    return html.unescape(re.sub(r"<[^>]*>", "", markup))


def _units(markup: str) -> list[str]:
    """Tags and entities whole, every other character on its own: the places a split may go."""
    units: list[str] = []
    for part in _TOKEN.split(markup):
        if part.startswith(("<", "&")) and _TOKEN.fullmatch(part):
            units.append(part)
        else:
            units.extend(part)
    return units


def _break_priority(units: list[str], index: int) -> int:
    """How good a split before `units[index]` is: end 4, paragraph 3, line 2, word 1, else 0."""
    if index >= len(units):
        return 4
    unit = units[index]
    if unit == "\n":
        return 3 if index + 1 < len(units) and units[index + 1] == "\n" else 2
    return 1 if unit.isspace() else 0


def _closing(opened: tuple[str, ...]) -> str:
    return "".join(f"</{_TAG.match(tag).group(2)}>" for tag in reversed(opened))  # type: ignore[union-attr]


def visible_length(markup: str) -> int:
    """Length of what Telegram displays (tags excluded), the length its limits apply to."""
    return _utf16_len(html_to_plain(markup))


def split_html(markup: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split Telegram HTML into chunks of at most `limit` visible UTF-16 units, each valid on its own."""
    if visible_length(markup) <= limit:
        return [markup] if html_to_plain(markup).strip() else []
    units = _units(markup)
    sizes = [0 if u.startswith("<") else _utf16_len(html.unescape(u)) for u in units]
    # opened[i]: the tags open before units[i] (as written, so they can be reopened verbatim).
    opened: list[tuple[str, ...]] = []
    stack: list[str] = []
    for unit in units:
        opened.append(tuple(stack))
        match = _TAG.match(unit) if unit.startswith("<") else None
        if match is not None:
            if not match.group(1):
                stack.append(unit)
            elif stack:
                stack.pop()
    opened.append(tuple(stack))

    chunks: list[str] = []
    start = 0
    while start < len(units):
        size, end = 0, start
        last: dict[int, tuple[int, int]] = {}  # priority -> (latest split point, chunk size there)
        while end < len(units) and size + sizes[end] <= limit:
            size += sizes[end]
            end += 1
            last[_break_priority(units, end)] = (end, size)
        # The best kind of break that still fills half a message; else the best kind there is.
        full = [p for p, (_, filled) in last.items() if filled >= limit // 2]
        best = last[max(full or last)][0] if last else start + 1
        body = "".join(units[start:best])
        chunk = "".join(opened[start]) + (body if opened[best] else body.rstrip()) + _closing(opened[best])
        if html_to_plain(chunk).strip():
            chunks.append(chunk)
        start = best
        while start < len(units) and units[start].isspace():
            start += 1
    return chunks


def render_chunks(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Markdown in, Telegram HTML chunks out."""
    return split_html(markdown_to_html(text), limit)
