"""A document's bytes to plain text: Markdown, plain text, PDF (pypdf) and HTML (the stdlib parser).

Every failure is a `LoadError` whose message completes "<file> ..." in one line and says what to
do about it, so the indexer can log one warning per bad file and go on with the rest.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath

# pypdf logs a line per oddity it meets in a damaged file; the one warning per file is ours.
logging.getLogger("pypdf").setLevel(logging.CRITICAL)

KINDS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".pdf": "pdf", ".html": "html", ".htm": "html"}
SUPPORTED = ", ".join(KINDS)
TITLE_CHARS = 120
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\r\f\v]+")


class LoadError(Exception):
    """Why a file cannot be indexed and what to do, phrased to follow the file's name."""


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    text: str
    title: str
    markdown: bool  # whether `#` lines are headings the chunker should follow


def kind_of(name: str) -> str | None:
    """"markdown", "text", "pdf" or "html" by the file name's extension; None when unsupported."""
    return KINDS.get(PurePath(name).suffix.lower())


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a BOM), UTF-16 with a BOM, else Windows-1252; a file that is really
    binary (NUL bytes, undecodable bytes or many control characters) raises LoadError."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise _binary() from None
    if b"\x00" in data[:65536]:
        raise _binary()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            raise _binary() from None
    sample = text[:65536]
    if sample and len(_CONTROL.findall(sample)) > len(sample) // 100:
        raise _binary()
    return text


def _binary() -> LoadError:
    return LoadError("is binary, not text: save it as UTF-8 text, Markdown, PDF or HTML, or remove it")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:TITLE_CHARS]
    return ""


def _markdown_title(text: str) -> str:
    heading = re.search(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", text, re.MULTILINE)
    return heading.group(1).strip()[:TITLE_CHARS] if heading else _first_line(text)


def load_pdf(data: bytes) -> LoadedDocument:
    # pypdf (with fontTools and Pillow) takes ~7 MB: imported when a PDF is read (in a worker thread).
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # an owner-only password still reads
            raise FileNotDecryptedError("password")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    except (FileNotDecryptedError, DependencyError):
        raise LoadError("is an encrypted PDF: save a copy without the password (e.g. print it to PDF) "
                        "and index that instead") from None
    except Exception as error:  # pypdf raises many kinds for damaged files; all mean the same here
        detail = str(error).splitlines()[0][:80] if str(error) else type(error).__name__
        kind = "corrupt or truncated" if isinstance(error, PdfReadError) else "unreadable"
        raise LoadError(f"is not a readable PDF ({kind}: {detail}): re-export or repair it, "
                        "or remove it") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise LoadError("is a PDF without a text layer (a scan?): run OCR on it or add a text version")
    return LoadedDocument(text, title[:TITLE_CHARS] or _first_line(text), markdown=False)


class _HtmlText(HTMLParser):
    """The readable text of a page as light Markdown: headings become `#` lines (so the chunker
    follows them), blocks become paragraphs, list items `- ` lines; scripts, styles and navigation are dropped."""

    SKIP = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object", "nav"}
    BLOCKS = {"p", "div", "section", "article", "main", "header", "footer", "aside", "table", "tr",
              "blockquote", "pre", "ul", "ol", "dl", "dt", "dd", "figure", "figcaption", "form", "hr", "body"}
    HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skipping: list[str] = []
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skipping.append(tag)
        elif self._skipping:
            return
        elif tag in self.HEADINGS:
            self.parts.append("\n\n" + "#" * self.HEADINGS[tag] + " ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("br", "td", "th"):
            self.parts.append("\n" if tag == "br" else " ")
        elif tag in self.BLOCKS:
            self._pre += tag == "pre"
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif self._skipping:
            if tag == self._skipping[-1]:
                self._skipping.pop()
        elif tag in self.HEADINGS or tag in self.BLOCKS:
            self._pre -= tag == "pre" and self._pre > 0
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skipping:
            self.parts.append(data if self._pre else _SPACES.sub(" ", data.replace("\n", " ")))

    def text(self) -> str:
        joined = "".join(self.parts)
        lines = [line.strip() if not line.startswith("    ") else line.rstrip() for line in joined.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def load_html(data: bytes) -> LoadedDocument:
    parser = _HtmlText()
    parser.feed(decode_text(data))
    parser.close()
    text = parser.text()
    title = _SPACES.sub(" ", parser.title).strip()[:TITLE_CHARS]
    return LoadedDocument(text, title or _markdown_title(text), markdown=True)


def load_bytes(name: str, data: bytes) -> LoadedDocument:
    """The text of a document named `name` (its extension picks the reader)."""
    kind = kind_of(name)
    if kind is None:
        raise LoadError(f"is not a supported type (use {SUPPORTED})")
    if kind == "pdf":
        return load_pdf(data)
    if kind == "html":
        document = load_html(data)
    else:
        text = decode_text(data).replace("\r\n", "\n").strip()
        document = LoadedDocument(text, _markdown_title(text) if kind == "markdown" else _first_line(text),
                                  markdown=kind == "markdown")
    if not document.text:
        raise LoadError("has no text: add some, or remove it")
    return document
