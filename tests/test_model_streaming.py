"""Streaming model replies through the real OpenAI and Anthropic SDKs against the local fakes.

A handler given `params["stream"]` must hand each piece of text to it as the API sends it, and
still return exactly what the non-streaming call returns (text, tool calls, usage). Arrival over
time is proven with the times the fake wrote each piece, never by sleeping.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.plugin import ModelOutput, Plugin
from bot.runtime import AgentRuntime, ModelError
from bot.settings import Settings
from bot.store.base import Store
from bot.streaming import ReplyStream, StreamingCallback, TextListener
from bot.types import Content, ModelType
from plugins.anthropic_provider import anthropic_plugin
from plugins.bootstrap import bootstrap_plugin
from plugins.openai_provider import openai_plugin
from tests.fakes.anthropic_server import FakeAnthropic, anthropic_error
from tests.fakes.openai_server import FakeOpenAI, FakeServer, Status, StreamCut, ToolCalls
from tests.runtime_helpers import make_character, make_chat, make_settings

pytestmark = pytest.mark.usefixtures("no_model_environment")

KEYS = {"openai": "sk-test-stream-openai-secret", "anthropic": "sk-ant-test-stream-secret"}
REPLY = "Streaming lets the reader start before the writer has finished the whole sentence."
CHUNKS = 8


@dataclass
class Recorder:
    """A TextSink that keeps every piece the handler passed on, with when it arrived."""

    pieces: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def listener(self, structured: bool) -> TextListener:
        async def on_text(piece: str) -> None:
            self.pieces.append(piece)
            self.times.append(time.monotonic())
        return on_text


@dataclass
class Provider:
    name: str
    fake: FakeServer
    runtime: AgentRuntime

    async def ask(self, stream: Recorder | None = None, **params: Any) -> ModelOutput:
        return await self.runtime.use_model_output(ModelType.TEXT_LARGE, {"prompt": "tell me", **params},
                                                   stream=stream)


def _plugin(name: str, fake: FakeServer, tmp_path: Path) -> tuple[Settings, Plugin]:
    settings = make_settings(tmp_path, model_timeout=2.0, model_max_retries=0,
                             **{f"{name}_base_url": fake.base_url})
    plugin = openai_plugin if name == "openai" else anthropic_plugin
    return settings, plugin(settings, KEYS[name])


@pytest.fixture(params=["openai", "anthropic"])
async def provider(request: pytest.FixtureRequest, tmp_path: Path, sqlite_store: Store) -> AsyncIterator[Provider]:
    """One provider's model plugin alone in a runtime, against its fake streaming REPLY in CHUNKS
    pieces over 0.4 s."""
    fake_class = FakeOpenAI if request.param == "openai" else FakeAnthropic
    async with fake_class(reply=REPLY, stream_chunks=CHUNKS, stream_seconds=0.4) as fake:
        settings, plugin = _plugin(request.param, fake, tmp_path)
        runtime = AgentRuntime(make_character(), settings, sqlite_store, [plugin])
        await runtime.initialize()
        try:
            yield Provider(request.param, fake, runtime)
        finally:
            await runtime.stop()


def _path(provider: Provider) -> str:
    return "/chat/completions" if provider.name == "openai" else "/messages"


async def test_text_reaches_the_listener_while_it_is_written(provider: Provider) -> None:
    recorder = Recorder()
    output = await provider.ask(recorder)
    assert output.value == REPLY
    assert len(recorder.pieces) == CHUNKS and "".join(recorder.pieces) == REPLY
    written = provider.fake.chunk_times[0]
    assert len(written) == CHUNKS
    # The first piece was in hand before the fake had even written the last one.
    assert recorder.times[0] < written[-1]
    body = provider.fake.requests_to(_path(provider))[0].body
    assert body["stream"] is True
    if provider.name == "openai":
        assert body["stream_options"] == {"include_usage": True}


async def test_without_a_listener_nothing_streams_and_the_output_is_the_same(provider: Provider) -> None:
    streamed = await provider.ask(Recorder())
    whole = await provider.ask()
    first, second = provider.fake.requests_to(_path(provider))
    assert first.body["stream"] is True and "stream" not in second.body
    assert len(provider.fake.chunk_times) == 1  # the second answer was not streamed
    assert (streamed.value, streamed.model, streamed.tool_calls) == (whole.value, whole.model, whole.tool_calls)
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (whole.prompt_tokens, whole.completion_tokens)
    assert streamed.prompt_tokens == 2 and streamed.completion_tokens == len(REPLY.split())


async def test_streamed_tool_calls_equal_the_non_streamed_ones(provider: Provider) -> None:
    calls = ToolCalls([("ROLL_DICE", {"sides": 20, "count": 2}),
                       ("LOOKUP", {"query": 'a "quoted" word', "tags": ["x", "y"], "deep": {"n": 1.5}})],
                      text="Let me check.")
    provider.fake.script(calls, calls)
    recorder = Recorder()
    streamed = await provider.ask(recorder)
    whole = await provider.ask()
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        ("ROLL_DICE", {"sides": 20, "count": 2}),
        ("LOOKUP", {"query": 'a "quoted" word', "tags": ["x", "y"], "deep": {"n": 1.5}})]
    assert streamed.tool_calls == whole.tool_calls
    assert all(call.id and not call.error for call in streamed.tool_calls)
    assert streamed.value == whole.value == "Let me check." == "".join(recorder.pieces)
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (whole.prompt_tokens, whole.completion_tokens)
    # The arguments really came in pieces: more output chunks than the text's alone.
    assert len(provider.fake.chunk_times[0]) > len(provider.fake.pieces("Let me check.")) + 2


async def test_an_http_error_is_a_provider_error_without_the_key(provider: Provider) -> None:
    message = f"Incorrect API key provided: {KEYS[provider.name]}"
    body = anthropic_error(401, message) if provider.name == "anthropic" else {"error": {"message": message}}
    provider.fake.script(Status(401, body=body))
    recorder = Recorder()
    with pytest.raises(ModelError, match=f"{provider.name} HTTP 401") as caught:
        await provider.ask(recorder)
    assert KEYS[provider.name] not in str(caught.value) and "Incorrect API key" in str(caught.value)
    assert recorder.pieces == []


async def test_an_error_midway_through_a_stream_is_a_provider_error_without_the_key(provider: Provider) -> None:
    provider.fake.script(StreamCut(after=2, message=f"Overloaded while serving {KEYS[provider.name]}"))
    recorder = Recorder()
    with pytest.raises(ModelError, match="ModelProviderError") as caught:
        await provider.ask(recorder)
    assert "Overloaded while serving [redacted]" in str(caught.value)
    assert KEYS[provider.name] not in str(caught.value)
    assert recorder.pieces == provider.fake.pieces(REPLY)[:2]  # it failed after the pieces it had sent


async def test_a_stream_that_stalls_midway_times_out_as_a_provider_error(provider: Provider) -> None:
    provider.fake.stream_chunks, provider.fake.stream_seconds = 2, 30.0  # 30 s between the two pieces
    recorder = Recorder()
    started = time.monotonic()
    with pytest.raises(ModelError, match=f"{provider.name}: ModelProviderError: .*Timeout"):
        await provider.ask(recorder)
    assert time.monotonic() - started < 10  # MODEL_TIMEOUT (2 s) per read, not the fake's 30 s
    assert recorder.pieces == provider.fake.pieces(REPLY)[:1]


async def test_a_json_object_request_never_streams(provider: Provider) -> None:
    provider.fake.script('{"mood": "calm"}')
    recorder = Recorder()
    output = await provider.runtime.use_model_output(ModelType.OBJECT_LARGE, {"prompt": "mood?"}, stream=recorder)
    assert output.value == {"mood": "calm"}
    assert "stream" not in provider.fake.requests[-1].body and recorder.pieces == []


# --- through the whole runtime ----------------------------------------------------------------
class RecordingStream(ReplyStream):
    """A connector's stream that keeps what it was asked to show and deliver."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, float]] = []
        self.finished: list[Content] = []
        self.resets = 0
        self.closed = False

    async def update(self, text: str) -> None:
        self.updates.append((text, time.monotonic()))

    async def reset(self) -> None:
        self.resets += 1

    async def finish(self, content: Content) -> list[str] | None:
        self.finished.append(content)
        return [f"test:streamed:{len(self.finished)}"]

    async def close(self) -> None:
        self.closed = True


@dataclass
class StreamingChatCallback:
    """A reply callback that offers a stream for each reply (a StreamingCallback)."""

    sent: list[Content] = field(default_factory=list)
    streams: list[RecordingStream] = field(default_factory=list)

    async def __call__(self, content: Content) -> list[str]:
        self.sent.append(content)
        return [f"test:sent:{uuid.uuid4()}"]

    def open_stream(self) -> ReplyStream | None:
        self.streams.append(RecordingStream())
        return self.streams[-1]


async def test_a_reply_from_the_openai_plugin_reaches_the_chat_as_it_is_written(
    tmp_path: Path, sqlite_store: Store
) -> None:
    async with FakeOpenAI(reply=REPLY, stream_chunks=10, stream_seconds=0.5) as fake:
        settings, plugin = _plugin("openai", fake, tmp_path)
        runtime = AgentRuntime(make_character(), settings, sqlite_store, [bootstrap_plugin(), plugin])
        await runtime.initialize()
        try:
            chat = make_chat(runtime)
            callback = StreamingChatCallback()
            assert isinstance(callback, StreamingCallback)
            await runtime.ensure_connection(chat.user, chat.room, chat.world)
            ticket = await runtime.receive_message(chat.message("tell me about streaming"), callback)
            await ticket.outcome

            [stream] = callback.streams
            texts = [text for text, _ in stream.updates]
            assert len(texts) >= 5 and all(REPLY.startswith(text) for text in texts)
            assert all(len(a) <= len(b) for a, b in zip(texts, texts[1:], strict=False))  # only ever grows
            [written] = fake.chunk_times
            assert stream.updates[0][1] < written[-1]  # shown before the model had finished writing
            assert [c.text for c in stream.finished] == [REPLY] and callback.sent == []
            assert stream.closed and stream.resets == 0
            rows = await sqlite_store.get_memories(agent_id=runtime.agent_id, room_id=chat.room.id)
            replies = [m for m in rows if m.entity_id == runtime.agent_id]
            assert [(m.content.text, m.metadata["platform_keys"]) for m in replies] == [(REPLY, ["test:streamed:1"])]
        finally:
            await runtime.stop()
