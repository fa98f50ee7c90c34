"""The knowledge base: documents and their fragments in the `memories` table, kept in step with the sources.

A document is a DOCUMENT memory whose metadata records its source, the SHA-256 of its bytes and
how many fragments it has; its fragments are FRAGMENT memories whose ids derive from the document
id, their position and that hash. So a restart re-reads only hashes: an unchanged document costs
nothing, a changed one has its old fragments (found by id, without a scan) replaced, and one whose
source is gone is removed. The document row is written before its fragments and marked `complete`
once they are stored and embedded, so a pass cut short by a stop is redone at the next start
rather than left half done.

Embeddings come from the TEXT_EMBEDDING model in batches that small documents share. The document
records the vector size its fragments were embedded with (`embedding_dim`); when the model changes
size, or had failed, they are embedded again — never mixed. A failing model leaves documents
searchable by text.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal

from bot.character import Character
from bot.ids import create_unique_uuid
from bot.runtime_models import ModelError
from bot.settings import Settings
from bot.types import Content, Memory, MemoryType, ModelType

from .chunking import chunk_text
from .loaders import SUPPORTED, LoadedDocument, LoadError, kind_of, load_bytes
from .retrieval import knowledge_changed
from .sources import Source, discover

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

EMBED_BATCH = 64
LOCK_RETRY_SECONDS = 1.0  # how often a process waiting for another's start-up pass asks again
SOURCE = "knowledge"


class KnowledgeInputError(ValueError):
    """An upload that cannot be indexed; the message is one line for the uploader."""


@dataclass
class IndexProgress:
    """The start-up pass, for the log and /ready: "waiting" → "indexing" → "ready" (or "failed")."""

    state: Literal["waiting", "indexing", "ready", "failed"] = "waiting"
    documents: int = 0  # sources found
    done: int = 0  # of them looked at so far
    indexed: int = 0  # new or changed documents (re)indexed
    embedded: int = 0  # unchanged documents whose fragments were (re-)embedded
    removed: int = 0  # documents whose source is gone
    fragments: int = 0  # fragments written or embedded in this pass
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A stored document as the API lists it."""

    id: uuid.UUID
    source: str
    origin: str
    title: str
    path: str | None
    hash: str
    size: int
    fragments: int
    shared: bool
    embedded: bool  # every fragment has an embedding of the size the document records
    created_at: int

    @classmethod
    def of(cls, document: Memory) -> DocumentInfo:
        meta = document.metadata["knowledge"]
        return cls(document.id, meta["source"], meta["origin"], document.content.text, meta.get("path"),
                   meta["hash"], meta["size"], meta["fragments"], meta["shared"],
                   meta.get("embedding_dim") is not None, document.created_at)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "id": str(self.id)}


def fragment_id(agent_id: uuid.UUID, document_id: uuid.UUID, position: int, digest: str) -> uuid.UUID:
    return create_unique_uuid(agent_id, f"{document_id}:{position}:{digest}")


def embedding_input(fragment: Memory) -> str:
    """What a fragment's vector is made from: its heading path too, which names what it is about."""
    heading = fragment.metadata["knowledge"].get("heading")
    return f"{heading}\n{fragment.content.text}" if heading else fragment.content.text


def _meta(document: Memory) -> dict[str, Any]:
    return document.metadata["knowledge"]


class KnowledgeBase:
    """Indexes the character's and the folder's documents, takes uploads, lists and deletes documents.

    Built with the plugin (before the runtime exists, so routes can hold it); `attach` gives it
    the runtime and `start` launches the start-up pass in the background.
    """

    def __init__(self, settings: Settings, character: Character) -> None:
        self.settings, self.character = settings, character
        self.runtime: AgentRuntime | None = None
        self.progress = IndexProgress()
        self.indexed = asyncio.Event()  # set when the start-up pass has ended, however it ended
        self._lock = asyncio.Lock()  # one document changes at a time: the pass, uploads and deletes interleave
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting: list[tuple[Memory, list[Memory]]] = []  # documents whose fragments await vectors
        self._embedding_failed = False

    # Lifecycle ----------------------------------------------------------------------------------
    def attach(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    def start(self) -> None:
        """Launch the start-up pass and return at once: the bot answers while it runs."""
        self._spawn(self.index_all(), "knowledge-index")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Until the background work started so far (the pass, uploads' embeddings) has ended."""
        while pending := [task for task in self._tasks if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def _runtime(self) -> AgentRuntime:
        if self.runtime is None:
            raise RuntimeError("the knowledge base is not attached to a runtime yet")
        return self.runtime

    # The start-up pass ----------------------------------------------------------------------------
    async def index_all(self) -> IndexProgress:
        """Bring the store in step with the sources; one log line at the start, one at the end."""
        progress = self.progress = IndexProgress(state="indexing")
        self._embedding_failed = False
        started = time.monotonic()
        try:
            async with self._one_process_indexing():
                await self._index_all(progress)
            progress.state = "ready"
        except asyncio.CancelledError:
            progress.state = "failed"
            raise
        except Exception as error:  # the bot goes on without (the rest of) its documents
            progress.state = "failed"
            log.error("knowledge: indexing stopped (documents so far stay searchable; the next start "
                      "tries again): %s: %s", type(error).__name__, error)
        finally:
            progress.seconds = round(time.monotonic() - started, 2)
            self.indexed.set()
        if progress.state == "ready" and (progress.documents or progress.removed):
            log.info("knowledge: %d documents ready (%d fragments written or embedded) in %.1f s; %d indexed, "
                     "%d re-embedded, %d removed", progress.documents, progress.fragments, progress.seconds,
                     progress.indexed, progress.embedded, progress.removed)
        return progress

    @asynccontextmanager
    async def _one_process_indexing(self) -> AsyncIterator[None]:
        """With several processes on one PostgreSQL database, one start-up pass at a time per agent
        (an advisory lock): the others wait, then find the documents indexed and only read hashes.
        A process that waited forgets its loaded vectors, so its searches see the other's."""
        runtime = self._runtime
        coordinator = runtime.store.coordinator()
        if coordinator is None:
            yield
            return
        key = create_unique_uuid(runtime.agent_id, "knowledge:indexing")
        try:
            for attempt in itertools.count():
                if await coordinator.claim(key, self):
                    break
                if attempt == 0:
                    log.info("knowledge: another process is indexing this agent's documents; waiting for it")
                await asyncio.sleep(LOCK_RETRY_SECONDS)
            if attempt:
                runtime.store.forget_vectors(runtime.agent_id)
            yield
        finally:
            await coordinator.release(key, self)  # the store's coordinator, shared: only our lock goes

    async def _index_all(self, progress: IndexProgress) -> None:
        found = await asyncio.to_thread(discover, self.character, self.settings)
        for line in found.skipped:
            log.info("%s", line)
        for line in found.warnings:
            log.warning("%s", line)
        agent_id = self._runtime.agent_id
        stored = {doc.id: doc for doc in await self._documents()}
        digests = await asyncio.to_thread(lambda: [source.digest() for source in found.sources])
        dim = await self._current_dim(stored.values())
        plan: list[tuple[Source | None, Memory | None, str]] = []  # what to do: "index" | "embed"
        for source, digest in zip(found.sources, digests, strict=True):
            document = stored.get(source.document_id(agent_id))
            action = self._action(source, digest, document, dim)
            if action is not None:
                plan.append((source, document, action))
        kept = {source.document_id(agent_id) for source in found.sources}
        gone = [doc for doc in stored.values() if doc.id not in kept and _meta(doc)["origin"] != "upload"]
        plan += [(None, doc, "embed") for doc in stored.values() if _meta(doc)["origin"] == "upload"
                 and self._action(None, _meta(doc)["hash"], doc, dim) == "embed"]
        progress.documents = len(found.sources)
        progress.done = len(found.sources) - sum(source is not None for source, _, _ in plan)
        if plan or gone:
            log.info("knowledge: indexing in the background: %d documents, %d new or changed, %d to embed, "
                     "%d unchanged, %d removed", len(found.sources), sum(a == "index" for *_, a in plan),
                     sum(a == "embed" for *_, a in plan), progress.done, len(gone))
        for source, document, action in plan:
            async with self._lock:
                if action == "embed" and document is not None:
                    progress.fragments += await self._queue(document, await self._stored_fragments(document))
                    progress.embedded += 1
                elif source is not None and (written := await self._index_source(source, document)) is not None:
                    progress.fragments += written
                    progress.indexed += 1
            progress.done += source is not None
        for document in gone:
            async with self._lock:
                await self._remove(document)
            progress.removed += 1
        async with self._lock:
            await self._flush()
        if plan or gone:
            knowledge_changed(self._runtime)

    def _action(self, source: Source | None, digest: str | None, document: Memory | None,
                dim: int | None) -> str | None:
        """"index" (new, changed, cut short), "embed" (fragments lack vectors of the model's size) or None."""
        if document is None or digest is None:
            return "index"
        meta = _meta(document)
        if meta["hash"] != digest or not meta.get("complete"):
            return "index"
        if source is not None and (meta["source"] != source.name or meta["shared"] != source.shared):
            return "index"
        stale = meta.get("embedding_dim") is None or (dim is not None and meta["embedding_dim"] != dim)
        if meta["fragments"] and stale and self._runtime.has_model(ModelType.TEXT_EMBEDDING):
            return "embed"
        return None

    async def _current_dim(self, documents: Iterable[Memory]) -> int | None:
        """The embedding model's vector size, asked only when stored documents have vectors to compare."""
        sizes = {_meta(doc).get("embedding_dim") for doc in documents} - {None}
        if not sizes or not self._runtime.has_model(ModelType.TEXT_EMBEDDING):
            return None
        try:  # the size check (plugins/bootstrap/embeddings.py) says when it changed: one line
            return await self._runtime.embedding_size()
        except ModelError as error:
            self._embedding_failure(error)
            return None

    # One document ---------------------------------------------------------------------------------
    async def _index_source(self, source: Source, old: Memory | None) -> int | None:
        """(Re)index one source: its fragment count, or None (and one warning, its old version
        removed) when it cannot be read."""
        try:
            data, loaded = await asyncio.to_thread(source.read)
        except LoadError as error:
            log.warning("knowledge: %s %s", source.name, error)
            if old is not None:
                await self._remove(old)
            return None
        document, fragments = await self._store_document(source, data, loaded, old)
        return await self._queue(document, fragments)

    async def _store_document(self, source: Source, data: bytes, loaded: LoadedDocument,
                              old: Memory | None) -> tuple[Memory, list[Memory]]:
        """The document row (not yet `complete`), then its fragments, without vectors."""
        runtime = self._runtime
        agent_id, store = runtime.agent_id, runtime.store
        digest, chunks = await asyncio.to_thread(
            lambda: (hashlib.sha256(data).hexdigest(), chunk_text(loaded.text, markdown=loaded.markdown)))
        if old is not None:
            await self._delete_fragments(old)
        document = Memory(
            id=source.document_id(agent_id), entity_id=agent_id, agent_id=agent_id, room_id=agent_id,
            type=MemoryType.DOCUMENT, content=Content(text=loaded.title or source.name, source=SOURCE),
            metadata={"knowledge": {
                "source": source.name, "origin": source.origin, "path": str(source.path) if source.path else None,
                "hash": digest, "size": len(data), "fragments": len(chunks), "shared": source.shared,
                "complete": False, "embedding_dim": None}})
        if not await store.create_memory(document):
            await store.update_memory(document)
        fragments = [
            Memory(id=fragment_id(agent_id, document.id, position, digest), entity_id=agent_id, agent_id=agent_id,
                   room_id=agent_id, type=MemoryType.FRAGMENT, content=Content(text=chunk.text, source=SOURCE),
                   metadata={"knowledge": {"document_id": str(document.id), "source": source.name,
                                           "position": position, "heading": chunk.heading, "shared": source.shared}})
            for position, chunk in enumerate(chunks)]
        for fragment in fragments:
            await store.create_memory(fragment)
        return document, fragments

    def _fragment_ids(self, document: Memory) -> list[uuid.UUID]:
        meta = _meta(document)
        return [fragment_id(self._runtime.agent_id, document.id, position, meta["hash"])
                for position in range(meta["fragments"])]

    async def _stored_fragments(self, document: Memory) -> list[Memory]:
        found = [await self._runtime.store.get_memory(memory_id) for memory_id in self._fragment_ids(document)]
        return [fragment for fragment in found if fragment is not None]

    async def _delete_fragments(self, document: Memory) -> None:
        for memory_id in self._fragment_ids(document):
            await self._runtime.store.delete_memory(memory_id)

    async def _remove(self, document: Memory) -> None:
        await self._delete_fragments(document)
        await self._runtime.store.delete_memory(document.id)
        log.info("knowledge: removed %s", _meta(document)["source"])

    # Embeddings -------------------------------------------------------------------------------------
    async def _queue(self, document: Memory, fragments: list[Memory]) -> int:
        """Hold a document's fragments until a full batch is waiting (small documents share model
        calls); returns how many were queued."""
        self._waiting.append((document, fragments))
        if sum(len(items) for _, items in self._waiting) >= EMBED_BATCH:
            await self._flush()
        return len(fragments)

    async def _flush(self) -> None:
        """Embed the waiting fragments in batches; then each of their documents is `complete`, with
        the vector size, or none when there is no model or it failed (the next start embeds them)."""
        waiting, self._waiting = self._waiting, []
        fragments = [fragment for _, items in waiting for fragment in items]
        dim: int | None = None
        if fragments and self._runtime.has_model(ModelType.TEXT_EMBEDDING):
            for start in range(0, len(fragments), EMBED_BATCH):
                batch = fragments[start:start + EMBED_BATCH]
                vectors = await self._embed_texts([embedding_input(f) for f in batch])
                if vectors is None:
                    dim = None
                    break
                await self._runtime.store.set_embeddings([(f.id, v) for f, v in zip(batch, vectors, strict=True)])
                dim = len(vectors[0])
        for document, items in waiting:
            _meta(document).update(complete=True, embedding_dim=dim if items else None)
            await self._runtime.store.update_memory(document)

    async def _embed_texts(self, texts: list[str]) -> list[list[float]] | None:
        """The model's vectors, or None after one warning: the first failure stops embedding until restart."""
        if self._embedding_failed:
            return None
        try:
            vectors = await self._runtime.use_model(ModelType.TEXT_EMBEDDING, {"texts": texts})
            if len(vectors) != len(texts) or not all(len(v) for v in vectors):
                raise ValueError(f"asked for {len(texts)} vectors, got {len(vectors)}")
        except Exception as error:
            self._embedding_failure(error)
            return None
        return [list(v) for v in vectors]

    def _embedding_failure(self, error: Exception) -> None:
        self._embedding_failed = True
        log.warning("knowledge: embedding failed, so documents are searched by full text only until the next "
                    "start (check the embedding model): %s: %s", type(error).__name__, error)

    # What the API asks ----------------------------------------------------------------------------
    async def _documents(self) -> list[Memory]:
        agent_id = self._runtime.agent_id
        documents = await self._runtime.store.get_memories(agent_id=agent_id, room_id=agent_id,
                                                           type=MemoryType.DOCUMENT, count=None)
        return [doc for doc in documents if isinstance(doc.metadata.get("knowledge"), dict)]

    async def list_documents(self) -> list[DocumentInfo]:
        return sorted((DocumentInfo.of(doc) for doc in await self._documents()), key=lambda d: (d.origin, d.source))

    async def add_upload(self, name: str, data: bytes) -> DocumentInfo:
        """Index an uploaded file now (its text is kept, not its bytes); a file of the same name is
        replaced. Raises KnowledgeInputError for a bad type, size or content."""
        name = PurePath(name.replace("\\", "/")).name.strip()
        if not name or kind_of(name) is None:
            raise KnowledgeInputError(f"{name or 'the file'} is not a supported type (use {SUPPORTED})")
        limit = self.settings.knowledge_max_file_mb * 1_000_000
        if len(data) > limit:
            raise KnowledgeInputError(f"{name} is {len(data) / 1_000_000:.1f} MB, over KNOWLEDGE_MAX_FILE_MB "
                                      f"({self.settings.knowledge_max_file_mb:g}): split it into smaller files")
        try:
            loaded = await asyncio.to_thread(load_bytes, name, data)
        except LoadError as error:
            raise KnowledgeInputError(f"{name} {error}") from None
        source = Source("upload", name, name)
        async with self._lock:
            old = await self._runtime.store.get_memory(source.document_id(self._runtime.agent_id))
            document, _ = await self._store_document(source, data, loaded, old)
            _meta(document)["complete"] = True  # searchable by text now; vectors follow in the background
            await self._runtime.store.update_memory(document)
        knowledge_changed(self._runtime)
        self._spawn(self._embed_upload(document.id), "knowledge-embed-upload")
        log.info("knowledge: indexed upload %s (%d fragments)", name, _meta(document)["fragments"])
        return DocumentInfo.of(document)

    async def _embed_upload(self, document_id: uuid.UUID) -> None:
        """Vectors for an upload's fragments, unless it was replaced or deleted meanwhile."""
        async with self._lock:
            document = await self._runtime.store.get_memory(document_id)
            if document is not None and _meta(document).get("embedding_dim") is None:
                await self._queue(document, await self._stored_fragments(document))
                await self._flush()

    async def delete(self, document_id: uuid.UUID) -> bool:
        """Remove a document and its fragments; False when the agent has no such document. A file's
        document comes back at the next start while the file is still there."""
        async with self._lock:
            document = await self._runtime.store.get_memory(document_id)
            if (document is None or document.agent_id != self._runtime.agent_id
                    or document.type is not MemoryType.DOCUMENT or "knowledge" not in document.metadata):
                return False
            await self._remove(document)
        knowledge_changed(self._runtime)
        return True
