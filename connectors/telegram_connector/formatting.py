"""Model Markdown → Telegram HTML, and splitting that HTML into messages Telegram accepts.

HTML parse mode is used because it needs escaping of only `& < >` (MarkdownV2 needs eighteen
characters escaped and models never get that right). Splitting happens *after* formatting, at
paragraph, then line, then word boundaries, never inside a tag or an entity; a tag open at a split
is closed at the end of one chunk and reopened at the start of the next, so every chunk is valid
HTML on its own. Telegram's limits apply to the text after parsing, in UTF-16 code units, so
that is what is measured.
"""

from __future__ import annotations

import bisect
import html
import itertools
import re

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024

# Every pattern here must run in time linear in its input: a reply (or a user's quote of one) can be any
# text, and formatting runs on the event loop. So no pattern may rescan an unbounded stretch from each of
# many starting points: what a scan may cross is limited (possessive quantifiers, no `[` inside a link, one
# line for headings and bullets), and emphasis pairs are matched by `_Emphasis` instead of a lazy `.+?`.
_FENCE = re.compile(r"```([\w+#-]*+)[^\S\n]*+\n?(.*?)```", re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]++)`")
_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
_LINK = re.compile(r"\[([^\[\]\n]++)\]\(((?:https?|tg|mailto):[^)\s\[]++)\)")
_HEADING = re.compile(r"^#{1,6}[^\S\n]++([^\n]*)", re.MULTILINE)
_BULLET = re.compile(r"^([^\S\n]*+)[-*+][^\S\n]++", re.MULTILINE)
_QUOTE = re.compile(r"^&gt;(?: [^\n]*+)?$(?:\n&gt;(?: [^\n]*+)?$)*+", re.MULTILINE)  # a run of `> ` lines


class _Emphasis:
    """One kind of emphasis: an opening and a closing delimiter (each a fixed-width pattern checked
    with lookarounds) around at least one character, on one line unless `multiline`."""

    def __init__(self, marker: str, opening: str, closing: str, width: int, tag: str, *, multiline: bool) -> None:
        self.marker = marker  # the delimiter's literal text: no marker in the text, nothing to scan
        # Wrapped in a lookahead, finditer reports every position a delimiter starts, overlapping ones too.
        self.opening = re.compile(f"(?={opening})")
        self.closing = re.compile(f"(?={closing})")
        self.width = width
        self.tag = tag
        self.multiline = multiline

    def apply(self, text: str) -> str:
        """What `re.sub(opening(.+?)closing, <tag>\\1</tag>)` gives, in O(n log n) instead of O(n²):
        from left to right, each opening pairs with the first closing after it, if it comes before a
        line break (unless multiline)."""
        if self.marker not in text:
            return text
        closings = [m.start() for m in self.closing.finditer(text)]
        if not closings:
            return text
        breaks = [] if self.multiline else [m.start() for m in re.finditer("\n", text)]
        out: list[str] = []
        done = 0
        for match in self.opening.finditer(text):
            start = match.start()
            if start < done:
                continue
            body = start + self.width
            index = bisect.bisect_left(closings, body + 1)
            if index == len(closings):
                break  # no closing after this opening, nor after any later one
            end = closings[index]
            line_break = bisect.bisect_left(breaks, body)
            if line_break < len(breaks) and breaks[line_break] < end:
                continue
            out.append(f"{text[done:start]}<{self.tag}>{text[body:end]}</{self.tag}>")
            done = end + self.width
        out.append(text[done:])
        return "".join(out)


_INLINE_RULES = [
    _Emphasis("**", r"\*\*(?=\S)", r"(?<=\S)\*\*", 2, "b", multiline=True),
    _Emphasis("__", r"(?<!\w)__(?=\S)", r"(?<=\S)__(?!\w)", 2, "b", multiline=True),
    _Emphasis("*", r"(?<![\w*])\*(?=[^\s*])", r"(?<=[^\s*])\*(?![\w*])", 1, "i", multiline=False),
    _Emphasis("_", r"(?<!\w)_(?=[^\s_])", r"(?<=[^\s_])_(?!\w)", 1, "i", multiline=False),
    _Emphasis("~~", r"~~(?=\S)", r"(?<=\S)~~", 2, "s", multiline=False),
    _Emphasis("||", r"\|\|(?=\S)", r"(?<=\S)\|\|", 2, "tg-spoiler", multiline=False),
]
_TAG = re.compile(r"<(/?)([a-z-]+)")
_TAG_TOKEN = re.compile(r"<[^>]*>")
_ENTITY = re.compile(r"&#?\w+;")
_TAG_OR_ENTITIES = re.compile(r"(<[^>]*>|(?:&#?\w+;)+)")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _quotes(text: str) -> str:
    """Consecutive `> ` lines → one <blockquote>."""
    return _QUOTE.sub(lambda m: "<blockquote>" + "\n".join(line[5:] for line in m.group().split("\n"))
                      + "</blockquote>", text)


def _heading(match: re.Match[str]) -> str:
    """`# Title ##` → <b>Title</b>: closing hashes and trailing spaces dropped (rstrip: linear, unlike a regex)."""
    title = match.group(1).rstrip("#").rstrip()
    return f"<b>{title}</b>" if title else match.group(0)


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
    work = _HEADING.sub(_heading, work)
    work = _BULLET.sub(r"\1• ", work)
    for rule in _INLINE_RULES:
        work = rule.apply(work)
    work = _quotes(work)
    rendered = _PLACEHOLDER.sub(lambda m: saved[int(m.group(1))], work)
    if not well_nested(rendered):
        return html.escape(text, quote=False)
    return rendered


_BARE_LINE = re.compile(r"[#>*+\-\d.\s]*")  # what a line holds before its text: heading, quote, bullet marks


def _pending_emphasis(rule: _Emphasis, text: str) -> int | None:
    """Where an opening delimiter of `rule` still waits for its closing (it would format what follows
    once the closing arrives), or None. Pairs are found as `_Emphasis.apply` finds them."""
    if rule.marker not in text:
        return None
    scope = 0 if rule.multiline else text.rfind("\n") + 1
    closings = [m.start() for m in rule.closing.finditer(text, scope)]
    done = scope
    for match in rule.opening.finditer(text, scope):
        start = match.start()
        if start < done:
            continue
        index = bisect.bisect_left(closings, start + rule.width + 1)
        if index == len(closings):
            return start
        done = closings[index] + rule.width
    return None


def stable_prefix(text: str) -> str:
    """The part of a reply still being written whose formatting cannot change as more text arrives,
    so each preview of a streamed reply shows a prefix of the final message: an open code block, an
    unclosed emphasis, code span or link, and a line that so far holds only its markers wait."""
    if text.count("```") % 2:
        text = text[:text.rfind("```")]
    line_start = text.rfind("\n") + 1
    cuts = [len(text)]
    if _BARE_LINE.fullmatch(text, line_start):
        cuts.append(line_start)
    if text.count("`", line_start) % 2:
        cuts.append(text.rfind("`"))
    bracket = text.rfind("[", line_start)
    if bracket >= 0 and not _LINK.match(text, bracket):
        cuts.append(bracket)
    # Probed with one more letter, so trailing markers that would open an emphasis count as opening.
    probe = text + "x"
    cuts += [p for rule in _INLINE_RULES if (p := _pending_emphasis(rule, probe)) is not None]
    return text[:min(cuts)].rstrip()


def well_nested(markup: str) -> bool:
    """True when every tag closes in order (what Telegram's HTML parser insists on)."""
    stack: list[str] = []
    for token in _TAG_TOKEN.findall(markup):
        match = _TAG.match(token)
        if match is None:
            continue
        closing, name = match.groups()
        if not closing:
            stack.append(name)
        elif not stack or stack.pop() != name:
            return False
    return not stack


_OTHER_ENTITY = re.compile(r"&(?!(?:lt|gt|quot|amp|#x27|#39);)")


def _unescape(text: str) -> str:
    """html.unescape, with a fast path for the entities escaping produces (html.unescape calls
    Python code per entity: a reply of 100k "<" took half a second)."""
    if _OTHER_ENTITY.search(text):
        return html.unescape(text)
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&#x27;", "'")
            .replace("&#39;", "'").replace("&amp;", "&"))


def html_to_plain(markup: str) -> str:
    """The visible text of Telegram HTML: what is resent when Telegram rejects the markup."""
    return _unescape(re.sub(r"<[^>]*>", "", markup))


# The entities escaping produces, by their visible width; anything else is unescaped to measure.
_ENTITY_WIDTH = {"&lt;": 1, "&gt;": 1, "&amp;": 1, "&quot;": 1, "&#x27;": 1, "&#39;": 1}


def _entity_width(entity: str) -> int:
    """Visible UTF-16 size of an entity: its text."""
    return _ENTITY_WIDTH.get(entity) or _utf16_len(_unescape(entity))


class _Units:
    """The markup as units: tags and entities whole, every other character on its own (the places a
    split may go), with each unit's visible width, a one-character-per-unit "kinds" string (tokens
    as "x") and the tags by unit index. Built a run of text at a time, not a unit at a time."""

    def __init__(self, markup: str) -> None:
        self.units: list[str] = []
        widths: list[int] = []
        kinds: list[str] = []
        self.tags: list[tuple[int, str]] = []
        # One capturing group: text, then a tag or a run of entities, then text... Runs are taken
        # whole, so text of nothing but escaped characters costs a few C calls, not one per entity.
        for index, part in enumerate(_TAG_OR_ENTITIES.split(markup)):
            if not part:
                continue
            if index % 2 == 0:
                self.units.extend(part)
                widths.extend([1] * len(part) if part.isascii() else [1 + (c > "\uffff") for c in part])
                kinds.append(part)
            elif part[0] == "<":
                self.tags.append((len(self.units), part))
                self.units.append(part)
                widths.append(0)
                kinds.append("x")
            else:
                entities = _ENTITY.findall(part)
                self.units.extend(entities)
                known = _ENTITY_WIDTH.keys() >= set(entities)
                widths.extend([1] * len(entities) if known else [_entity_width(e) for e in entities])
                kinds.append("x" * len(entities))
        self.kinds = "".join(kinds)
        # filled[i]: visible size of units[:i]
        self.filled = list(itertools.accumulate(widths, initial=0))


_NOT_SPACE = re.compile(r"\S")
_LINE_BREAK = re.compile(r"(?<!\n)\n")  # searched in a reversed window: a newline not followed by one
_WORD_BREAK = re.compile(r"[^\S\n]")


def _latest_breaks(kinds: str, start: int, end: int) -> dict[int, int]:
    """The last split point of each kind in (start, end]: the end 4, paragraph 3 (a newline followed
    by another), line 2 (a newline that is not), word 1 (other whitespace). Found by searching the
    window backwards in C, so every chunk costs its own length and no more."""
    found: dict[int, int] = {}
    if end == len(kinds):
        found[4] = end
    paragraph = kinds.rfind("\n\n", start + 1, end + 2)
    if paragraph > start:
        found[3] = paragraph
    # Positions start+1 .. end+1 reversed (past the text's end, a non-space sentinel): index j in
    # it is position end + 1 - j, so j >= 1 keeps within `end`.
    window = (kinds[start + 1:end + 2] + "x" * max(0, end + 2 - len(kinds)))[::-1]
    for priority, pattern in ((2, _LINE_BREAK), (1, _WORD_BREAK)):
        match = pattern.search(window, 1)
        if match is not None and end + 1 - match.start() > start:
            found[priority] = end + 1 - match.start()
    return found


def _closing(opened: tuple[str, ...]) -> str:
    return "".join(f"</{_TAG.match(tag).group(2)}>" for tag in reversed(opened))  # type: ignore[union-attr]


def visible_length(markup: str) -> int:
    """Length of what Telegram displays (tags excluded), the length its limits apply to."""
    return _utf16_len(html_to_plain(markup))


def split_html(markup: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split Telegram HTML into chunks of at most `limit` visible UTF-16 units, each valid on its own."""
    plain = html_to_plain(markup)
    if not plain.strip():
        return []
    if _utf16_len(plain) <= limit:
        return [markup]
    parsed = _Units(markup)
    units, filled, kinds = parsed.units, parsed.filled, parsed.kinds
    tags = [(index, unit) for index, unit in parsed.tags if _TAG.match(unit)]
    next_tag = 0
    stack: list[str] = []  # the tags open before units[position], as written (to reopen them verbatim)

    def opened_before(position: int) -> tuple[str, ...]:
        nonlocal next_tag
        while next_tag < len(tags) and tags[next_tag][0] < position:
            tag = tags[next_tag][1]
            next_tag += 1
            if tag[1] != "/":
                stack.append(tag)
            elif stack:
                stack.pop()
        return tuple(stack)

    chunks: list[str] = []
    start = 0
    while start < len(units):
        opened = opened_before(start)
        end = bisect.bisect_right(filled, filled[start] + limit) - 1  # the most that fits
        last: dict[int, tuple[int, int]] = {}  # priority -> (latest split point, chunk size there)
        anywhere = start + len(kinds[start + 1:end + 1].rstrip())
        if anywhere > start:
            last[0] = (anywhere, filled[anywhere] - filled[start])
        for priority, latest in _latest_breaks(kinds, start, end).items():
            last[priority] = (latest, filled[latest] - filled[start])
        # The best kind of break that still fills half a message; else the best kind there is.
        full = [p for p, (_, size) in last.items() if size >= limit // 2]
        best = last[max(full or last)][0] if last else start + 1
        body = "".join(units[start:best])
        closed = opened_before(best)
        chunk = "".join(opened) + (body if closed else body.rstrip()) + _closing(closed)
        if html_to_plain(chunk).strip():
            chunks.append(chunk)
        following = _NOT_SPACE.search(kinds, best)  # the next chunk starts past the whitespace
        start = following.start() if following else len(units)
    return chunks


def render_chunks(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Markdown in, Telegram HTML chunks out."""
    return split_html(markdown_to_html(text), limit)
