"""A fake Anthropic Messages API (POST /v1/messages) for tests, scriptable like FakeOpenAI.

    fake = FakeAnthropic(reply="hi")
    base_url = await fake.start()   # http://127.0.0.1:PORT (the SDK appends /v1/messages)

A request with `"stream": true` gets the Messages streaming events (message_start, a
content_block_start/delta/stop run per text or tool_use block, message_delta with the usage,
message_stop), paced and timed like FakeOpenAI's: `stream_chunks`, `stream_seconds`,
`chunk_times`, `first_chunk_at` (see tests/fakes/openai_server.py).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes.openai_server import (
    Event,
    FakeServer,
    StreamCut,
    ToolCalls,
    count_tokens,
    has_image,
    message_text,
    sse,
)

ERROR_TYPES = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error", 401: "authentication_error"}


class FakeAnthropic(FakeServer):
    """Only the "chat" endpoint (/v1/messages); image content yields `image_description` JSON."""

    def __init__(self, reply: str = "Hello from the fake Claude.", *, host: str = "127.0.0.1",
                 port: int = 0, stream_chunks: int = 3, stream_seconds: float = 0.0) -> None:
        super().__init__(reply, host=host, port=port, stream_chunks=stream_chunks, stream_seconds=stream_seconds)
        self.image_description = {"title": "A red square", "description": "A small solid red square."}

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages)]

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        entry = await self.next_entry("chat", streaming=bool(body.get("stream")))
        if isinstance(entry, web.StreamResponse):
            return entry
        cut, entry = (entry, None) if isinstance(entry, StreamCut) else (None, entry)
        messages = body.get("messages", [])
        if _tool_blocks(messages) and not body.get("tools"):  # as the real API answers
            return web.json_response(anthropic_error(400, "Requests which include `tool_use` or `tool_result` "
                                                          "blocks must define tools."), status=400)
        if entry is None and has_image(messages):
            entry = self.image_description
        if entry is None:
            entry = self.reply_for(body)
        if isinstance(entry, ToolCalls):
            text = entry.text
            content = ([{"type": "text", "text": text}] if text else []) + [
                {"type": "tool_use", "id": entry.call_id(i), "name": name, "input": json.loads(entry.arguments(i))}
                for i, (name, _) in enumerate(entry.calls)]
        else:
            text = entry if isinstance(entry, str) else json.dumps(entry)
            content = [{"type": "text", "text": text}]
        system = body.get("system") or ""
        system_text = system if isinstance(system, str) else " ".join(b.get("text", "") for b in system)
        message = {
            "id": f"msg_fake{len(self.requests)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-fake"),
            "content": content,
            "stop_reason": "tool_use" if isinstance(entry, ToolCalls) else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": count_tokens(system_text + " " + message_text(messages)),
                      "output_tokens": count_tokens(text)},
        }
        if body.get("stream"):
            return await self.stream(request, self._events(message), cut)
        return web.json_response(message)

    def _events(self, message: dict[str, Any]) -> list[Event]:
        """The message as the Messages API streams it: the blocks' text and tool input in pieces."""
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        events = [(sse({"type": "message_start", "message": start}, "message_start"), False)]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                opening, pieces = {"type": "text", "text": ""}, self.pieces(block["text"])
                deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
            else:
                opening = {**block, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": piece}
                          for piece in ["", *self.pieces(json.dumps(block["input"]))]]
            events.append((sse({"type": "content_block_start", "index": index, "content_block": opening},
                               "content_block_start"), block["type"] == "tool_use"))
            events += [(sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"),
                        True) for delta in deltas]
            events.append((sse({"type": "content_block_stop", "index": index}, "content_block_stop"), False))
        events.append((sse({"type": "message_delta", "usage": {"output_tokens": usage["output_tokens"]},
                            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}},
                           "message_delta"), False))
        return [*events, (sse({"type": "message_stop"}, "message_stop"), False)]

    def stream_error(self, message: str) -> bytes:
        return sse(anthropic_error(529, message), "error")


def _tool_blocks(messages: list[dict[str, object]]) -> bool:
    return any(isinstance(block, dict) and block.get("type") in ("tool_use", "tool_result")
               for message in messages if isinstance(message.get("content"), list)
               for block in message["content"])  # type: ignore[union-attr]


def anthropic_error(code: int, message: str) -> dict[str, object]:
    """An error body shaped like Anthropic's, for `Status(code, body=...)` scripts."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(code, "api_error"), "message": message}}
