"""A fake Anthropic Messages API (POST /v1/messages) for tests, scriptable like FakeOpenAI.

    fake = FakeAnthropic(reply="hi")
    base_url = await fake.start()   # http://127.0.0.1:PORT (the SDK appends /v1/messages)
"""

from __future__ import annotations

import json

from aiohttp import web

from tests.fakes.openai_server import FakeServer, ToolCalls, count_tokens, has_image, message_text

ERROR_TYPES = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error", 401: "authentication_error"}


class FakeAnthropic(FakeServer):
    """Only the "chat" endpoint (/v1/messages); image content yields `image_description` JSON."""

    def __init__(self, reply: str = "Hello from the fake Claude.", *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(reply, host=host, port=port)
        self.image_description = {"title": "A red square", "description": "A small solid red square."}

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages)]

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        entry = await self.next_entry("chat")
        if isinstance(entry, web.StreamResponse):
            return entry
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
        return web.json_response({
            "id": f"msg_fake{len(self.requests)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-fake"),
            "content": content,
            "stop_reason": "tool_use" if isinstance(entry, ToolCalls) else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": count_tokens(system_text + " " + message_text(messages)),
                      "output_tokens": count_tokens(text)},
        })


def _tool_blocks(messages: list[dict[str, object]]) -> bool:
    return any(isinstance(block, dict) and block.get("type") in ("tool_use", "tool_result")
               for message in messages if isinstance(message.get("content"), list)
               for block in message["content"])  # type: ignore[union-attr]


def anthropic_error(code: int, message: str) -> dict[str, object]:
    """An error body shaped like Anthropic's, for `Status(code, body=...)` scripts."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(code, "api_error"), "message": message}}
