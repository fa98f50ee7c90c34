"""Where knowledge comes from: the character's `knowledge` entries and the KNOWLEDGE_PATH folder.

Discovery only lists and checks sources (existence, type, size); the indexer reads and parses
them (`Source.read`) document by document. Paths in the character file are relative to that file, as in
elizaOS. Problems become one line each, naming the file and the fix; the rest is indexed.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bot.character import Character, KnowledgeRef
from bot.ids import create_unique_uuid
from bot.settings import Settings

from .loaders import SUPPORTED, TITLE_CHARS, LoadedDocument, LoadError, kind_of, load_bytes

Origin = Literal["character", "folder", "upload"]


@dataclass(frozen=True, slots=True)
class Source:
    """One document to index: a file (`path`) or text given inline (`text`)."""

    origin: Origin
    key: str  # what the document's id derives from: the resolved path, the upload name, index+hash
    name: str  # shown to the model and the operator: a relative path, a file name, "character knowledge 3"
    shared: bool = False
    path: Path | None = None
    text: str | None = None

    def document_id(self, agent_id: uuid.UUID) -> uuid.UUID:
        return document_id(agent_id, self.origin, self.key)

    def digest(self) -> str | None:
        """SHA-256 of the bytes, or None when the file cannot be read now (`read` will say why). Blocking."""
        if self.text is not None:
            return hashlib.sha256(self.text.encode()).hexdigest()
        assert self.path is not None
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def read(self) -> tuple[bytes, LoadedDocument]:
        """The bytes and their text; LoadError when they cannot be indexed. Blocking."""
        if self.text is not None:
            return self.text.encode(), LoadedDocument(self.text, self.text.splitlines()[0][:TITLE_CHARS], markdown=True)
        assert self.path is not None
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise LoadError(f"cannot be read ({error.strerror}): check that it exists and its permissions") from None
        return data, load_bytes(self.path.name, data)


def document_id(agent_id: uuid.UUID, origin: Origin, key: str) -> uuid.UUID:
    return create_unique_uuid(agent_id, f"knowledge:{origin}:{key}")


@dataclass
class Discovery:
    sources: list[Source] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # bad input: one line each, logged as warnings
    skipped: list[str] = field(default_factory=list)  # files of other types met in folders: logged as info


def _display(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


class _Finder:
    """Collects sources in order; a file reached twice (by a path and a folder) is indexed once."""

    def __init__(self, max_bytes: int) -> None:
        self.found = Discovery()
        self.max_bytes = max_bytes
        self._seen: set[Path] = set()

    def add_file(self, path: Path, base: Path, origin: Origin, shared: bool, *, named: bool) -> None:
        """`named`: the operator named this file itself, so an unsupported type is a warning."""
        resolved = path.resolve()
        if resolved in self._seen:
            return
        self._seen.add(resolved)
        display = _display(resolved, base)
        if kind_of(path.name) is None:
            line = f"knowledge: skipped {display}: not a supported type (use {SUPPORTED})"
            (self.found.warnings if named else self.found.skipped).append(line)
            return
        try:
            size = resolved.stat().st_size
        except OSError as error:
            self.found.warnings.append(f"knowledge: {display} cannot be read ({error.strerror}): "
                                       "check its permissions, or remove it")
            return
        if size > self.max_bytes:
            self.found.warnings.append(
                f"knowledge: {display} is {size / 1_000_000:.1f} MB, over KNOWLEDGE_MAX_FILE_MB "
                f"({self.max_bytes / 1_000_000:g}): split it into smaller files or raise KNOWLEDGE_MAX_FILE_MB")
            return
        self.found.sources.append(Source(origin, str(resolved), display, shared, path=resolved))

    def add_directory(self, directory: Path, base: Path, origin: Origin, shared: bool) -> None:
        """Every file below `directory`, in name order; hidden files and folders are not documents."""
        for root, folders, files in os.walk(directory):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    self.add_file(Path(root) / name, base, origin, shared, named=False)

    def add_path(self, path: Path, base: Path, origin: Origin, shared: bool, *, what: str) -> None:
        if path.is_dir():
            self.add_directory(path, base, origin, shared)
        elif path.is_file():
            self.add_file(path, base, origin, shared, named=True)
        else:
            self.found.warnings.append(f"knowledge: {what} {_display(path, base)} does not exist "
                                       f"(looked for {path}): fix the path, or remove the entry")


def inline_source(index: int, text: str) -> Source:
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Source("character", f"{index}:{digest}", f"character knowledge {index + 1}", text=text)


def discover(character: Character, settings: Settings) -> Discovery:
    """The character's entries in order, then the KNOWLEDGE_PATH folder. Blocking (file system)."""
    finder = _Finder(int(settings.knowledge_max_file_mb * 1_000_000))
    base = settings.character_path.resolve().parent
    for index, entry in enumerate(character.knowledge):
        if isinstance(entry, str):
            if entry.strip():
                finder.found.sources.append(inline_source(index, entry.strip()))
        elif isinstance(entry, KnowledgeRef) and (entry.path or entry.directory):
            target = entry.path or entry.directory or ""
            what = "path" if entry.path else "directory"
            finder.add_path(base / target, base, "character", entry.shared, what=f"character knowledge {what}")
        else:
            finder.found.warnings.append(
                f"knowledge: character knowledge entry {index + 1} has neither a path nor a directory: "
                'write {"path": "file.md"} or {"directory": "docs"}, or a plain string')
    folder = settings.knowledge_path
    if folder is not None:
        if folder.resolve().is_dir():
            finder.add_directory(folder.resolve(), folder.resolve(), "folder", True)
        else:
            finder.found.warnings.append(f"knowledge: KNOWLEDGE_PATH {folder} is not a folder: "
                                         "create it or fix KNOWLEDGE_PATH")
    return finder.found
