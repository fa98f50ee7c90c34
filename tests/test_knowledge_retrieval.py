"""The KNOWLEDGE provider: hybrid search over the agent's fragments, threshold, budget, citations.

Documents are written straight into the store in the shape the indexer writes them (see the
knowledge brief's contract), so these tests need only the store and the pipeline. Embeddings come
from a bag-of-words model: texts sharing words get similar vectors, as with a real embedder.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from typing import Any

import aiohttp
import pytest

from bot.ids import create_unique_uuid
from bot.plugin import Plugin, State
from bot.types import ChannelType, Content, Memory, MemoryType, ModelType
from plugins.knowledge import terms
from plugins.knowledge.api import DOCUMENTS
from plugins.knowledge.indexer import fragment_id
from plugins.knowledge.retrieval import (
    KNOWLEDGE_PROVIDER,
    STATS,
    Limits,
    knowledge_changed,
    render,
    search_knowledge,
    tokens,
)
from tests.runtime_helpers import ScriptedModel, make_chat, make_settings, start_runtime, xml_reply
from tests.server_helpers import fake_model, running_app

DIM = 256


def bow_vector(text: str) -> list[float]:
    """Each word adds to one hashed coordinate: shared words, high cosine; none, about zero."""
    vector = [0.0] * DIM
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIM] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def embed(params: dict[str, Any]) -> Any:
    if "texts" in params:
        return [bow_vector(t) for t in params["texts"]]
    return bow_vector(params["text"])


async def put_document(store, agent_id: uuid.UUID, source: str, fragments: list[tuple[str | None, str]], *,
                       vectors: bool = True) -> uuid.UUID:
    """A document and its fragments ((heading, text) pairs) as the indexer stores them."""
    document_id = create_unique_uuid(agent_id, f"knowledge:folder:{source}")
    raw = "\n\n".join(text for _, text in fragments)
    meta = {"source": source, "origin": "folder", "path": None, "hash": hashlib.sha256(raw.encode()).hexdigest(),
            "size": len(raw), "fragments": len(fragments), "shared": False}
    await store.create_memory(Memory(id=document_id, entity_id=agent_id, agent_id=agent_id, room_id=agent_id,
                                     type=MemoryType.DOCUMENT, content=Content(text=source, source="knowledge"),
                                     metadata={"knowledge": meta}))
    for position, (heading, text) in enumerate(fragments):
        await store.create_memory(Memory(
            id=fragment_id(agent_id, document_id, position, meta["hash"]), entity_id=agent_id,
            agent_id=agent_id, room_id=agent_id, type=MemoryType.FRAGMENT,
            content=Content(text=text, source="knowledge"), embedding=bow_vector(text) if vectors else None,
            metadata={"knowledge": {"document_id": str(document_id), "source": source, "position": position,
                                    "heading": heading, "shared": False}},
        ))
    return document_id


WARRANTY = "The Zorblax 3000 blender comes with a seven year warranty covering the motor and the glass jar."
DOCS = {
    "manuals/zorblax.md": [("Zorblax 3000 > Warranty", WARRANTY),
                           ("Zorblax 3000 > Cleaning", "Rinse the jar with warm water after every use; never "
                                                       "put the motor base under the tap.")],
    "faq/shipping.txt": [(None, "Orders ship from Lisbon within two working days; tracking links arrive by email.")],
    "notes/team.md": [("Team", "Marta leads the support team and answers escalations on Fridays.")],
}


def knowledge_plugin() -> Plugin:
    return Plugin(name="knowledge-under-test", providers=[KNOWLEDGE_PROVIDER])


@pytest.fixture
def model() -> ScriptedModel:
    m = ScriptedModel()
    m.defaults[ModelType.TEXT_LARGE] = xml_reply("It has a seven year warranty.")
    m.defaults[ModelType.TEXT_SMALL] = "IGNORE"
    m.defaults[ModelType.TEXT_EMBEDDING] = embed
    return m


async def runtime_with_docs(store, tmp_path, model, *, docs=DOCS, embeddings: bool = True, **settings):
    types = (ModelType.TEXT_SMALL, ModelType.TEXT_LARGE) + ((ModelType.TEXT_EMBEDDING,) if embeddings else ())
    runtime = await start_runtime(store, make_settings(tmp_path, **settings), model, knowledge_plugin(),
                                  model_types=types)
    for source, fragments in docs.items():
        await put_document(store, runtime.agent_id, source, fragments, vectors=embeddings)
    knowledge_changed(runtime)
    return runtime


async def provide(runtime, text: str, **memory: Any):
    chat = make_chat(runtime)
    return await KNOWLEDGE_PROVIDER.get(runtime, chat.message(text, **memory), State())


def query_embeddings(model: ScriptedModel, text: str) -> int:
    """Calls that embedded `text` alone, as a query (the background queue embeds stored messages
    in batches, with `texts`; the start-up vector-size check embeds one word)."""
    return sum(1 for t, params in model.calls if t is ModelType.TEXT_EMBEDDING and params.get("text") == text)


async def test_a_small_local_model_gets_a_quarter_of_its_context(sqlite_store, tmp_path, model):
    tiny = model.plugin(ModelType.TEXT_LARGE, name="tiny", structured=False)
    runtime = await start_runtime(sqlite_store, make_settings(tmp_path, local_context_size=1024), model,
                                  knowledge_plugin(), tiny, model_types=(ModelType.TEXT_SMALL,))
    assert Limits.of(runtime).token_budget == 256


async def test_finds_the_fragment_only_one_document_holds_and_labels_its_source(store, tmp_path, model):
    runtime = await runtime_with_docs(store, tmp_path, model)
    question = "How long is the warranty on the Zorblax 3000?"
    result = await provide(runtime, question)
    assert f"[1] (from manuals/zorblax.md > Zorblax 3000 > Warranty) {WARRANTY}" in result.text
    assert "Lisbon" not in result.text and "Marta" not in result.text
    assert result.data["fragments"][0]["source"] == "manuals/zorblax.md"
    assert query_embeddings(model, question) == 1


async def test_full_text_alone_finds_it_without_an_embedding_model(store, tmp_path, model):
    runtime = await runtime_with_docs(store, tmp_path, model, embeddings=False)
    result = await provide(runtime, "Where do orders ship from?")
    assert "[1] (from faq/shipping.txt) Orders ship from Lisbon" in result.text
    assert model.count(ModelType.TEXT_EMBEDDING) == 0


async def test_a_vector_the_message_already_has_is_reused(store, tmp_path, model):
    runtime = await runtime_with_docs(store, tmp_path, model)
    question = "who leads the support team?"
    result = await provide(runtime, question, embedding=bow_vector(question))
    assert "(from notes/team.md > Team) Marta leads" in result.text
    assert query_embeddings(model, question) == 0


async def test_irrelevant_fragments_stay_out(store, tmp_path, model):
    runtime = await runtime_with_docs(store, tmp_path, model)
    assert (await provide(runtime, "Good morning! Lovely weather today, isn't it?")).text == ""
    # "team" alone is one word of four: below both bars, so Marta's note does not come in.
    assert (await provide(runtime, "Which football team plays tonight in Porto?")).text == ""


async def test_top_k_and_token_budget_are_respected(store, tmp_path, model):
    docs = {f"guides/page{i}.md": [(f"Page {i}", f"Quartz lamps guide part {i}: " + "the quartz lamp glows " * 25)]
            for i in range(12)}
    runtime = await runtime_with_docs(store, tmp_path, model, docs=docs)
    result = await provide(runtime, "quartz lamp")
    assert len(result.data["fragments"]) == 5  # KNOWLEDGE_TOP_K
    chosen = await search_knowledge(runtime, make_chat(runtime).message("quartz lamp"), Limits(5, 200, 0.3))
    assert 1 <= len(chosen) < 5
    rendered = (await provide(runtime, "quartz lamp")).text
    assert tokens(rendered) > 200  # the default budget holds all five here; 200 tokens do not
    assert tokens(render(chosen)) <= 200


async def test_the_best_passage_longer_than_the_budget_is_cut_not_dropped(store, tmp_path, model):
    long = "Helium balloons float because helium is lighter than air. " * 60
    runtime = await runtime_with_docs(store, tmp_path, model, docs={"science/helium.md": [(None, long)]})
    chosen = await search_knowledge(runtime, make_chat(runtime).message("why do helium balloons float"),
                                    Limits(5, 100, 0.3))
    assert len(chosen) == 1 and chosen[0][1].endswith("…")
    assert tokens(render(chosen)) <= 100


async def test_another_agents_knowledge_is_not_searched(store, tmp_path, model):
    runtime = await runtime_with_docs(store, tmp_path, model, docs={})
    other = uuid.uuid4()
    await put_document(store, other, "private/other.md", [(None, WARRANTY)])
    assert (await provide(runtime, "How long is the warranty on the Zorblax 3000?")).text == ""


async def test_no_knowledge_costs_no_model_call_and_no_search(store, tmp_path, model, monkeypatch):
    runtime = await runtime_with_docs(store, tmp_path, model, docs={})
    calls: list[str] = []
    for name in ("count_memories", "search_memories_by_text", "search_memories_by_embedding"):
        original = getattr(store, name)

        async def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return await _original(*args, **kwargs)

        monkeypatch.setattr(store, name, spy)
    question = "How long is the warranty on the Zorblax 3000?"
    for _ in range(3):
        assert (await provide(runtime, question)).text == ""
    assert calls == ["count_memories"]  # counted once, then known to be empty
    assert query_embeddings(model, question) == 0
    await put_document(store, runtime.agent_id, "manuals/zorblax.md", DOCS["manuals/zorblax.md"])
    knowledge_changed(runtime)
    assert "seven year warranty" in (await provide(runtime, "How long is the Zorblax 3000 warranty?")).text


async def test_the_fragment_and_its_source_reach_the_model_prompt(sqlite_store, tmp_path, model):
    runtime = await runtime_with_docs(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    outcome = await chat.send("How long is the warranty on the Zorblax 3000?")
    assert outcome.status == "completed" and chat.sent[0].text == "It has a seven year warranty."
    prompt = model.prompts(ModelType.TEXT_LARGE)[-1]
    assert "# Knowledge" in prompt
    assert f"(from manuals/zorblax.md > Zorblax 3000 > Warranty) {WARRANTY}" in prompt


async def test_messages_the_agent_does_not_answer_are_not_searched(sqlite_store, tmp_path, model):
    runtime = await runtime_with_docs(sqlite_store, tmp_path, model)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    question = "anyone know the Zorblax 3000 warranty?"
    outcome = await chat.send(question)
    assert outcome.status == "ignored"
    assert query_embeddings(model, question) == 0


# The admin API ----------------------------------------------------------------------------------------
def files(*items: tuple[str, bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, data in items:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return form


async def test_upload_list_and_delete_documents(tmp_path):
    async with fake_model() as fake, running_app(tmp_path, fake) as app:
        guide = b"# Zorblax 3000\n\n## Warranty\n\n" + WARRANTY.encode()
        status, body = await app.call("POST", DOCUMENTS, data=files(("zorblax.md", guide), ("notes.txt", b"Hi.")))
        assert status == 201, body
        uploaded = {d["source"]: d for d in body["documents"]}
        assert set(uploaded) == {"zorblax.md", "notes.txt"}
        assert uploaded["zorblax.md"]["origin"] == "upload" and uploaded["zorblax.md"]["fragments"] == 1
        assert uploaded["zorblax.md"]["size"] == len(guide)
        status, body = await app.call("GET", DOCUMENTS)
        assert status == 200 and {d["source"] for d in body["documents"]} == {"zorblax.md", "notes.txt"}
        listed = body["documents"][0]
        assert {"id", "source", "origin", "size", "fragments", "indexed_at"} <= set(listed)

        runtime = app.app.runtime
        found = await provide(runtime, "How long is the warranty on the Zorblax 3000?")
        assert f"(from zorblax.md > Zorblax 3000 > Warranty) {WARRANTY}" in found.text

        status, body = await app.call("DELETE", f"{DOCUMENTS}/{uploaded['zorblax.md']['id']}")
        assert status == 200 and body == {"deleted": uploaded["zorblax.md"]["id"]}
        status, body = await app.call("GET", DOCUMENTS)
        assert [d["source"] for d in body["documents"]] == ["notes.txt"]
        assert (await provide(runtime, "How long is the warranty on the Zorblax 3000?")).text == ""
        status, body = await app.call("DELETE", f"{DOCUMENTS}/{uploaded['zorblax.md']['id']}")
        assert status == 404 and body["error"]["code"] == "DOCUMENT_NOT_FOUND"
        status, body = await app.call("DELETE", f"{DOCUMENTS}/not-an-id")
        assert status == 400 and "GET /api/knowledge/documents lists them" in body["error"]["message"]


@pytest.mark.parametrize(("name", "data", "status", "code", "says"), ids=["type", "binary", "corrupt-pdf", "too-big"],
                         argvalues=[
    ("tool.exe", b"MZ\x90\x00", 400, "UNSUPPORTED_FILE_TYPE", "tool.exe is not a supported type"),
    ("image.md", bytes(range(256)) * 4, 400, "UNREADABLE_FILE", "image.md"),
    ("scan.pdf", b"%PDF-1.4 this is not really a PDF", 400, "UNREADABLE_FILE", "scan.pdf"),
    ("big.txt", b"word " * 300_000, 413, "FILE_TOO_LARGE", "KNOWLEDGE_MAX_FILE_MB (1 MB)"),
])
async def test_bad_uploads_are_refused_with_a_clear_message(tmp_path, name, data, status, code, says):
    async with fake_model() as fake, running_app(tmp_path, fake, knowledge_max_file_mb=1) as app:
        got, body = await app.call("POST", DOCUMENTS, data=files((name, data)))
        assert got == status, body
        assert body["error"]["code"] == code and says in body["error"]["message"]
        assert (await app.call("GET", DOCUMENTS))[1]["documents"] == []


async def test_a_bad_file_among_good_ones_is_refused_alone(tmp_path):
    async with fake_model() as fake, running_app(tmp_path, fake) as app:
        status, body = await app.call("POST", DOCUMENTS, data=files(
            ("a.md", b"# A\n\nAlpha text."), ("tool.exe", b"MZ"), ("b.txt", b"Beta text.")))
        assert status == 400 and body["error"]["code"] == "UNSUPPORTED_FILE_TYPE"
        assert body["error"]["message"].endswith("(indexed: a.md, b.txt)")
        assert [d["field"] for d in body["error"]["details"]] == ["tool.exe"]
        assert {d["source"] for d in (await app.call("GET", DOCUMENTS))[1]["documents"]} == {"a.md", "b.txt"}


async def test_uploads_must_be_multipart_with_a_file(tmp_path):
    async with fake_model() as fake, running_app(tmp_path, fake) as app:
        form = aiohttp.FormData()
        form.add_field("note", "no file here", content_type="text/plain")  # multipart, but no file part
        status, body = await app.call("POST", DOCUMENTS, data=form)
        assert status == 400 and body["error"]["code"] == "NO_FILE"
        status, body = await app.call("POST", DOCUMENTS, json={"text": "hello"})
        assert status == 400 and "multipart/form-data" in body["error"]["message"]


async def test_the_knowledge_api_is_for_admins_only(tmp_path):
    async with fake_model() as fake, running_app(tmp_path, fake, api_key="admin-key-0123456789") as app:
        assert (await app.call("GET", DOCUMENTS))[0] == 401
        assert (await app.call("DELETE", f"{DOCUMENTS}/{uuid.uuid4()}"))[0] == 401
        assert (await app.call("POST", DOCUMENTS, data=files(("a.md", b"# A\n\ntext"))))[0] == 401
        status, _ = await app.call("GET", DOCUMENTS, headers={"Authorization": "Bearer admin-key-0123456789"})
        assert status == 200


async def test_words_most_fragments_hold_are_left_out_of_the_full_text_query(store, tmp_path, model, monkeypatch):
    monkeypatch.setattr(terms, "MAX_ROWS", 10)
    widgets = {f"widgets/w{i}.md": [(None, f"Widget number {i} is painted blue and shipped in a box.")]
               for i in range(40)}
    runtime = await runtime_with_docs(store, tmp_path, model, docs={**DOCS, **widgets}, embeddings=False)
    queries: list[str] = []
    search = store.search_memories_by_text

    async def spy(query, **kwargs):
        queries.append(query)
        return await search(query, **kwargs)

    monkeypatch.setattr(store, "search_memories_by_text", spy)
    await provide(runtime, "warm up")  # the first search counts the fragments and samples their words
    await STATS.settled(runtime)
    assert STATS.common_words(runtime).is_common("widget") and not STATS.common_words(runtime).is_common("zorblax")
    result = await provide(runtime, "Which widget box has the Zorblax 3000 warranty?")
    assert "seven year warranty" in result.text
    assert "zorblax" in queries[-1].split() and "widget" not in queries[-1].split()


async def small_model_runtime(store, tmp_path, model: ScriptedModel):
    """The documents, and a small local model (plain prompts) answering."""
    tiny = model.plugin(ModelType.TEXT_LARGE, name="tiny", structured=False)
    runtime = await start_runtime(store, make_settings(tmp_path), model, knowledge_plugin(), tiny,
                                  model_types=(ModelType.TEXT_SMALL, ModelType.TEXT_EMBEDDING))
    for source, fragments in DOCS.items():
        await put_document(store, runtime.agent_id, source, fragments)
    knowledge_changed(runtime)
    return runtime


async def test_a_small_local_model_reads_the_passage_in_its_system_prompt(sqlite_store, tmp_path, model):
    model.defaults[ModelType.TEXT_LARGE] = "Seven years."
    runtime = await small_model_runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    assert (await chat.send("How long is the warranty on the Zorblax 3000?")).status == "completed"
    params = next(p for t, p in model.calls if t is ModelType.TEXT_LARGE)
    assert f"(from manuals/zorblax.md > Zorblax 3000 > Warranty) {WARRANTY}" in params["system"]


async def test_a_small_local_model_keeps_the_passage_when_the_question_recalls_a_statement(
        sqlite_store, tmp_path, model):
    model.defaults[ModelType.TEXT_LARGE] = "Seven years."
    runtime = await small_model_runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await chat.send("I bought a Zorblax 3000 blender last week.")
    model.calls.clear()
    assert (await chat.send("How long is the warranty on my Zorblax 3000 blender?")).status == "completed"
    params = next(p for t, p in model.calls if t is ModelType.TEXT_LARGE)
    assert "I bought a Zorblax 3000 blender last week." in params["messages"][-1]["content"], "the statement recalled"
    assert f"(from manuals/zorblax.md > Zorblax 3000 > Warranty) {WARRANTY}" in params["system"]


async def test_a_message_is_embedded_once_for_recall_knowledge_and_storage(sqlite_store, tmp_path, model):
    model.defaults[ModelType.TEXT_LARGE] = "You had pasta."
    runtime = await small_model_runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await chat.send("I had pasta for dinner.")
    question = chat.message("What did I eat yesterday?")  # no word in common: recall goes by meaning
    outcome = await (await runtime.receive_message(question, chat.callback)).outcome
    assert outcome.status == "completed"
    await runtime.message_handler.embeddings.flush()
    assert (await sqlite_store.get_memory(question.id)).embedding, "the queue stored the message's vector"
    text = question.content.text
    asked = [p for t, p in model.calls if t is ModelType.TEXT_EMBEDDING
             and (p.get("text") == text or text in p.get("texts", ()))]
    assert len(asked) == 1, "recall, knowledge search and the embedding queue share one vector"
