"""Model providers through the real OpenAI and Anthropic SDKs against local fake servers."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
import uuid
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.character import Character, parse_character
from bot.runtime import AgentRuntime, ModelError
from bot.settings import Settings, SettingsError
from bot.store.factory import create_store
from bot.types import Attachment, EventType, ModelType
from plugins.models import PLUGIN_ALIASES, model_plugins, parse_json_object, plugin_name
from tests.fakes import (
    HANG,
    RATE_LIMITED,
    SERVER_ERROR,
    FakeAnthropic,
    FakeOpenAI,
    Raw,
    Status,
    fake_embedding,
)

ROOT = Path(__file__).resolve().parents[1]
OPENAI_KEY = "sk-test-123-secret-openai"
ANTHROPIC_KEY = "sk-ant-test-456-secret"

MakeRuntime = Callable[..., Awaitable[AgentRuntime]]


# Keys or model settings in the developer's environment must not change what is tested.
pytestmark = pytest.mark.usefixtures("no_model_environment")


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(reply="Hi from OpenAI.") as fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(reply="Hi from Claude.") as fake:
        yield fake  # type: ignore[misc]


def character(**fields: Any) -> Character:
    return parse_character({"name": "Test", "bio": "x", **fields}).character


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path, "model_timeout": 2, "model_max_retries": 2,
                              "local_model_path": None}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def make_runtime(tmp_path: Path) -> AsyncIterator[MakeRuntime]:
    """Build an initialised runtime whose model plugins come from `model_plugins`."""
    runtimes: list[AgentRuntime] = []

    async def make(settings: Settings, char: Character | None = None) -> AgentRuntime:
        char = char or character()
        plugins, _notes = model_plugins(settings, char)
        runtime = AgentRuntime(char, settings, create_store(settings), plugins)
        await runtime.initialize()
        runtimes.append(runtime)
        return runtime

    yield make
    for runtime in runtimes:
        await runtime.stop()
        await runtime.store.close()


def openai_settings(tmp_path: Path, fake: FakeOpenAI, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"openai_api_key": OPENAI_KEY, "openai_base_url": fake.base_url,
                              "model_providers": "openai"}
    values.update(overrides)
    return make_settings(tmp_path, **values)


# --- OpenAI: text, retries, timeouts -----------------------------------------------------------
async def test_openai_text_reply_records_token_usage(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    used: list[dict[str, Any]] = []

    async def on_used(payload: dict[str, Any]) -> None:
        used.append(payload)

    runtime.on(EventType.MODEL_USED, on_used)
    room_id = uuid.uuid4()
    text = await runtime.use_model(ModelType.TEXT_LARGE, {
        "prompt": "say hi please", "system": "be brief", "max_tokens": 50, "temperature": 0.2,
        "stop": ["</response>"], "room_id": room_id,
    })
    assert text == "Hi from OpenAI."
    request = fake_openai.requests_to("/chat/completions")[0]
    assert request.body["model"] == "gpt-4o"
    assert request.body["messages"] == [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "say hi please"}]
    assert request.body["max_tokens"] == 50
    assert request.body["stop"] == ["</response>"]
    assert request.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert used[-1]["provider"] == "openai" and used[-1]["prompt_tokens"] == 5
    assert used[-1]["completion_tokens"] == 3
    await runtime.flush_usage()
    totals = await runtime.store.usage_totals(agent_id=runtime.agent_id, room_id=room_id)
    assert (totals.calls, totals.prompt_tokens, totals.completion_tokens) == (1, 5, 3)


async def test_openai_small_model_and_malformed_reply_passes_through(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai, openai_small_model="tiny"))
    fake_openai.script("<response><text>unclosed")
    assert await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"}) == "<response><text>unclosed"
    assert fake_openai.requests[0].body["model"] == "tiny"


async def test_openai_429_with_retry_after_is_retried(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    fake_openai.script(RATE_LIMITED, "after the wait")
    started = time.monotonic()
    assert await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"}) == "after the wait"
    assert time.monotonic() - started >= 0.9  # Retry-After: 1 was honoured
    assert len(fake_openai.requests) == 2


async def test_openai_500_is_retried(tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    fake_openai.script(SERVER_ERROR, "recovered")
    assert await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"}) == "recovered"
    assert len(fake_openai.requests) == 2


async def test_openai_persistent_errors_raise_model_error(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai, model_max_retries=1))
    fake_openai.script(SERVER_ERROR, SERVER_ERROR)
    with pytest.raises(ModelError, match="openai HTTP 500"):
        await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"})


async def test_openai_hang_times_out(tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai, model_timeout=0.5, model_max_retries=0))
    fake_openai.script(HANG)
    started = time.monotonic()
    with pytest.raises(ModelError, match="APITimeoutError"):
        await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"})
    assert time.monotonic() - started < 5


async def test_openai_compatible_server_needs_no_key(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    settings = make_settings(tmp_path, openai_base_url=fake_openai.base_url)
    runtime = await make_runtime(settings)
    assert runtime.model_providers(ModelType.TEXT_SMALL)[0] == "openai"
    assert await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"}) == "Hi from OpenAI."
    assert fake_openai.requests[0].headers["Authorization"] == "Bearer not-needed"


# --- OpenAI: objects, embeddings, audio, images ------------------------------------------------
async def test_openai_object_uses_json_mode_and_strips_fences(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    fake_openai.script('```json\n{"mood": "happy", "score": 3}\n```')
    schema = {"type": "object", "properties": {"mood": {"type": "string"}}}
    result = await runtime.use_model(ModelType.OBJECT_SMALL, {"prompt": "rate it", "schema": schema})
    assert result == {"mood": "happy", "score": 3}
    body = fake_openai.requests[0].body
    assert body["response_format"] == {"type": "json_object"}
    assert '"mood"' in body["messages"][0]["content"]


async def test_openai_object_that_is_not_json_falls_through_as_an_error(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    fake_openai.script('["not", "an", "object"]')
    with pytest.raises(ModelError, match="not a JSON object"):
        await runtime.use_model(ModelType.OBJECT_LARGE, {"prompt": "x"})


async def test_openai_embeddings_single_and_batch_in_one_call(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    single = await runtime.use_model(ModelType.TEXT_EMBEDDING, {"text": "hello"})
    assert single == pytest.approx(fake_embedding("hello", 384))
    batch = await runtime.use_model(ModelType.TEXT_EMBEDDING, {"texts": ["a", "b", "c"]})
    assert [len(v) for v in batch] == [384, 384, 384]
    assert batch[2] == pytest.approx(fake_embedding("c", 384))
    requests = fake_openai.requests_to("/embeddings")
    assert len(requests) == 2 and requests[1].body["input"] == ["a", "b", "c"]


async def test_openai_embedding_dimensions_setting(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai, openai_embedding_dimensions=64))
    assert len(await runtime.use_model(ModelType.TEXT_EMBEDDING, {"text": "hello"})) == 64


async def test_openai_transcription(tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    fake_openai.script("what a lovely voice note", endpoint="transcriptions")
    text = await runtime.use_model(ModelType.TRANSCRIPTION, {"audio": b"OggS fake", "mime_type": "audio/ogg"})
    assert text == "what a lovely voice note"
    body = fake_openai.requests_to("/audio/transcriptions")[0].body
    assert body["file"] == b"OggS fake" and body["file_filename"] == "audio.ogg"
    assert body["model"] == "whisper-1"


async def test_openai_text_to_speech_returns_audio_bytes(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    audio = await runtime.use_model(ModelType.TEXT_TO_SPEECH, {"text": "hello there", "voice": "nova"})
    with wave.open(io.BytesIO(audio)) as wav:
        assert wav.getnframes() / wav.getframerate() == pytest.approx(0.5)
    body = fake_openai.requests_to("/audio/speech")[0].body
    assert (body["input"], body["voice"], body["model"]) == ("hello there", "nova", "tts-1")


async def test_openai_image_generation_returns_attachments(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai, openai_image_model="dall-e-2"))
    images = await runtime.use_model(ModelType.IMAGE, {"prompt": "a red square", "size": "256x256", "count": 2})
    assert len(images) == 2
    assert all(isinstance(a, Attachment) and a.kind == "image" for a in images)
    assert images[0].content_type == "image/png" and images[0].data.startswith(b"\x89PNG")
    body = fake_openai.requests_to("/images/generations")[0].body
    assert (body["n"], body["size"], body["response_format"]) == (2, "256x256", "b64_json")


async def test_dalle3_makes_one_request_per_image(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    images = await runtime.use_model(ModelType.IMAGE, {"prompt": "a cat", "count": 2})
    assert len(images) == 2
    assert [r.body["n"] for r in fake_openai.requests_to("/images/generations")] == [1, 1]


@pytest.mark.parametrize("source", ["url", "bytes"])
async def test_openai_image_description(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime, source: str
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    params = ({"image_url": "https://example.com/cat.png"} if source == "url"
              else {"image": b"\x89PNG fake", "mime_type": "image/png"})
    result = await runtime.use_model(ModelType.IMAGE_DESCRIPTION, params)
    assert result == {"title": "A red square", "description": "A small solid red square."}
    part = fake_openai.requests[0].body["messages"][0]["content"][1]
    expected = "https://example.com/cat.png" if source == "url" else "data:image/png;base64,iVBORyBmYWtl"
    assert part == {"type": "image_url", "image_url": {"url": expected}}


async def test_image_description_from_prose_reply(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai))
    fake_openai.script('{"description": "Just a dog."}')
    result = await runtime.use_model(ModelType.IMAGE_DESCRIPTION, {"image_url": "https://x/y.png"})
    assert result == {"title": "Just a dog.", "description": "Just a dog."}


# --- Anthropic and fallback ----------------------------------------------------------------------
async def test_anthropic_text_and_object(
    tmp_path: Path, fake_anthropic: FakeAnthropic, make_runtime: MakeRuntime
) -> None:
    settings = make_settings(tmp_path, anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=fake_anthropic.base_url)
    runtime = await make_runtime(settings)
    assert runtime.model_providers(ModelType.TEXT_LARGE)[0] == "anthropic"
    assert await runtime.use_model(ModelType.TEXT_LARGE, {"prompt": "hello", "system": "sys"}) == "Hi from Claude."
    body = fake_anthropic.requests[0].body
    assert (body["model"], body["system"], body["max_tokens"]) == ("claude-sonnet-4-5", "sys", 2048)
    headers = fake_anthropic.requests[0].headers
    assert ANTHROPIC_KEY in (headers.get("x-api-key"), headers.get("Authorization", "").removeprefix("Bearer "))
    await runtime.flush_usage()
    totals = await runtime.store.usage_totals(agent_id=runtime.agent_id)
    assert (totals.prompt_tokens, totals.completion_tokens) == (2, 3)

    fake_anthropic.script('Here you go:\n```json\n{"ok": true}\n```')
    assert await runtime.use_model(ModelType.OBJECT_SMALL, {"prompt": "json please"}) == {"ok": True}
    assert fake_anthropic.requests[1].body["model"] == "claude-3-5-haiku-latest"


async def test_anthropic_image_description_sends_base64_block(
    tmp_path: Path, fake_anthropic: FakeAnthropic, make_runtime: MakeRuntime
) -> None:
    settings = make_settings(tmp_path, anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=fake_anthropic.base_url)
    runtime = await make_runtime(settings)
    result = await runtime.use_model(ModelType.IMAGE_DESCRIPTION, {"image": b"\xff\xd8jpeg", "prompt": "What?"})
    assert result["title"] == "A red square"
    block = fake_anthropic.requests[0].body["messages"][0]["content"][0]
    assert block == {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9hqcGVn"}}


async def test_fallback_from_failing_openai_to_anthropic(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, make_runtime: MakeRuntime
) -> None:
    settings = make_settings(
        tmp_path, model_providers="openai,anthropic", model_max_retries=0,
        openai_api_key=OPENAI_KEY, openai_base_url=fake_openai.base_url,
        anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=fake_anthropic.base_url,
    )
    runtime = await make_runtime(settings)
    events: list[dict[str, Any]] = []

    async def on_used(payload: dict[str, Any]) -> None:
        events.append(payload)

    runtime.on(EventType.MODEL_USED, on_used)
    fake_openai.script(SERVER_ERROR)
    assert await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"}) == "Hi from Claude."
    assert [(e["provider"], e["ok"]) for e in events] == [("openai", False), ("anthropic", True)]
    # Types Anthropic lacks stay on OpenAI.
    assert runtime.model_providers(ModelType.TEXT_EMBEDDING) == ["openai"]


async def test_anthropic_rate_limit_is_retried(
    tmp_path: Path, fake_anthropic: FakeAnthropic, make_runtime: MakeRuntime
) -> None:
    settings = make_settings(tmp_path, anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=fake_anthropic.base_url)
    runtime = await make_runtime(settings)
    fake_anthropic.script(RATE_LIMITED, "second try")
    assert await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"}) == "second try"


# --- provider selection ---------------------------------------------------------------------------
def test_model_providers_order_is_respected(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model_providers="anthropic,openai", openai_api_key=OPENAI_KEY,
                             anthropic_api_key=ANTHROPIC_KEY)
    plugins, _ = model_plugins(settings, character())
    assert [p.name for p in plugins] == ["anthropic", "openai"]
    assert {r.priority for r in plugins[0].models} == {0}
    assert {r.priority for r in plugins[1].models} == {1}


def test_listed_but_unconfigured_provider_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model_providers="openai,anthropic", openai_api_key=OPENAI_KEY)
    with pytest.raises(SettingsError, match="MODEL_PROVIDERS lists 'anthropic' but ANTHROPIC_API_KEY is not set"):
        model_plugins(settings, character())


def test_default_order_puts_legacy_model_provider_first(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, openai_api_key=OPENAI_KEY, anthropic_api_key=ANTHROPIC_KEY)
    plugins, _ = model_plugins(settings, character(modelProvider="anthropic"))
    assert [p.name for p in plugins][:2] == ["anthropic", "openai"]
    plugins, _ = model_plugins(settings, character())
    assert [p.name for p in plugins][:2] == ["openai", "anthropic"]


def test_legacy_model_provider_without_key_is_noted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, openai_api_key=OPENAI_KEY)
    plugins, notes = model_plugins(settings, character(modelProvider="anthropic"))
    assert [p.name for p in plugins][0] == "openai"
    assert any("ANTHROPIC_API_KEY" in note for note in notes)


def test_character_secrets_supply_keys(tmp_path: Path) -> None:
    plugins, _ = model_plugins(make_settings(tmp_path), character(secrets={"ANTHROPIC_API_KEY": ANTHROPIC_KEY}))
    assert plugins[0].name == "anthropic"


def test_plugin_aliases() -> None:
    assert PLUGIN_ALIASES["@elizaos/plugin-ollama"] == "openai"
    assert PLUGIN_ALIASES["@elizaos/plugin-local-ai"] == "local"
    assert plugin_name("@elizaos/plugin-sql") == "sql"
    assert plugin_name("openai") == "openai"
    assert plugin_name("discord") == "discord"


@pytest.mark.parametrize("reply", ['{"a": 1}', '```\n{"a": 1}\n```', 'Sure! {"a": 1} Hope that helps.'])
def test_parse_json_object_is_lenient(reply: str) -> None:
    assert parse_json_object(reply) == {"a": 1}


# --- secrets never leak -----------------------------------------------------------------------------
async def test_api_keys_never_appear_in_errors_or_logs(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, make_runtime: MakeRuntime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(
        tmp_path, model_providers="openai,anthropic", model_max_retries=1,
        openai_api_key=OPENAI_KEY, openai_base_url=fake_openai.base_url,
        anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=fake_anthropic.base_url,
    )
    runtime = await make_runtime(settings)
    # Real APIs echo (partly masked) keys in 401 messages; make the fakes echo the whole key.
    fake_openai.script(SERVER_ERROR, Status(401, body={"error": {"message": f"Incorrect API key: {OPENAI_KEY}"}}))
    fake_anthropic.script(Status(401, body={"type": "error", "error": {
        "type": "authentication_error", "message": f"invalid x-api-key {ANTHROPIC_KEY} / sk-ant-****zq7v"}}))
    with pytest.raises(ModelError) as raised:
        await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"})
    message = str(raised.value)
    assert "HTTP 401" in message and "[redacted]" in message
    for text in (message, caplog.text, repr(raised.value.__cause__), repr(raised.value.__context__)):
        for key in (OPENAI_KEY, ANTHROPIC_KEY, "zq7v"):
            assert key not in text


# --- fakes ---------------------------------------------------------------------------------------------
async def test_fake_raw_response_is_an_sdk_error(
    tmp_path: Path, fake_openai: FakeOpenAI, make_runtime: MakeRuntime
) -> None:
    runtime = await make_runtime(openai_settings(tmp_path, fake_openai, model_max_retries=0))
    fake_openai.script(Raw("<html>bad gateway", status=502))
    with pytest.raises(ModelError, match="HTTP 502"):
        await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"})


async def test_fake_openai_runs_as_a_subprocess() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.openai_server", "--port", "0", "--reply", "from a process",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        base_url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(f"{base_url}/chat/completions", json=body) as response:
                assert response.headers["Content-Type"].startswith("application/json")
                reply = await response.json()
        assert reply["choices"][0]["message"]["content"] == "from a process"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def test_characters_with_one_key_share_one_client_until_the_last_lets_go(
        tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    from plugins.openai_provider import OpenAIProvider

    settings = openai_settings(tmp_path, fake_openai)
    ada, bob = OpenAIProvider(settings, OPENAI_KEY), OpenAIProvider(settings, OPENAI_KEY)
    other = OpenAIProvider(settings, "sk-another-key-000")
    clients = [await provider.client() for provider in (ada, bob, other)]
    assert clients[0] is clients[1], "one key and endpoint: one client and connection pool"
    assert clients[2] is not clients[0], "another key: its own client"
    await ada.aclose()
    assert not clients[0].is_closed(), "the other character still uses it"
    assert (await bob.embedding(None, {"text": "hi"})).value  # type: ignore[arg-type]
    await bob.aclose()
    assert clients[0].is_closed()
    assert await ada.client() is not clients[0], "a later call makes a new one"
    await ada.aclose()
    await other.aclose()
