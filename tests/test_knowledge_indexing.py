"""Knowledge indexing (issue #13): sources, loaders, chunking, the store, restarts and bad input.

Store-level tests run on SQLite and PostgreSQL (the `store` fixture) with a counting embedder; the
App-level ones run the whole bot on SQLite with the real OpenAI provider against FakeOpenAI, and
count the texts its /embeddings endpoint was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader, PdfWriter

from bot.app import App
from bot.character import load_character
from bot.runtime import AgentRuntime
from bot.store.base import Store
from bot.types import MemoryType, ModelType
from plugins.bootstrap.embeddings import VectorSizeCheck
from plugins.knowledge import KnowledgeInputError, create_plugin, knowledge_base
from plugins.knowledge.chunking import chunk_text, split_sections
from plugins.knowledge.indexer import KnowledgeBase
from plugins.knowledge.loaders import LoadError, load_bytes
from tests.fakes.openai_server import FakeOpenAI
from tests.runtime_helpers import STARTED, ScriptedModel, make_settings, start_runtime
from tests.server_helpers import settings_for

WAIT = 30


# --- helpers ---------------------------------------------------------------------------------------
def make_pdf(*pages: list[str], title: str | None = None) -> bytes:
    """A minimal PDF whose pages show these lines in Helvetica (what pypdf's text extraction reads)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(len(pages)))}] "
               f"/Count {len(pages)} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, lines in enumerate(pages):
        shown = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        stream = "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({line}) Tj T*" for line in shown) + " ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    if title:
        objects.append(f"<< /Title ({title}) >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    info = f" /Info {len(objects)} 0 R" if title else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypted(pdf: bytes, password: str = "secret", **options: Any) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(password, **options)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


class Embedder:
    """A TEXT_EMBEDDING model that counts the texts it embeds; vectors of `dim` from each text's hash."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.texts: list[str] = []

    def __call__(self, params: dict[str, Any]) -> list[list[float]] | list[float]:
        texts = params["texts"] if "texts" in params else [params["text"]]
        self.texts.extend(texts)
        vectors = [[b / 255 + 0.01 for b in hashlib.sha256(t.encode()).digest()[:self.dim]] for t in texts]
        return vectors if "texts" in params else vectors[0]


MARKDOWN = """# Zorblax 3000

The Zorblax 3000 is a blender for the whole family.

## Warranty

The warranty lasts seven years and covers the motor and the glass jar.

## Cleaning

Rinse the jar with warm water after every use.
"""
HTML = b"""<html><head><title>Shipping</title><style>.x{color:red}</style>
<script>var tracking = "SCRIPT-ONLY-TEXT";</script></head>
<body><h1>Shipping</h1><p>Orders ship from Lisbon within two working days.</p></body></html>"""


def write_corpus(root: Path) -> Path:
    """A character file with a string, a Markdown file, a PDF, an HTML page and a folder; its path."""
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "guide.md").write_text(MARKDOWN)
    (root / "manual.pdf").write_bytes(make_pdf(["The secret pairing code is 4711."], ["Reset by holding the knob."]))
    (root / "shipping.html").write_bytes(HTML)
    (root / "docs" / "team.txt").write_text("Marta leads the support team and answers escalations on Fridays.")
    (root / "docs" / "sub" / "returns.md").write_text("# Returns\n\nReturns are free within thirty days.")
    (root / "docs" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    character = {"name": "Ava", "bio": ["Ava answers questions about the Zorblax."], "knowledge": [
        "Ava's favourite colour is teal.", {"path": "guide.md"}, {"path": "manual.pdf", "shared": True},
        {"path": "shipping.html"}, {"directory": "docs"}]}
    path = root / "character.json"
    path.write_text(json.dumps(character))
    return path


async def start(store: Store, tmp_path: Path, character_path: Path, embedder: Embedder,
                **settings: Any) -> tuple[AgentRuntime, KnowledgeBase]:
    """A runtime with the knowledge plugin, once its start-up pass has ended."""
    config = make_settings(tmp_path, character_path=character_path, **settings)
    character = load_character(character_path).character
    model = ScriptedModel(defaults={ModelType.TEXT_EMBEDDING: embedder})
    plugin = create_plugin(config, character)
    assert plugin is not None
    runtime = await start_runtime(store, config, model, plugin, character=character,
                                  model_types=(ModelType.TEXT_SMALL, ModelType.TEXT_LARGE, ModelType.TEXT_EMBEDDING))
    base = knowledge_base(runtime)
    assert base is not None
    await asyncio.wait_for(base.indexed.wait(), WAIT)
    return runtime, base


async def stop(runtime: AgentRuntime) -> None:
    STARTED.remove(runtime)
    await runtime.stop()


async def fragments_by_source(store: Store, agent_id: uuid.UUID) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for fragment in await store.get_memories(agent_id=agent_id, type=MemoryType.FRAGMENT, count=None):
        found.setdefault(fragment.metadata["knowledge"]["source"], []).append(fragment)
    return found


# --- chunking --------------------------------------------------------------------------------------
def test_sections_follow_markdown_headings_but_not_code() -> None:
    text = "# A\nintro\n## B\nbody b\n```\n# not a heading\n```\n### C\nbody c\n## D\nbody d\n# E\nbody e"
    assert [(s.heading, s.body.splitlines()[0]) for s in split_sections(text)] == [
        ("A", "intro"), ("A > B", "body b"), ("A > B > C", "body c"), ("A > D", "body d"), ("E", "body e")]
    assert "# not a heading" in split_sections(text)[1].body


def test_chunks_pack_paragraphs_to_the_target_and_overlap() -> None:
    sentences = [f"Fact number {i} is that the value of item {i} equals {i * 7}." for i in range(60)]
    text = "# Facts\n\n" + "\n\n".join(" ".join(sentences[i:i + 3]) for i in range(0, 60, 3))
    chunks = chunk_text(text, target=400)
    assert len(chunks) > 5 and all(c.heading == "Facts" for c in chunks)
    assert all(len(c.text) <= 400 for c in chunks)
    joined = " ".join(c.text for c in chunks)
    assert all(sentence in joined for sentence in sentences)  # no sentence is lost or cut
    for before, after in zip(chunks, chunks[1:], strict=False):  # each fragment starts with its predecessor's end
        assert before.text.endswith(after.text.split(" ")[0]) or after.text.split(" ", 1)[0] in before.text[-80:]


def test_paragraph_that_fits_is_not_split() -> None:
    first = "Short opening paragraph. " * 8
    second = "Second paragraph with its own topic. " * 8
    chunks = chunk_text(f"{first.strip()}\n\n{second.strip()}", target=400, markdown=False)
    assert [c.text for c in chunks] == [first.strip(), second.strip()]
    assert all(c.heading is None for c in chunks)


def test_overlong_sentence_is_cut_between_words() -> None:
    words = [f"word{i}" for i in range(400)]
    chunks = chunk_text(" ".join(words), target=200, overlap=0)
    assert all(len(c.text) <= 200 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == words


def test_nothing_to_chunk() -> None:
    assert chunk_text("") == [] and chunk_text("# Title only\n") == []


# --- loaders ---------------------------------------------------------------------------------------
def test_html_keeps_text_and_headings_without_scripts_or_styles() -> None:
    document = load_bytes("page.HTM", HTML)
    assert document.title == "Shipping"
    assert "Orders ship from Lisbon" in document.text and "SCRIPT-ONLY-TEXT" not in document.text
    assert "color:red" not in document.text
    assert [c.heading for c in chunk_text(document.text)] == ["Shipping"]


def test_pdf_text_and_title() -> None:
    document = load_bytes("m.pdf", make_pdf(["Page one line."], ["Page two line."], title="The Manual"))
    assert document.title == "The Manual"
    assert "Page one line." in document.text and "Page two line." in document.text


def test_a_pdf_locked_only_against_editing_is_read() -> None:
    """An owner password alone (AES): every viewer opens it without asking, so we read it too."""
    pdf = encrypted(make_pdf(["Open to read."]), "", owner_password="owner", algorithm="AES-128")
    assert PdfReader(io.BytesIO(pdf)).is_encrypted
    assert load_bytes("open.pdf", pdf).text == "Open to read."


@pytest.mark.parametrize(("name", "data", "says", "fix"), [
    ("locked.pdf", encrypted(make_pdf(["hidden"])), "encrypted PDF", "save a copy without the password"),
    ("broken.pdf", b"%PDF-1.4\nthis is not a PDF at all\n", "not a readable PDF", "re-export or repair it"),
    ("empty.pdf", b"", "not a readable PDF", "re-export or repair it"),
    ("blob.txt", bytes(range(256)) * 8, "binary", "save it as UTF-8 text"),
    ("image.md", b"\x89PNG\r\n\x1a\n" + bytes(range(1, 250)) * 4, "binary", "save it as UTF-8 text"),
    ("photo.png", b"\x89PNG", "not a supported type", "use .md"),
])
def test_bad_files_raise_one_line_with_the_fix(name: str, data: bytes, says: str, fix: str) -> None:
    with pytest.raises(LoadError) as caught:
        load_bytes(name, data)
    message = str(caught.value)
    assert says in message and fix in message and "\n" not in message


def test_text_in_other_encodings() -> None:
    assert load_bytes("a.txt", "Grüße aus Köln".encode("cp1252")).text == "Grüße aus Köln"
    assert load_bytes("a.txt", "\ufeffBOM".encode()).text == "BOM"
    assert load_bytes("a.txt", "UTF-16 text".encode("utf-16")).text == "UTF-16 text"


# --- indexing into the store (SQLite and PostgreSQL) ---------------------------------------------------
async def test_every_source_kind_is_indexed_with_its_source(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "operator"
    folder.mkdir()
    (folder / "faq.md").write_text("# FAQ\n\nThe shop opens at nine.")
    embedder = Embedder()
    runtime, base = await start(store, tmp_path, write_corpus(tmp_path / "ava"), embedder, knowledge_path=folder)
    assert base.progress.state == "ready"
    documents = {d.source: d for d in await base.list_documents()}
    assert set(documents) == {"character knowledge 1", "guide.md", "manual.pdf", "shipping.html", "docs/team.txt",
                              "docs/sub/returns.md", "faq.md"}  # the .png in docs/ is skipped
    assert documents["faq.md"].origin == "folder" and documents["faq.md"].shared
    assert documents["manual.pdf"].origin == "character" and documents["manual.pdf"].shared
    assert not documents["guide.md"].shared and documents["guide.md"].title == "Zorblax 3000"
    assert documents["guide.md"].path == str((tmp_path / "ava" / "guide.md").resolve())
    assert all(d.embedded for d in documents.values())

    fragments = await fragments_by_source(store, runtime.agent_id)
    assert {source: len(items) for source, items in fragments.items()} == {
        source: info.fragments for source, info in documents.items()}
    guide = sorted(fragments["guide.md"], key=lambda f: f.metadata["knowledge"]["position"])
    assert [f.metadata["knowledge"]["heading"] for f in guide] == [
        "Zorblax 3000", "Zorblax 3000 > Warranty", "Zorblax 3000 > Cleaning"]
    assert "seven years" in guide[1].content.text
    assert all(f.metadata["knowledge"]["document_id"] == str(documents["guide.md"].id) for f in guide)
    assert "4711" in " ".join(f.content.text for f in fragments["manual.pdf"])
    assert "SCRIPT-ONLY-TEXT" not in " ".join(f.content.text for f in fragments["shipping.html"])
    assert fragments["character knowledge 1"][0].content.text == "Ava's favourite colour is teal."
    all_fragments = [f for items in fragments.values() for f in items]
    assert all(f.embedding is not None and len(f.embedding) == 8 for f in all_fragments)
    assert len(embedder.texts) == len(all_fragments)  # each fragment embedded once, no probe on a first run
    assert all(f.room_id == runtime.agent_id == f.entity_id and f.content.source == "knowledge" for f in all_fragments)
    hits = await store.search_memories_by_text("Lisbon", agent_id=runtime.agent_id, type=MemoryType.FRAGMENT)
    assert [h.memory.metadata["knowledge"]["source"] for h in hits] == ["shipping.html"]


async def test_restart_reindexes_only_what_changed(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "ava"
    character = write_corpus(root)
    runtime, base = await start(store, tmp_path, character, Embedder())
    before = await fragments_by_source(store, runtime.agent_id)
    await stop(runtime)

    (root / "docs" / "sub" / "returns.md").write_text("# Returns\n\nReturns are free within sixty days.")
    (root / "docs" / "team.txt").unlink()
    embedder = Embedder()
    runtime, base = await start(store, tmp_path, character, embedder)
    after = await fragments_by_source(store, runtime.agent_id)
    assert (base.progress.indexed, base.progress.removed, base.progress.embedded) == (1, 1, 0)
    # One probe of the model's vector size (the indexer's and the size check's), then the edited
    # file's fragments: nothing else.
    assert embedder.texts == ["size", "Returns\nReturns are free within sixty days."]
    assert "docs/team.txt" not in after
    assert not any(d.source == "docs/team.txt" for d in await base.list_documents())
    assert [f.content.text for f in after["docs/sub/returns.md"]] == ["Returns are free within sixty days."]
    unchanged = set(before) - {"docs/team.txt", "docs/sub/returns.md"}
    assert {s: {f.id for f in after[s]} for s in unchanged} == {s: {f.id for f in before[s]} for s in unchanged}
    assert await store.count_memories(agent_id=runtime.agent_id, type=MemoryType.FRAGMENT) == sum(
        len(items) for items in after.values())
    await stop(runtime)

    embedder = Embedder()
    runtime, base = await start(store, tmp_path, character, embedder)
    assert embedder.texts == ["size"] and base.progress.indexed == 0
    assert base.progress.done == base.progress.documents == 5


async def test_a_new_vector_size_re_embeds_every_fragment(store: Store, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    character = write_corpus(tmp_path / "ava")
    runtime, _ = await start(store, tmp_path, character, Embedder(dim=8))
    await stop(runtime)
    embedder = Embedder(dim=12)
    caplog.set_level(logging.INFO)
    runtime, base = await start(store, tmp_path, character, embedder)
    await next(s for s in runtime.services if isinstance(s, VectorSizeCheck)).task
    sized = [r for r in caplog.records if "size" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(sized) == 1 and "of size 8" in sized[0].getMessage(), "one line says the size changed"
    fragments = await store.get_memories(agent_id=runtime.agent_id, type=MemoryType.FRAGMENT, count=None)
    assert {len(f.embedding or []) for f in fragments} == {12}
    assert (base.progress.indexed, base.progress.embedded) == (0, 6)
    assert len(embedder.texts) == 1 + len(fragments)
    hits = await store.search_memories_by_embedding(embedder({"texts": ["x"]})[0], agent_id=runtime.agent_id,
                                                    type=MemoryType.FRAGMENT, count=100)
    assert len(hits) == len(fragments)


async def test_uploads_are_indexed_listed_replaced_and_deleted(store: Store, tmp_path: Path) -> None:
    character = tmp_path / "character.json"
    character.write_text(json.dumps({"name": "Ava", "bio": "Ava."}))
    runtime, base = await start(store, tmp_path, character, Embedder())
    assert await base.list_documents() == [] and base.progress.documents == 0

    info = await base.add_upload("../../etc/notes.md", b"# Notes\n\nThe wifi password is on the fridge.")
    assert (info.source, info.origin, info.path, info.fragments) == ("notes.md", "upload", None, 1)
    await base.wait_idle()
    [listed] = await base.list_documents()
    assert listed.id == info.id and listed.embedded
    pdf = await base.add_upload("manual.pdf", make_pdf(["Hold the knob for five seconds."]))
    assert pdf.fragments == 1

    replaced = await base.add_upload("notes.md", b"# Notes\n\nFirst part.\n\n## More\n\nSecond part.")
    assert replaced.id == info.id and replaced.fragments == 2
    await base.wait_idle()
    fragments = await fragments_by_source(store, runtime.agent_id)
    assert sorted(f.content.text for f in fragments["notes.md"]) == ["First part.", "Second part."]
    assert all(f.embedding for items in fragments.values() for f in items)

    for name, data, says in [("photo.png", b"\x89PNG", "not a supported type"),
                             ("blob.txt", bytes(range(256)) * 4, "binary"),
                             ("locked.pdf", encrypted(make_pdf(["x"])), "encrypted"),
                             ("big.md", b"x" * 30_000_000, "KNOWLEDGE_MAX_FILE_MB")]:
        with pytest.raises(KnowledgeInputError, match=says):
            await base.add_upload(name, data)

    await base.index_all()  # a start-up pass keeps uploads: they have no file to disappear
    assert {d.source for d in await base.list_documents()} == {"notes.md", "manual.pdf"}
    assert await base.delete(info.id) and not await base.delete(info.id)
    assert not await base.delete(uuid.uuid4())
    assert [d.source for d in await base.list_documents()] == ["manual.pdf"]
    assert set(await fragments_by_source(store, runtime.agent_id)) == {"manual.pdf"}


# --- the whole bot: background indexing, OpenAI embeddings through FakeOpenAI, bad input ---------------
PROBES = ("size",)  # the one-word probe of the embedding model's vector size

def embedded_inputs(fake: FakeOpenAI) -> list[str]:
    texts: list[str] = []
    for request in fake.requests_to("/embeddings"):
        inputs = request.body["input"]
        texts.extend([inputs] if isinstance(inputs, str) else inputs)
    return texts


async def run_app(tmp_path: Path, fake: FakeOpenAI, character_path: Path, **overrides: Any) -> App:
    settings = settings_for(tmp_path, fake.base_url, character_path=character_path, **overrides)
    app = App(settings, load_character(character_path).character)
    await app.start()
    base = knowledge_base(app.runtime)
    assert base is not None
    await asyncio.wait_for(base.indexed.wait(), WAIT)
    return app


async def test_the_bot_indexes_with_openai_embeddings_and_a_restart_redoes_only_the_edited_file(
        tmp_path: Path, no_model_environment: None) -> None:
    root = tmp_path / "ava"
    character = write_corpus(root)
    async with FakeOpenAI() as fake:
        app = await run_app(tmp_path, fake, character)
        try:
            first = embedded_inputs(fake)
            count = await app.store.count_memories(agent_id=app.runtime.agent_id, type=MemoryType.FRAGMENT)
            assert len(first) == count > 6
            assert all(len(f.embedding or []) == fake.embedding_dimensions for f in await app.store.get_memories(
                agent_id=app.runtime.agent_id, type=MemoryType.FRAGMENT, count=None))
        finally:
            await app.stop()

        (root / "guide.md").write_text(MARKDOWN.replace("seven years", "ten years"))
        app = await run_app(tmp_path, fake, character)  # a new App on the same SQLite file
        try:
            # Besides one probe of the model's vector size (shared by the indexer and the start-up
            # check), only the edited file's fragments were embedded.
            again = [t for t in embedded_inputs(fake)[len(first):] if t not in PROBES]
            guide = [text for text in first if "Zorblax 3000" in text]
            assert again == [t.replace("seven years", "ten years") for t in guide]
            assert len(embedded_inputs(fake)) - len(first) <= len(again) + len(PROBES)
            base = knowledge_base(app.runtime)
            assert base is not None and (base.progress.indexed, base.progress.removed) == (1, 0)
            assert await app.store.count_memories(agent_id=app.runtime.agent_id, type=MemoryType.FRAGMENT) == count
        finally:
            await app.stop()


async def test_start_up_does_not_wait_for_indexing(sqlite_store: Store, tmp_path: Path) -> None:
    release = asyncio.Event()
    embedder = Embedder()

    async def slow(params: dict[str, Any]) -> list[list[float]]:
        await release.wait()
        return embedder(params)

    character_path = write_corpus(tmp_path / "ava")
    settings = make_settings(tmp_path, character_path=character_path)
    character = load_character(character_path).character
    plugin = create_plugin(settings, character)
    assert plugin is not None
    model = ScriptedModel(defaults={ModelType.TEXT_EMBEDDING: slow})
    runtime = await start_runtime(sqlite_store, settings, model, plugin, character=character,
                                  model_types=(ModelType.TEXT_LARGE, ModelType.TEXT_EMBEDDING))
    base = knowledge_base(runtime)
    assert base is not None and not base.indexed.is_set()  # initialize() returned with the pass under way
    release.set()
    await asyncio.wait_for(base.indexed.wait(), WAIT)
    assert base.progress.state == "ready" and base.progress.indexed == 6


async def test_bad_inputs_give_one_warning_each_and_the_rest_is_indexed(
        sqlite_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ava"
    (root / "folder").mkdir(parents=True)
    (root / "good.md").write_text("# Good\n\nThis file is fine.")
    (root / "locked.pdf").write_bytes(encrypted(make_pdf(["hidden text"])))
    (root / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage")
    (root / "blob.txt").write_bytes(bytes(range(256)) * 16)
    (root / "huge.md").write_text("big " * 1000)
    (root / "slides.pptx").write_bytes(b"PK\x03\x04")
    (root / "folder" / "fine.txt").write_text("Folder files are indexed too.")
    (root / "folder" / "picture.jpg").write_bytes(b"\xff\xd8\xff")
    character_path = root / "character.json"
    bad = ["missing.md", "locked.pdf", "broken.pdf", "blob.txt", "huge.md", "slides.pptx"]
    entries = [{"path": name} for name in ["good.md", *bad]]
    character_path.write_text(json.dumps({"name": "Ava", "bio": "Ava.",
                                          "knowledge": [*entries, {"directory": "folder"}, {"shared": True}]}))
    caplog.set_level(logging.INFO, logger="plugins.knowledge")
    _, base = await start(sqlite_store, tmp_path, character_path, Embedder(), knowledge_max_file_mb=0.002,
                          knowledge_path=tmp_path / "nowhere")

    assert {d.source for d in await base.list_documents()} == {"good.md", "folder/fine.txt"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)
    for name in bad:
        assert len([r for r in warnings if name in r.getMessage()]) == 1, name
    assert len(warnings) == len(bad) + 2  # plus the entry with no path and the missing KNOWLEDGE_PATH
    assert any("entry 9 has neither a path nor a directory" in r.getMessage() for r in warnings)
    assert any("KNOWLEDGE_PATH" in r.getMessage() and "nowhere" in r.getMessage() for r in warnings)
    assert [r.levelno for r in caplog.records if "picture.jpg" in r.getMessage()] == [logging.INFO]


async def test_a_file_that_turns_bad_loses_its_old_fragments(sqlite_store: Store, tmp_path: Path) -> None:
    character = write_corpus(tmp_path / "ava")
    runtime, _ = await start(sqlite_store, tmp_path, character, Embedder())
    await stop(runtime)
    (tmp_path / "ava" / "manual.pdf").write_bytes(b"%PDF-1.4\ntruncated")
    runtime, base = await start(sqlite_store, tmp_path, character, Embedder())
    assert "manual.pdf" not in await fragments_by_source(sqlite_store, runtime.agent_id)
    assert "manual.pdf" not in {d.source for d in await base.list_documents()}


def test_knowledge_off_loads_no_plugin(tmp_path: Path) -> None:
    character = load_character(write_corpus(tmp_path)).character
    assert create_plugin(make_settings(tmp_path, knowledge=False), character) is None
    assert create_plugin(make_settings(tmp_path, knowledge="off"), character) is None
    plugin = create_plugin(make_settings(tmp_path), character)
    assert plugin is not None and [p.name for p in plugin.providers] == ["KNOWLEDGE"]
    assert {(r.method, r.path) for r in plugin.routes} == {
        ("GET", "/api/knowledge/documents"), ("POST", "/api/knowledge/documents"),
        ("DELETE", "/api/knowledge/documents/{document_id}")}


async def test_processes_sharing_postgres_run_one_start_up_pass(shared_postgres: list[Store], tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    character_path = write_corpus(tmp_path / "ava")
    character = load_character(character_path).character
    first_embedder, second_embedder = Embedder(), Embedder()
    first_embeds, gate = asyncio.Event(), asyncio.Event()

    async def held(params: dict[str, Any]) -> Any:  # the first process stays mid-pass until the gate opens
        first_embeds.set()
        await gate.wait()
        return first_embedder(params)

    waiting = asyncio.Event()

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "another process is indexing" in record.getMessage():
                waiting.set()

    async def process(store: Store, embedder: Any) -> tuple[AgentRuntime, KnowledgeBase]:
        await store.init()
        config = make_settings(tmp_path, character_path=character_path)
        plugin = create_plugin(config, character)
        assert plugin is not None
        model = ScriptedModel(defaults={ModelType.TEXT_EMBEDDING: embedder})
        runtime = await start_runtime(store, config, model, plugin, character=character,
                                      model_types=(ModelType.TEXT_SMALL, ModelType.TEXT_LARGE,
                                                   ModelType.TEXT_EMBEDDING))
        base = knowledge_base(runtime)
        assert base is not None
        return runtime, base

    handler = Waiting()
    caplog.set_level(logging.INFO, logger="plugins.knowledge.indexer")
    logging.getLogger("plugins.knowledge.indexer").addHandler(handler)
    try:
        first, first_base = await process(shared_postgres[0], held)
        await asyncio.wait_for(first_embeds.wait(), WAIT)
        second, second_base = await process(shared_postgres[1], second_embedder)
        await asyncio.wait_for(waiting.wait(), WAIT)
        # Meanwhile the second process searches, loading the vectors it can see (none yet).
        probe = first_embedder({"texts": ["x"]})[0]
        assert not await second.store.search_memories_by_embedding(probe, agent_id=second.agent_id,
                                                                    type=MemoryType.FRAGMENT, count=100)
        assert not second_base.indexed.is_set()
        gate.set()
        await asyncio.wait_for(first_base.indexed.wait(), WAIT)
        await asyncio.wait_for(second_base.indexed.wait(), WAIT)
    finally:
        logging.getLogger("plugins.knowledge.indexer").removeHandler(handler)
    assert first_base.progress.indexed == first_base.progress.documents == 6
    assert (second_base.progress.indexed, second_base.progress.embedded, second_base.progress.state) == (0, 0, "ready")
    assert set(second_embedder.texts) <= {"size"}, "the second process embedded no document"
    fragments = await second.store.count_memories(agent_id=second.agent_id, type=MemoryType.FRAGMENT)
    hits = await second.store.search_memories_by_embedding(probe, agent_id=second.agent_id,
                                                            type=MemoryType.FRAGMENT, count=100)
    assert len(hits) == fragments > 0, "after waiting, the second process searches the first one's vectors"
