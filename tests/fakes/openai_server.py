"""A fake OpenAI-compatible HTTP API for tests: the real SDK talks to it through `base_url`.

Replies are deterministic and scriptable per endpoint, so tests can exercise retries (429 with
Retry-After, 500), timeouts (a hang) and malformed model output without any network access.

In-process::

    fake = FakeOpenAI(reply="hi")
    base_url = await fake.start()          # http://127.0.0.1:PORT/v1
    fake.script("first", RATE_LIMITED, "second")
    ...
    await fake.stop()

Streaming: a chat request with `"stream": true` is answered with Server-Sent Events in the API's
own chunk format (so the real SDK parses it). `stream_chunks` is how many pieces the reply text
(and each tool call's arguments) is cut into, `stream_seconds` the time the pieces are spread over
(first piece at once, last after `stream_seconds`; default 3 pieces, no delay)::

    fake = FakeOpenAI(reply="a long reply", stream_chunks=40, stream_seconds=4.0)
    ...
    fake.chunk_times      # per streamed response, time.monotonic() after each piece was written
    fake.first_chunk_at   # per streamed response, when its first piece was written

A piece is a chunk carrying model output (text, a tool call's opening or arguments), not the
framing around it, so `first_chunk_at[i]` to the moment the text shows is the latency streaming
adds. `StreamCut` scripts a stream that fails halfway.

From another process (prints the base URL on stdout, serves until killed)::

    python -m tests.fakes.openai_server --port 0 --reply "text" --stream-chunks 40 --stream-seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import math
import random
import struct
import sys
import time
import wave
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass(frozen=True)
class Status:
    """A scripted HTTP error: status code, extra headers and a JSON body."""

    code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Hang:
    """A scripted hang: the server answers nothing until `seconds` pass or it stops."""

    seconds: float = 30.0


@dataclass(frozen=True)
class Raw:
    """A scripted raw HTTP body, e.g. something that is not JSON at all."""

    body: str
    status: int = 200
    content_type: str = "text/plain"


@dataclass(frozen=True)
class ToolCalls:
    """A scripted tool-calling answer: (name, arguments) pairs, arguments as a dict or raw text
    (to script malformed JSON), and any text the model writes alongside."""

    calls: list[tuple[str, dict[str, Any] | str]]
    text: str = ""

    def call_id(self, index: int) -> str:
        return f"call_{index}_{self.calls[index][0]}"

    def arguments(self, index: int) -> str:
        arguments = self.calls[index][1]
        return arguments if isinstance(arguments, str) else json.dumps(arguments)


@dataclass(frozen=True)
class StreamCut:
    """A scripted stream that fails halfway: `after` pieces of the reply, then an error event with
    `message` (as the real APIs send when overloaded mid-reply). A request that does not stream
    gets HTTP 500 with the message instead."""

    after: int = 1
    message: str = "The server had an error while streaming"


RATE_LIMITED = Status(429, {"Retry-After": "1"}, {"error": {"message": "Rate limit reached", "type": "requests"}})
SERVER_ERROR = Status(500, body={"error": {"message": "The server had an error", "type": "server_error"}})
HANG = Hang()

ScriptEntry = str | dict[str, Any] | list[Any] | Status | Hang | Raw | ToolCalls | StreamCut
Event = tuple[bytes, bool]  # one Server-Sent Event, and whether it carries a piece of model output
Reply = str | Callable[[dict[str, Any]], str | ToolCalls]


@dataclass
class RecordedRequest:
    """One request the fake received. `body` is the JSON body, or the form fields for multipart;
    `headers` is case-insensitive."""

    method: str
    path: str
    body: dict[str, Any]
    headers: CIMultiDict[str]


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector seeded by the text's hash: same text, same vector, in any process."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def sine_wav(seconds: float = 0.5, frequency: float = 440.0, rate: int = 16_000) -> bytes:
    """A real, tiny mono 16-bit WAV so downstream audio tools (ffmpeg) can decode it."""
    frames = b"".join(
        struct.pack("<h", int(12_000 * math.sin(2 * math.pi * frequency * i / rate)))
        for i in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


def tiny_png(width: int = 4, height: int = 4, rgb: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A valid solid-colour PNG built with zlib, so tests need no image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    """One Server-Sent Event."""
    return (f"event: {event}\n" if event else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"


def count_tokens(text: str) -> int:
    """A stand-in tokenizer (whitespace words): deterministic usage numbers for assertions."""
    return len(text.split())


def message_text(messages: list[dict[str, Any]]) -> str:
    """The text of chat messages, whether content is a string or a list of parts."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return " ".join(parts)


def has_image(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") in ("image_url", "image") for p in m["content"])
        for m in messages
    )


class FakeServer:
    """Lifecycle, request recording and per-endpoint scripting shared by the fake APIs."""

    default_endpoint = "chat"

    def __init__(self, reply: Reply = "Hello from the fake model.", *, host: str = "127.0.0.1",
                 port: int = 0, stream_chunks: int = 3, stream_seconds: float = 0.0) -> None:
        self.reply = reply
        self.host = host
        self.port = port
        self.stream_chunks = max(1, stream_chunks)
        self.stream_seconds = stream_seconds
        self.requests: list[RecordedRequest] = []
        self.chunk_times: list[list[float]] = []
        self._scripts: defaultdict[str, deque[ScriptEntry]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    # Scripting -------------------------------------------------------------------------------
    def script(self, *responses: ScriptEntry, endpoint: str | None = None) -> None:
        """Queue responses for an endpoint (default: chat); each request takes the next one.

        A str is the model's reply text (any text, including malformed XML); Status, Hang and
        Raw script failures. When the queue is empty the default reply is used.
        """
        self._scripts[endpoint or self.default_endpoint].extend(responses)

    def pending(self, endpoint: str | None = None) -> int:
        return len(self._scripts[endpoint or self.default_endpoint])

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def reply_for(self, body: dict[str, Any]) -> str | ToolCalls:
        return self.reply(body) if callable(self.reply) else self.reply

    # Streaming ---------------------------------------------------------------------------------
    @property
    def first_chunk_at(self) -> list[float]:
        """When each streamed response wrote its first piece of model output (time.monotonic())."""
        return [times[0] for times in self.chunk_times if times]

    def pieces(self, text: str) -> list[str]:
        """`text` cut into at most `stream_chunks` pieces of about equal length."""
        size = max(1, -(-len(text) // self.stream_chunks))
        return [text[i:i + size] for i in range(0, len(text), size)]

    def stream_error(self, message: str) -> bytes:
        """The API's error event in the middle of a stream."""
        raise NotImplementedError

    async def stream(self, request: web.Request, events: list[Event], cut: StreamCut | None) -> web.StreamResponse:
        """Write `events`, spreading the pieces over `stream_seconds` and recording when each went out;
        with `cut`, an error event follows the first `cut.after` pieces instead of the rest."""
        if cut is not None:
            ends = [i for i, (_, piece) in enumerate(events) if piece][:cut.after]
            events = events[:ends[-1] + 1 if ends else 1] + [(self.stream_error(cut.message), False)]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        times: list[float] = []
        self.chunk_times.append(times)
        gap = self.stream_seconds / max(sum(piece for _, piece in events) - 1, 1)
        started = time.monotonic()
        try:
            for data, piece in events:
                if piece and times and not await self._pause(started + len(times) * gap - time.monotonic()):
                    return response  # the server is stopping
                await response.write(data)
                if piece:
                    times.append(time.monotonic())
            await response.write_eof()
        except ConnectionResetError:  # the client went away (cancelled, timed out)
            pass
        return response

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; False when the server stops meanwhile."""
        if seconds > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), seconds)
            except TimeoutError:
                pass
        return not self._stopping.is_set()

    # Lifecycle --------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def start(self) -> str:
        """Serve on an ephemeral port (unless one was given) and return the SDK base URL."""
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Request handling ---------------------------------------------------------------------------
    async def record(self, request: web.Request) -> dict[str, Any]:
        if request.content_type.startswith("multipart/"):
            body: dict[str, Any] = {}
            for name, value in (await request.post()).items():
                body[name] = value.file.read() if isinstance(value, web.FileField) else value
                if isinstance(value, web.FileField):
                    body[f"{name}_filename"] = value.filename
                    body[f"{name}_content_type"] = value.content_type
        else:
            raw = await request.read()
            body = json.loads(raw) if raw else {}
        self.requests.append(RecordedRequest(request.method, request.path, body, CIMultiDict(request.headers)))
        return body

    async def next_entry(self, endpoint: str, streaming: bool = False) -> ScriptEntry | web.StreamResponse | None:
        """Pop the next scripted entry; failures are turned into responses here (a StreamCut is
        left to a streaming request)."""
        queue = self._scripts[endpoint]
        entry = queue.popleft() if queue else None
        if isinstance(entry, StreamCut) and not streaming:
            entry = Status(500, body={"error": {"message": entry.message, "type": "server_error"}})
        if isinstance(entry, Hang):
            try:
                await asyncio.wait_for(self._stopping.wait(), entry.seconds)
            except TimeoutError:
                pass
            return web.json_response({"error": {"message": "hung"}}, status=504)
        if isinstance(entry, Status):
            body = entry.body or {"error": {"message": f"scripted status {entry.code}"}}
            return web.json_response(body, status=entry.code, headers=entry.headers)
        if isinstance(entry, Raw):
            return web.Response(text=entry.body, status=entry.status, content_type=entry.content_type)
        return entry


class FakeOpenAI(FakeServer):
    """Chat completions, embeddings, transcription, speech and images, like api.openai.com/v1.

    Endpoints to script: "chat", "embeddings", "transcriptions", "speech", "images".
    """

    def __init__(self, reply: Reply = "Hello from the fake model.", *, embedding_dimensions: int = 384,
                 transcript: str = "hello from the audio", host: str = "127.0.0.1", port: int = 0,
                 stream_chunks: int = 3, stream_seconds: float = 0.0) -> None:
        super().__init__(reply, host=host, port=port, stream_chunks=stream_chunks, stream_seconds=stream_seconds)
        self.embedding_dimensions = embedding_dimensions
        self.transcript = transcript
        self.image_description = {"title": "A red square", "description": "A small solid red square."}

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/embeddings", self._embeddings),
            web.post("/v1/audio/transcriptions", self._transcriptions),
            web.post("/v1/audio/speech", self._speech),
            web.post("/v1/images/generations", self._images),
            web.get("/v1/files/{name}", self._file),
        ]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        entry = await self.next_entry("chat", streaming=bool(body.get("stream")))
        if isinstance(entry, web.StreamResponse):
            return entry
        cut, entry = (entry, None) if isinstance(entry, StreamCut) else (None, entry)
        messages = body.get("messages", [])
        wants_json = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
        if entry is None and has_image(messages):
            entry = self.image_description
        if entry is None:
            # Like the real API in JSON mode; scripted entries pass verbatim to test bad output.
            entry = self.reply_for(body)
            if wants_json and not _is_json(entry):
                entry = {"text": entry}
        if isinstance(entry, ToolCalls):
            text = entry.text
            message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None, "tool_calls": [
                {"id": entry.call_id(i), "type": "function",
                 "function": {"name": name, "arguments": entry.arguments(i)}}
                for i, (name, _) in enumerate(entry.calls)]}
        else:
            text = entry if isinstance(entry, str) else json.dumps(entry)
            message = {"role": "assistant", "content": text, "refusal": None}
        prompt_tokens, completion_tokens = count_tokens(message_text(messages)), count_tokens(text)
        head = {"id": f"chatcmpl-fake{len(self.requests)}", "created": int(time.time()),
                "model": body.get("model", "fake-model")}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        finish = "tool_calls" if isinstance(entry, ToolCalls) else "stop"
        if body.get("stream"):
            return await self.stream(request, self._chunks(body, head, message, finish, usage), cut)
        return web.json_response({**head, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "finish_reason": finish, "logprobs": None, "message": message}]})

    def _chunks(self, body: dict[str, Any], head: dict[str, Any], message: dict[str, Any], finish: str,
                usage: dict[str, int]) -> list[Event]:
        """The reply as chat.completion.chunk events, as api.openai.com streams it."""
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> bytes:
            choices = [] if delta is None else [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
            return sse({**head, "object": "chat.completion.chunk", "system_fingerprint": None, "choices": choices,
                        **({"usage": None} if with_usage else {}), **extra})

        events = [(chunk({"role": "assistant", "content": "", "refusal": None}), False)]
        events += [(chunk({"content": piece}), True) for piece in self.pieces(message["content"] or "")]
        for index, call in enumerate(message.get("tool_calls") or ()):
            opening = {"index": index, "id": call["id"], "type": "function",
                       "function": {"name": call["function"]["name"], "arguments": ""}}
            events.append((chunk({"tool_calls": [opening]}), True))
            events += [(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), True)
                       for piece in self.pieces(call["function"]["arguments"])]
        events.append((chunk({}, finish), False))
        if with_usage:
            events.append((chunk(None, usage=usage), False))
        return [*events, (b"data: [DONE]\n\n", False)]

    def stream_error(self, message: str) -> bytes:
        return sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        entry = await self.next_entry("embeddings")
        if isinstance(entry, web.StreamResponse):
            return entry
        inputs = body.get("input", "")
        texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs]
        dimensions = int(body.get("dimensions") or self.embedding_dimensions)
        data = []
        for index, text in enumerate(texts):
            vector = fake_embedding(text, dimensions)
            if body.get("encoding_format") == "base64":
                packed: Any = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            else:
                packed = vector
            data.append({"object": "embedding", "index": index, "embedding": packed})
        tokens = sum(count_tokens(t) for t in texts)
        return web.json_response({"object": "list", "data": data, "model": body.get("model", "fake-embed"),
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        entry = await self.next_entry("transcriptions")
        if isinstance(entry, web.StreamResponse):
            return entry
        text = entry if isinstance(entry, str) else self.transcript
        if body.get("response_format") in ("text", "srt", "vtt"):
            return web.Response(text=text, content_type="text/plain")
        return web.json_response({"text": text})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        await self.record(request)
        entry = await self.next_entry("speech")
        if isinstance(entry, web.StreamResponse):
            return entry
        return web.Response(body=sine_wav(), content_type="audio/wav")

    async def _images(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        entry = await self.next_entry("images")
        if isinstance(entry, web.StreamResponse):
            return entry
        count = int(body.get("n") or 1)
        if body.get("response_format") == "url":
            items = [{"url": f"{self.base_url}/files/image{i}.png"} for i in range(count)]
        else:
            items = [{"b64_json": base64.b64encode(tiny_png()).decode(), "revised_prompt": body.get("prompt")}
                     for _ in range(count)]
        return web.json_response({"created": int(time.time()), "data": items})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=tiny_png(), content_type="image/png")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeOpenAI(reply=args.reply, embedding_dimensions=args.embedding_dimensions, port=args.port,
                      stream_chunks=args.stream_chunks, stream_seconds=args.stream_seconds)
    print(await fake.start(), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI-compatible API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (the default)")
    parser.add_argument("--reply", default="Hello from the fake model.", help="the chat reply text")
    parser.add_argument("--embedding-dimensions", type=int, default=384)
    parser.add_argument("--stream-chunks", type=int, default=3, help="pieces a streamed reply is cut into")
    parser.add_argument("--stream-seconds", type=float, default=0.0, help="time a streamed reply is spread over")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
