"""The offline embedding model: the real WordLlama files from the installed wheel, the choice of the
TEXT_EMBEDDING handler (zero keys, an OpenAI key, EMBEDDING), recall by meaning through the real
pipeline with no key, and the start-up line about stored vectors of another size."""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.app import App, select_plugins
from bot.plugin import Plugin
from bot.runtime import AgentRuntime
from bot.settings import SettingsError
from bot.store.sql import SqlStore
from bot.types import Content, Memory, MemoryType, ModelType
from plugins import offline_embedding
from plugins.bootstrap import bootstrap_plugin
from plugins.bootstrap.embeddings import BATCH_SIZE, VectorSizeCheck
from plugins.offline_embedding import DIMENSIONS, choose_embedding, offline_embedding_plugin
from tests.runtime_helpers import ScriptedModel, make_character, make_chat, make_settings, start_runtime

pytestmark = pytest.mark.usefixtures("no_model_environment")


async def embed(params: dict[str, Any]) -> Any:
    plugin = offline_embedding_plugin()
    assert plugin is not None, "the wordllama wheel's model files are missing"
    return (await plugin.models[0].handler(None, params)).value  # type: ignore[arg-type]


def embedding_providers(plugins: list[Plugin]) -> list[str]:
    return [r.provider for p in plugins for r in p.models if r.model_type is ModelType.TEXT_EMBEDDING]


# --- the model ---------------------------------------------------------------------------------
async def test_similar_sentences_score_higher_than_unrelated_ones() -> None:
    query, related, unrelated = await embed({"texts": [
        "What is my favourite colour?", "My favourite colour is green.", "The train to Porto leaves at nine.",
    ]})
    assert len(query) == DIMENSIONS and all(isinstance(x, float) for x in query)
    assert np.dot(query, related) > 0.5 > np.dot(query, unrelated) + 0.2
    meal, dinner, weather = await embed({"texts": ["What did I eat?", "I had pasta for dinner.",
                                                   "It is raining in the mountains."]})
    assert np.dot(meal, dinner) > np.dot(meal, weather)


async def test_a_batch_equals_the_texts_one_by_one_and_vectors_are_unit_length() -> None:
    texts = ["hello", "", "Vector search over fragments of documents", "x" * 100_000, "Olá, tudo bem?"]
    batch = await embed({"texts": texts})
    singles = [await embed({"text": text}) for text in texts]
    assert len(batch) == len(texts)
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    norms = np.linalg.norm(batch, axis=1)
    assert norms[1] == 0  # no tokens: a zero vector, which scores 0 against everything
    np.testing.assert_allclose(np.delete(norms, 1), 1, atol=1e-5)
    assert await embed({"texts": []}) == []


def test_loading_reads_only_the_wheels_files_and_never_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the offline model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, weights = offline_embedding.model_files()
    assert tokenizer.name.endswith(".json") and weights.name.endswith(".safetensors")
    model = offline_embedding.WordLlama.load(tokenizer, weights)
    assert model.embed(["offline"]).shape == (1, DIMENSIONS)


def full_model() -> offline_embedding.WordLlama:
    """WordLlama with all 256 of its dimensions, as releases before the 128-dimension prefix used it."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    tokenizer, weights = offline_embedding.model_files()
    return offline_embedding.WordLlama(Tokenizer.from_file(str(tokenizer)), load_file(str(weights))["embedding.weight"])


async def test_vectors_are_the_unit_length_prefix_of_the_full_models() -> None:
    """The model is matryoshka-trained: its first dimensions are an embedding of their own."""
    texts = ["What did I eat?", "I had pasta for dinner.", "The train to Porto leaves at nine."]
    full = full_model().embed(texts)
    assert DIMENSIONS < full.shape[1] == 256
    prefix = full[:, :DIMENSIONS] / np.linalg.norm(full[:, :DIMENSIONS], axis=1, keepdims=True)
    np.testing.assert_allclose(await embed({"texts": texts}), prefix, atol=1e-5)


# --- which handler embeds ----------------------------------------------------------------------
async def test_zero_keys_select_the_offline_model(tmp_path: Path) -> None:
    app = App(make_settings(tmp_path, host="127.0.0.1"), make_character())
    await app.start()
    try:
        assert app.runtime.model_providers(ModelType.TEXT_EMBEDDING) == ["offline-embedding"]
        assert len(await app.runtime.use_model(ModelType.TEXT_EMBEDDING, {"text": "no key at all"})) == DIMENSIONS
    finally:
        await app.stop()


def test_an_openai_key_keeps_openais_embeddings_with_no_offline_fallback(tmp_path: Path) -> None:
    selection = select_plugins(make_settings(tmp_path, openai_api_key="sk-test-123"), make_character())
    assert embedding_providers(selection.plugins) == ["openai"]
    assert "offline-embedding" not in [p.name for p in selection.plugins]


@pytest.mark.parametrize(("embedding", "expected"), [("offline", ["offline-embedding"]), ("off", [])])
def test_embedding_setting_replaces_or_drops_the_providers_embeddings(tmp_path: Path, embedding: str,
                                                                      expected: list[str]) -> None:
    settings = make_settings(tmp_path, openai_api_key="sk-test-123", embedding=embedding)
    selection = select_plugins(settings, make_character())
    assert embedding_providers(selection.plugins) == expected
    openai = next(p for p in selection.plugins if p.name == "openai")
    assert {r.model_type for r in openai.models} >= {ModelType.TEXT_LARGE, ModelType.TRANSCRIPTION}


def test_missing_model_files_are_a_note_or_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline_embedding, "model_files", lambda: None)
    models, notes = choose_embedding(make_settings(tmp_path), [])
    assert models == [] and len(notes) == 1 and "pip install -e ." in notes[0]
    with pytest.raises(SettingsError, match="EMBEDDING=offline but the offline embedding model is not installed"):
        choose_embedding(make_settings(tmp_path, embedding="offline"), [])


# --- recall by meaning with no key ---------------------------------------------------------------
@pytest.mark.parametrize("with_embeddings", [True, False])
async def test_a_plain_model_gets_a_statement_found_by_meaning(sqlite_store: SqlStore, tmp_path: Path,
                                                               with_embeddings: bool) -> None:
    """Zero-key mode: a small local model (plain prompt) and the offline embedder. "What did I eat?"
    shares no word with "I had pasta for dinner.", so only its meaning can bring it back."""
    model = ScriptedModel(defaults={ModelType.TEXT_LARGE: "Noted."})
    extra = [offline_embedding_plugin()] if with_embeddings else []
    runtime = AgentRuntime(make_character(), make_settings(tmp_path), sqlite_store,
                           [bootstrap_plugin(), model.plugin(structured=False), *extra])
    await runtime.initialize()
    try:
        chat = make_chat(runtime)
        assert (await chat.send("I had pasta for dinner.")).status == "completed"
        await runtime.message_handler.embeddings.flush()
        assert (await chat.send("What did I eat?")).status == "completed"
        question = model.calls[-1][1]["messages"][-1]["content"]
        assert (await chat.send("Can you recommend a book?")).status == "completed"
        unrelated = model.calls[-1][1]["messages"][-1]["content"]
        stored = await sqlite_store.count_embeddings(runtime.agent_id)
    finally:
        await runtime.stop()
    assert unrelated == "Can you recommend a book?"  # nothing said before is close enough in meaning
    if with_embeddings:
        assert question.startswith("Context: I had pasta for dinner.") and "What did I eat?" in question
        assert set(stored) == {DIMENSIONS}  # the statement, and the question once the queue gets to it
    else:
        assert question == "What did I eat?" and stored == {}


# --- stored vectors of another size ------------------------------------------------------------
async def test_count_embeddings_per_size(store: SqlStore, agent_id: uuid.UUID) -> None:
    memories = [Memory(agent_id=agent_id, entity_id=agent_id, room_id=agent_id, content=Content(text=f"m{i}"))
                for i in range(3)]
    for memory in memories:
        await store.create_memory(memory)
    assert await store.count_embeddings(agent_id) == {}
    await store.set_embeddings([(memories[0].id, [0.1] * 4), (memories[1].id, [0.2] * 4),
                                (memories[2].id, [0.3] * 6)])
    assert await store.count_embeddings(agent_id) == {4: 2, 6: 1}
    assert await store.count_embeddings(uuid.uuid4()) == {}


async def test_vectors_of_the_previous_256_dimension_model_are_embedded_again(
        sqlite_store: SqlStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An upgrade from a release that stored all 256 dimensions: the start says so in one line and
    embeds the facts again with the offline model (it costs nothing), so they are found by meaning
    beside new ones, and no search ever compares vectors of two sizes."""
    settings = make_settings(tmp_path)
    first = await start_runtime(sqlite_store, settings, ScriptedModel())
    old = Memory(agent_id=first.agent_id, entity_id=first.agent_id, room_id=first.agent_id, type=MemoryType.FACT,
                 content=Content(text="I had pasta for dinner."))
    await sqlite_store.create_memory(old)
    await sqlite_store.set_embeddings([(old.id, full_model().embed([old.content.text])[0].tolist())])
    await first.stop()

    caplog.set_level(logging.INFO, logger="plugins.bootstrap.embeddings")
    runtime = await start_runtime(sqlite_store, settings, ScriptedModel(), offline_embedding_plugin())
    await next(s for s in runtime.services if isinstance(s, VectorSizeCheck)).task
    [line] = [r.getMessage() for r in caplog.records if r.name == "plugins.bootstrap.embeddings"]
    assert f"(1 of size 256) than the embedding model's {DIMENSIONS}" in line
    assert await sqlite_store.count_embeddings(runtime.agent_id) == {DIMENSIONS: 1}
    new = old.model_copy(update={"id": uuid.uuid4(), "content": Content(text="The train to Porto leaves at nine.")})
    await sqlite_store.create_memory(new)
    await sqlite_store.set_embeddings([(new.id, await embed({"text": new.content.text}))])
    hits = await sqlite_store.search_memories_by_embedding(await embed({"text": "What did I eat?"}),
                                                           agent_id=runtime.agent_id, count=10)
    assert [h.memory.id for h in hits][0] == old.id and len(hits[0].memory.embedding) == DIMENSIONS


@pytest.mark.parametrize("stored_size", [384, DIMENSIONS])
async def test_one_line_names_the_stored_vectors_of_another_size(sqlite_store: SqlStore, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 stored_size: int) -> None:
    """Vectors an earlier model made (OpenAI's 384 here) stay stored; the start says what happens."""
    settings = make_settings(tmp_path)
    first = await start_runtime(sqlite_store, settings, ScriptedModel())
    facts = [Memory(agent_id=first.agent_id, entity_id=first.agent_id, room_id=first.agent_id,
                    type=MemoryType.FACT, content=Content(text=f"fact {i}")) for i in range(3)]
    for fact in facts:
        await sqlite_store.create_memory(fact)
    await sqlite_store.set_embeddings([(fact.id, [0.5] * stored_size) for fact in facts])
    await first.stop()

    caplog.set_level(logging.INFO, logger="plugins.bootstrap.embeddings")
    runtime = await start_runtime(sqlite_store, settings, ScriptedModel(), offline_embedding_plugin())
    check = next(s for s in runtime.services if isinstance(s, VectorSizeCheck))
    await check.task
    lines = [r.getMessage() for r in caplog.records if r.name == "plugins.bootstrap.embeddings"]
    if stored_size == DIMENSIONS:
        assert lines == []
    else:
        assert len(lines) == 1
        assert lines[0].startswith(f"3 stored memories have embeddings of another size (3 of size 384) "
                                   f"than the embedding model's {DIMENSIONS}")
        assert "knowledge fragments are re-embedded" in lines[0]
        assert "messages and facts are embedded again" in lines[0], "the offline model costs nothing"
        assert await sqlite_store.count_embeddings(runtime.agent_id) == {DIMENSIONS: 3}


async def test_an_api_model_leaves_old_vectors_alone(sqlite_store: SqlStore, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Re-embedding a history through an API would cost its owner: the line says they are left out."""
    settings = make_settings(tmp_path)
    first = await start_runtime(sqlite_store, settings, ScriptedModel())
    fact = Memory(agent_id=first.agent_id, entity_id=first.agent_id, room_id=first.agent_id, type=MemoryType.FACT,
                  content=Content(text="I had pasta for dinner."))
    await sqlite_store.create_memory(fact)
    await sqlite_store.set_embeddings([(fact.id, [0.5] * DIMENSIONS)])
    await first.stop()

    caplog.set_level(logging.DEBUG, logger="plugins.bootstrap.embeddings")
    api = ScriptedModel(defaults={ModelType.TEXT_EMBEDDING: [0.1] * 384})
    runtime = await start_runtime(sqlite_store, settings, api, model_types=(ModelType.TEXT_EMBEDDING,))
    await next(s for s in runtime.services if isinstance(s, VectorSizeCheck)).task
    [line] = [r.getMessage() for r in caplog.records if r.name == "plugins.bootstrap.embeddings"]
    assert "not re-embedded" in line and "of size 128" in line
    assert await sqlite_store.count_embeddings(runtime.agent_id) == {DIMENSIONS: 1}
    assert [p.get("text") for t, p in api.calls if t is ModelType.TEXT_EMBEDDING] == ["size"], "only the probe"


def test_characters_share_one_offline_model() -> None:
    handlers = [plugin.models[0].handler for plugin in (offline_embedding_plugin(), offline_embedding_plugin())
                if plugin is not None]
    assert len(handlers) == 2 and handlers[0].__self__ is handlers[1].__self__, "one model in memory for all"


async def test_re_embedding_goes_past_memories_without_text(sqlite_store: SqlStore, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = await start_runtime(sqlite_store, settings, ScriptedModel())
    blank = [Memory(agent_id=first.agent_id, entity_id=first.agent_id, room_id=first.agent_id, type=MemoryType.FACT,
                    content=Content(text=" "), created_at=1000 + i) for i in range(BATCH_SIZE + 1)]
    fact = Memory(agent_id=first.agent_id, entity_id=first.agent_id, room_id=first.agent_id, type=MemoryType.FACT,
                  content=Content(text="I had pasta for dinner."), created_at=5000)
    for memory in (*blank, fact):
        await sqlite_store.create_memory(memory)
    await sqlite_store.set_embeddings([(m.id, [0.5] * 384) for m in (*blank, fact)])
    await first.stop()
    runtime = await start_runtime(sqlite_store, settings, ScriptedModel(), offline_embedding_plugin())
    await next(s for s in runtime.services if isinstance(s, VectorSizeCheck)).task
    assert len((await sqlite_store.get_memory(fact.id)).embedding) == DIMENSIONS, "a full page of blanks came first"
