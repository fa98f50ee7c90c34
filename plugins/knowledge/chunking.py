"""Cutting a document's text into fragments a search can find and a prompt can hold.

A fragment never straddles a Markdown heading, so each one belongs to one section and records
that section's heading path ("Install > Linux"): the retrieval label says where the passage is.
Within a section the text is packed paragraph by paragraph up to a target size; a paragraph that
does not fit is cut between sentences, and a sentence longer than a whole fragment between words.
When a cut falls inside a paragraph, the next fragment repeats the last sentences before it (about
OVERLAP of the target), so a fact that spans the cut is still whole in one of them. Pure functions: no I/O, no state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TARGET_CHARS = 800  # about 200 tokens: several fit a prompt's knowledge budget
OVERLAP = 0.15
HEADING_SEPARATOR = " > "

_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# A sentence ends at . ! ? (or their CJK forms) and any closing quotes or brackets, before the
# spaces or line break (group "gap") that separate it from the next; a line break ends one too.
_SENTENCE_END = re.compile(r"[.!?。！？][\"')\]»”’]*(?P<gap>[ \t]*\n|[ \t]+)|(?P<line>\n)")


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    heading: str | None  # "A > B": the Markdown headings the fragment sits under, outermost first


@dataclass(frozen=True, slots=True)
class Section:
    heading: str | None
    body: str


@dataclass(frozen=True, slots=True)
class _Piece:
    """A sentence (or a slice of an overlong one) and what separated it from the piece before."""

    text: str
    paragraph: int
    separator: str  # "\n\n" between paragraphs, "\n" or " " within one


def split_sections(text: str) -> list[Section]:
    """Markdown sections with their heading paths; `#` lines inside fenced code are not headings."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    lines: list[str] = []
    fenced = False

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(HEADING_SEPARATOR.join(title for _, title in stack) or None, body))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading is None:
            lines.append(line)
            continue
        close()
        level = len(heading.group(1))
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading.group(2).strip()))
    close()
    return sections


def _split_words(sentence: str, limit: int) -> list[str]:
    """A sentence longer than `limit` in slices of whole words (a word longer than that is cut)."""
    slices: list[str] = []
    current = ""
    for word in sentence.split():
        while len(word) > limit:
            if current:
                slices.append(current)
                current = ""
            slices.append(word[:limit])
            word = word[limit:]
        if current and len(current) + 1 + len(word) > limit:
            slices.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        slices.append(current)
    return slices


def _pieces(body: str, limit: int) -> list[_Piece]:
    pieces: list[_Piece] = []
    for number, paragraph in enumerate(p for p in _PARAGRAPH_BREAK.split(body) if p.strip()):
        separator = "\n\n"
        position = 0
        for match in [*_SENTENCE_END.finditer(paragraph), None]:
            gap = None if match is None else match.group("gap") or match.group("line")
            end = len(paragraph) if match is None else match.start("gap" if match.group("gap") else "line")
            sentence = paragraph[position:end].strip()
            if sentence:
                for part in _split_words(sentence, limit) if len(sentence) > limit else [sentence]:
                    pieces.append(_Piece(part, number, separator))
                    separator = " "
                separator = "\n" if gap and "\n" in gap else " "
            if match is not None:
                position = match.end()
    return pieces


def _render(pieces: list[_Piece]) -> str:
    return "".join(piece.text if i == 0 else piece.separator + piece.text for i, piece in enumerate(pieces))


def _size(pieces: list[_Piece]) -> int:
    return len(_render(pieces))


def _overlap_tail(pieces: list[_Piece], limit: int) -> list[_Piece]:
    """The end of a fragment to repeat at the start of the next: its last whole sentences that fit
    in `limit` characters, else the last words of its last sentence (never the whole fragment)."""
    tail: list[_Piece] = []
    for piece in reversed(pieces[1:]):
        if _size([piece, *tail]) > limit:
            break
        tail.insert(0, piece)
    if tail or not pieces or limit <= 0:
        return tail
    words = pieces[-1].text.split()
    kept: list[str] = []
    while len(words) > 1 and len(" ".join([words[-1], *kept])) <= limit:
        kept.insert(0, words.pop())
    return [_Piece(" ".join(kept), pieces[-1].paragraph, " ")] if kept else []


def _pack(pieces: list[_Piece], target: int, overlap: int) -> list[str]:
    paragraph_sizes: dict[int, int] = {}
    for piece in pieces:
        paragraph_sizes[piece.paragraph] = paragraph_sizes.get(piece.paragraph, 0) + len(piece.text) + 1
    chunks: list[str] = []
    current: list[_Piece] = []
    fresh = 0  # pieces in `current` that are not overlap from the fragment before
    for piece in pieces:
        size = _size(current)
        grown = size + len(piece.separator) + len(piece.text)
        new_paragraph = bool(current) and current[-1].paragraph != piece.paragraph
        # Break before a paragraph that will not fit whole, once the fragment is a quarter full: a
        # fragment of whole paragraphs reads better than one that ends a sentence into the next.
        paragraph_spills = new_paragraph and size >= target // 4 and size + paragraph_sizes[piece.paragraph] > target
        if fresh and (grown > target or paragraph_spills):
            chunks.append(_render(current))
            # Overlap bridges a cut inside a paragraph; a cut between paragraphs splits nothing.
            current = [] if new_paragraph else _overlap_tail(current, overlap)
            if _size(current) + len(piece.text) + 2 > target:
                current = []
            fresh = 0
        current.append(piece)
        fresh += 1
    if fresh:
        chunks.append(_render(current))
    return chunks


def chunk_text(text: str, *, markdown: bool = True, target: int = TARGET_CHARS,
               overlap: float = OVERLAP) -> list[Chunk]:
    """The fragments of a document, in order. Plain text (`markdown=False`) has no headings."""
    if target < 20:
        raise ValueError("target must be at least 20 characters")
    sections = split_sections(text) if markdown else [Section(None, text.strip())] if text.strip() else []
    overlap_chars = int(target * overlap)
    return [Chunk(chunk, section.heading)
            for section in sections
            for chunk in _pack(_pieces(section.body, target), target, overlap_chars)]
