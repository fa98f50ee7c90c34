"""Anthropic (Claude) models for text, JSON objects and image descriptions, via the async SDK.

Anthropic has no embeddings, audio or image generation; for those the runtime falls through to
the next provider that registers them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot.plugin import ModelHandler, ModelOutput, ModelRegistration, Plugin, Priority, ToolCall, ToolStep
from bot.settings import Settings
from bot.streaming import TextListener
from bot.types import ModelType
from plugins.models import (
    DESCRIBE_INSTRUCTION,
    DESCRIBE_PROMPT,
    SdkClient,
    client_closer,
    describe_result,
    json_instruction,
    parse_json_object,
    provider_error,
    sniff_image_type,
)

if TYPE_CHECKING:
    import anthropic  # noqa: F401 - named in the SdkClient type parameter

    from bot.runtime import AgentRuntime

NAME = "anthropic"
DEFAULT_MAX_TOKENS = 2048  # the Messages API requires max_tokens on every call
HTTP_LIBRARIES = {"httpx", "httpx2"}  # what the SDK is built on, by version

def image_block(params: dict[str, Any]) -> dict[str, Any]:
    """An image content block: a URL source, or the bytes inline as base64."""
    if params.get("image_url"):
        url = str(params["image_url"])
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            mime = header[5:].split(";")[0]
            return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    data = params.get("image")
    if not data:
        raise ValueError("IMAGE_DESCRIPTION needs image_url or image bytes")
    mime = params.get("mime_type") or sniff_image_type(data)
    return {"type": "image",
            "source": {"type": "base64", "media_type": mime, "data": base64.b64encode(data).decode()}}


def tool_turns(steps: Sequence[ToolStep]) -> list[dict[str, Any]]:
    """Earlier tool rounds as Anthropic turns: the assistant's tool_use blocks, then the results."""
    turns: list[dict[str, Any]] = []
    for step in steps:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": step.text}] if step.text.strip() else []
        blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in step.calls]
        turns.append({"role": "assistant", "content": blocks})
        turns.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": c.id, "content": result, "is_error": not ok}
            for c, result, ok in zip(step.calls, step.results, step.success, strict=True)]})
    return turns


class AnthropicProvider(SdkClient["anthropic.AsyncAnthropic"]):
    """Model handlers sharing one lazily created client."""

    def __init__(self, settings: Settings, api_key: str) -> None:
        self.settings = settings
        self.api_key = api_key
        super().__init__("anthropic", "AsyncAnthropic", api_key=api_key, base_url=settings.anthropic_base_url,
                         settings=settings)

    async def _messages(self, model: str, content: str | list[dict[str, Any]], params: dict[str, Any],
                        system: str | None = None, listener: TextListener | None = None) -> ModelOutput:
        """One Messages call; with `listener`, streamed (each text delta to it), same output."""
        options: dict[str, Any] = {}
        if system:
            options["system"] = system
        if params.get("temperature") is not None:
            options["temperature"] = float(params["temperature"])
        if params.get("stop"):
            options["stop_sequences"] = list(params["stop"])
        if params.get("tools"):
            options["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters}
                                for t in params["tools"]]
            options["tool_choice"] = {"type": params.get("tool_choice") or "auto"}
        request = {"model": model, "max_tokens": int(params.get("max_tokens") or DEFAULT_MAX_TOKENS),
                   "messages": [{"role": "user", "content": content}, *tool_turns(params.get("tool_steps") or ())],
                   **options}
        client = await self.client()
        try:
            if listener is None:
                response = await client.messages.create(**request)
            else:
                async with client.messages.stream(**request) as stream:
                    async for piece in stream.text_stream:
                        await listener(piece)
                    response = await stream.get_final_message()
        except Exception as error:
            if not self._from_sdk(error):
                raise
            raise provider_error(NAME, error, [self.api_key]) from None
        text = "".join(block.text for block in response.content if getattr(block, "type", "") == "text")
        calls = [ToolCall(id=block.id, name=block.name, arguments=dict(block.input or {}))
                 for block in response.content if getattr(block, "type", "") == "tool_use"]
        return ModelOutput(value=text, model=response.model or model,
                           prompt_tokens=response.usage.input_tokens,
                           completion_tokens=response.usage.output_tokens, tool_calls=calls)

    def _from_sdk(self, error: Exception) -> bool:
        """Whether `error` is the SDK's: its own, or its HTTP library's, which it lets out of a stream
        that breaks midway (a read timeout, a dropped connection) where OpenAI's SDK wraps them."""
        return isinstance(error, self.sdk.AnthropicError) or type(error).__module__.partition(".")[0] in HTTP_LIBRARIES

    def _text(self, model: str) -> ModelHandler:
        async def handler(runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
            return await self._messages(model, str(params["prompt"]), params, params.get("system"),
                                        params.get("stream"))
        return handler

    def _object(self, model: str) -> ModelHandler:
        async def handler(runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
            system = "\n\n".join(s for s in (params.get("system"), json_instruction(params.get("schema"))) if s)
            output = await self._messages(model, str(params["prompt"]), params, system)
            output.value = parse_json_object(output.value)
            return output
        return handler

    async def describe_image(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        content = [image_block(params),
                   {"type": "text", "text": f"{params.get('prompt') or DESCRIBE_PROMPT}\n{DESCRIBE_INSTRUCTION}"}]
        output = await self._messages(self.settings.anthropic_small_model, content,
                                      {"max_tokens": params.get("max_tokens")})
        output.value = describe_result(output.value)
        return output

    def registrations(self, priority: int) -> list[ModelRegistration]:
        small, large = self.settings.anthropic_small_model, self.settings.anthropic_large_model
        handlers: dict[ModelType, ModelHandler] = {
            ModelType.TEXT_SMALL: self._text(small),
            ModelType.TEXT_LARGE: self._text(large),
            ModelType.OBJECT_SMALL: self._object(small),
            ModelType.OBJECT_LARGE: self._object(large),
            ModelType.IMAGE_DESCRIPTION: self.describe_image,
        }
        native = {ModelType.TEXT_SMALL, ModelType.TEXT_LARGE}
        return [ModelRegistration(t, h, provider=NAME, priority=priority, native_tools=t in native)
                for t, h in handlers.items()]


def anthropic_plugin(settings: Settings, api_key: str | None, priority: int = 0) -> Plugin:
    """The Anthropic model plugin; `priority` is its place in the fallback order (lower first)."""
    if not api_key:
        raise ValueError("Anthropic needs ANTHROPIC_API_KEY")
    provider = AnthropicProvider(settings, api_key)
    return Plugin(
        name=NAME,
        description="Anthropic Claude for text, JSON and image descriptions",
        priority=Priority.MODEL,
        models=provider.registrations(priority),
        services=[client_closer(NAME, provider)],
    )
