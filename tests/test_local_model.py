"""The offline provider: the bundled SmolLM2 GGUF through the xllamacpp wheel the README installs (no
skip: the test command installs the `local` extra), and its configuration errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.character import parse_character
from bot.runtime import AgentRuntime, ModelError
from bot.settings import Settings, SettingsError
from bot.store.factory import create_store
from bot.types import ModelType
from plugins import local_provider
from plugins.local_provider import BUNDLED_MODEL, fit_turns, local_model_file, local_plugin
from plugins.models import model_plugins

# Keys or model settings in the developer's environment must not change what is tested.
pytestmark = pytest.mark.usefixtures("no_model_environment")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path, "model_providers": "local", "local_context_size": 512,
                              "local_max_tokens": 24}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def local_runtime(tmp_path: Path) -> AsyncIterator[AgentRuntime]:
    settings = make_settings(tmp_path)
    character = parse_character({"name": "Test", "bio": "x"}).character
    plugins, _ = model_plugins(settings, character)
    runtime = AgentRuntime(character, settings, create_store(settings), plugins)
    await runtime.initialize()
    yield runtime
    await runtime.stop()
    await runtime.store.close()


def test_bundled_smollm2_is_found(tmp_path: Path) -> None:
    path, reason = local_model_file(make_settings(tmp_path))
    assert reason == "" and path == BUNDLED_MODEL
    assert path.suffix == ".gguf" and path.stat().st_size > 1_000_000


async def test_smollm2_answers_a_short_prompt(local_runtime: AgentRuntime) -> None:
    text = await local_runtime.use_model(
        ModelType.TEXT_SMALL, {"prompt": "Say hello to Ada in one short sentence.", "system": "You are friendly."}
    )
    assert isinstance(text, str) and text.strip()
    await local_runtime.flush_usage()
    totals = await local_runtime.store.usage_totals(agent_id=local_runtime.agent_id)
    assert totals.calls == 1 and totals.prompt_tokens > 0


async def test_overlong_prompt_is_truncated_from_the_front(local_runtime: AgentRuntime) -> None:
    prompt = "filler words here. " * 2000 + "Now say hello."
    text = await local_runtime.use_model(ModelType.TEXT_LARGE, {"prompt": prompt, "max_tokens": 8})
    assert isinstance(text, str)


async def test_object_reply_is_a_dict(local_runtime: AgentRuntime) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    result = await local_runtime.use_model(
        ModelType.OBJECT_SMALL, {"prompt": "Reply with a JSON object whose name is Bob.", "schema": schema,
                                 "max_tokens": 40}
    )
    assert isinstance(result, dict) and "name" in result


def test_missing_local_model_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    settings = make_settings(tmp_path, local_model_path=str(missing))
    with pytest.raises(SettingsError, match=r"LOCAL_MODEL_PATH: .*nope\.gguf does not exist"):
        local_model_file(settings)
    with pytest.raises(SettingsError, match="LOCAL_MODEL_PATH"):
        model_plugins(settings, parse_character({"name": "Test", "bio": "x"}).character)


async def test_unloadable_gguf_fails_with_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    plugin, reason = local_plugin(make_settings(tmp_path, local_model_path=str(bad)))
    assert plugin is not None and reason == ""
    character = parse_character({"name": "Test", "bio": "x"}).character
    settings = make_settings(tmp_path)
    runtime = AgentRuntime(character, settings, create_store(settings), [plugin])
    await runtime.initialize()
    try:
        with pytest.raises(ModelError, match="cannot load the local model .*bad.gguf"):
            await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "hi"})
    finally:
        await runtime.stop()
        await runtime.store.close()


def test_unavailable_local_model_gives_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_provider, "runtime_installed", lambda: False)
    plugin, reason = local_plugin(make_settings(tmp_path))
    assert plugin is None and 'pip install -e ".[local]"' in reason
    character = parse_character({"name": "Test", "bio": "x"}).character
    with pytest.raises(SettingsError, match="MODEL_PROVIDERS lists 'local'"):
        model_plugins(make_settings(tmp_path), character)
    plugins, notes = model_plugins(make_settings(tmp_path, model_providers=""), character)
    assert plugins == [] and any("local model unavailable" in note for note in notes)


def test_bad_local_model_path_is_ignored_when_local_is_not_listed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model_providers="openai", openai_api_key="sk-test-123",
                             local_model_path=str(tmp_path / "nope.gguf"))
    plugins, _ = model_plugins(settings, parse_character({"name": "Test", "bio": "x"}).character)
    assert [p.name for p in plugins] == ["openai"]


def test_cpu_without_avx2_is_a_reason_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_provider, "cpu_problem", lambda: "this CPU has no AVX2")
    plugin, reason = local_plugin(make_settings(tmp_path))
    assert plugin is None and "AVX2" in reason


def test_fit_turns_keeps_the_newest_and_cuts_the_last_from_the_front() -> None:
    turns = [{"role": "user", "content": f"turn {i} " + "x" * 300} for i in range(20)]
    kept = fit_turns(turns, budget_tokens=400)
    assert kept and kept[-1] == turns[-1] and len(kept) < len(turns)
    assert sum(len(t["content"]) for t in kept) <= 400 * 3
    huge = fit_turns([{"role": "user", "content": "a" * 10_000 + "END"}], budget_tokens=100)
    assert huge[0]["content"].endswith("END") and len(huge[0]["content"]) <= 300


async def test_a_fact_placed_before_the_question_is_answered(local_runtime: AgentRuntime) -> None:
    """The shape the pipeline's recall gives a plain model: the bundled model reads the fact."""
    turns = [{"role": "user", "content": "Context: My dog is called Rex.\n\nQuestion: What is my dog called?\n"
                                         "Answer from the context."}]
    text = await local_runtime.use_model(ModelType.TEXT_LARGE, {
        "prompt": "What is my dog called?", "messages": turns, "system": "You are a helpful assistant.",
        "max_tokens": 24, "temperature": 0.0})
    assert "rex" in text.lower()


async def test_smollm2_streams_the_same_reply_it_returns(local_runtime: AgentRuntime) -> None:
    """llama.cpp's pieces reach the listener while it writes; the returned reply is the same one a
    call without a listener gets (the same seed), so streaming changes nothing that is stored."""
    pieces: list[str] = []
    params = {"prompt": "Say hello to Ada.", "max_tokens": 24}

    async def listen(piece: str) -> None:
        pieces.append(piece)

    streamed = await local_runtime.use_model(ModelType.TEXT_SMALL, {**params, "stream": listen})
    plain = await local_runtime.use_model(ModelType.TEXT_SMALL, params)
    assert len(pieces) > 3, "one piece per token or so, not the whole reply at the end"
    assert streamed == plain
    assert "".join(pieces).strip().startswith(streamed.rstrip(".!?")[: len(streamed) // 2])


async def test_characters_share_one_loaded_model_and_take_turns(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    model = local_provider.loaded_model(BUNDLED_MODEL, settings.local_context_size)
    assert local_provider.LocalProvider(settings, BUNDLED_MODEL).model is model, "one model in memory for all"
    wider = settings.model_copy(update={"local_context_size": 1024})
    assert local_provider.LocalProvider(wider, BUNDLED_MODEL).model is not model, "another context size: another"
    store = create_store(settings)
    runtimes = []
    try:
        for name in ("Ada", "Bob"):
            character = parse_character({"name": name, "bio": "x"}).character
            plugins, _ = model_plugins(settings, character)
            runtimes.append(AgentRuntime(character, settings, store, plugins))
            await runtimes[-1].initialize()
        replies = await asyncio.gather(*(r.use_model(ModelType.TEXT_LARGE, {"prompt": "Say hello."}) for r in runtimes))
        assert all(isinstance(reply, str) and reply for reply in replies), "both answered, one after the other"
    finally:
        for runtime in runtimes:
            await runtime.stop()
        await store.close()


async def test_a_stream_its_caller_abandoned_stops_writing(tmp_path: Path) -> None:
    """A caller gone (cancelled, or its listener failed) frees the shared model at the next piece."""
    provider = local_provider.LocalProvider(make_settings(tmp_path), BUNDLED_MODEL)
    request = provider._request({"prompt": "Tell me a long story about the sea.", "max_tokens": 64}, "", None, False)
    written: list[str | None] = []
    abandoned = threading.Event()
    whole = await provider.model.run(lambda: provider._complete_streaming(request, written.append, abandoned))
    assert whole.value and whole.completion_tokens > 1
    abandoned.set()
    written.clear()
    cut = await provider.model.run(lambda: provider._complete_streaming(request, written.append, abandoned))
    assert cut.value == "" and written == [None], "nothing written after the caller left"
