"""OpenAI models for all nine model types, through the official async SDK.

OPENAI_BASE_URL points the same code at any OpenAI-compatible server (Ollama, vLLM, llama.cpp
server, OpenRouter). Retries with Retry-After and timeouts are left to the SDK, which already
does them correctly; we only translate its errors into ones that are safe to log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bot.plugin import ModelHandler, ModelOutput, ModelRegistration, Plugin, Priority, ToolCall
from bot.settings import Settings
from bot.streaming import TextListener
from bot.tools import arguments_json, steps_text
from bot.types import Attachment, ModelType
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
    import openai

    from bot.runtime import AgentRuntime

NAME = "openai"
PLACEHOLDER_KEY = "not-needed"  # compatible servers often need no key, but the SDK insists on one
AUDIO_EXTENSIONS = {
    "audio/ogg": "ogg", "audio/opus": "ogg", "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/wav": "wav",
    "audio/x-wav": "wav", "audio/wave": "wav", "audio/webm": "webm", "audio/mp4": "m4a", "audio/m4a": "m4a",
    "audio/x-m4a": "m4a", "audio/flac": "flac", "video/mp4": "mp4",
}

def _tool_call(call_id: str, name: str, arguments_text: str | None) -> ToolCall:
    """A function call from the API; arguments that are not a JSON object are reported, not run."""
    try:
        arguments = json.loads(arguments_text or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        return ToolCall(id=call_id, name=name, arguments={},
                        error="the arguments were not a JSON object; call it again with valid JSON")
    return ToolCall(id=call_id, name=name, arguments=arguments)


def image_url_for(params: dict[str, Any]) -> str:
    """A URL the vision API accepts: the given URL, or the bytes as a data URL."""
    if params.get("image_url"):
        return str(params["image_url"])
    data = params.get("image")
    if not data:
        raise ValueError("IMAGE_DESCRIPTION needs image_url or image bytes")
    mime = params.get("mime_type") or sniff_image_type(data)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class OpenAIProvider(SdkClient["openai.AsyncOpenAI"]):
    """Model handlers sharing one lazily created client."""

    def __init__(self, settings: Settings, api_key: str | None) -> None:
        self.settings = settings
        self.api_key = api_key or (PLACEHOLDER_KEY if settings.openai_base_url else None)
        if self.api_key is None:
            raise ValueError("OpenAI needs OPENAI_API_KEY or OPENAI_BASE_URL")
        super().__init__("openai", "AsyncOpenAI", api_key=self.api_key, base_url=settings.openai_base_url,
                         settings=settings)

    async def _call(self, request: Callable[[openai.AsyncOpenAI], Awaitable[Any]]) -> Any:
        client = await self.client()
        try:
            return await request(client)
        except self.sdk.OpenAIError as error:
            raise provider_error(NAME, error, [self.api_key]) from None

    async def _chat(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any],
                    *, json_mode: bool = False) -> ModelOutput:
        options: dict[str, Any] = {}
        if params.get("max_tokens"):
            # api.openai.com's newer models reject max_tokens; compatible servers may only know it.
            key = "max_tokens" if self.settings.openai_base_url else "max_completion_tokens"
            options[key] = int(params["max_tokens"])
        if params.get("temperature") is not None:
            options["temperature"] = float(params["temperature"])
        if params.get("stop"):
            options["stop"] = list(params["stop"])[:4]
        if json_mode:
            options["response_format"] = {"type": "json_object"}
        if params.get("tools") and self.settings.openai_native_tools:
            options["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}} for t in params["tools"]]
            options["tool_choice"] = params.get("tool_choice") or "auto"
        listener: TextListener | None = None if json_mode else params.get("stream")
        if listener is not None:
            return await self._call(lambda client: self._stream(client, model, messages, options, listener))
        response = await self._call(lambda client: client.chat.completions.create(model=model, messages=messages, **options))
        if not response.choices:
            raise ValueError(f"{NAME}: the reply has no choices")
        usage = response.usage
        message = response.choices[0].message
        return ModelOutput(
            value=message.content or "",
            model=response.model or model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            tool_calls=[_tool_call(call.id, call.function.name, call.function.arguments)
                        for call in message.tool_calls or () if call.type == "function"],
        )

    @staticmethod
    async def _stream(client: openai.AsyncOpenAI, model: str, messages: list[dict[str, Any]],
                      options: dict[str, Any], listener: TextListener) -> ModelOutput:
        """`_chat` streamed: each piece of text goes to `listener` as it arrives; tool calls come in
        pieces by index (the id and name first, then the arguments), assembled here."""
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        name, usage, answered = model, None, False
        stream = await client.chat.completions.create(model=model, messages=messages, stream=True,
                                                      stream_options={"include_usage": True}, **options)
        async with stream:
            async for chunk in stream:
                name, usage = chunk.model or name, chunk.usage or usage
                if not chunk.choices:
                    continue  # the usage chunk
                answered = True
                delta = chunk.choices[0].delta
                for piece in delta.tool_calls or ():
                    call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = piece.id or call["id"]
                    if piece.function is not None:
                        call["name"] += piece.function.name or ""
                        call["arguments"] += piece.function.arguments or ""
                if delta.content:
                    text.append(delta.content)
                    await listener(delta.content)
        if not answered:
            raise ValueError(f"{NAME}: the reply has no choices")
        return ModelOutput(
            value="".join(text),
            model=name,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            tool_calls=[_tool_call(call["id"], call["name"], call["arguments"]) for _, call in sorted(calls.items())],
        )

    def _messages(self, params: dict[str, Any], extra_system: str | None = None) -> list[dict[str, Any]]:
        """System, the prompt, then earlier tool rounds as assistant tool_calls and tool results
        (as text for a server without tool calling, when another model ran the tools)."""
        system = "\n\n".join(s for s in (params.get("system"), extra_system) if s)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": str(params["prompt"])})
        steps = list(params.get("tool_steps") or ())
        if steps and not self.settings.openai_native_tools:
            messages.append({"role": "user", "content": f"Results of the tools used for this message:\n"
                                                        f"{steps_text(steps)}\nReply using them."})
            return messages
        for step in steps:
            messages.append({"role": "assistant", "content": step.text or None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": arguments_json(call.arguments)}}
                for call in step.calls]})
            messages += [{"role": "tool", "tool_call_id": call.id, "content": result}
                         for call, result in zip(step.calls, step.results, strict=True)]
        return messages

    def _text(self, model: str) -> ModelHandler:
        async def handler(runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
            return await self._chat(model, self._messages(params), params)
        return handler

    def _object(self, model: str) -> ModelHandler:
        async def handler(runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
            messages = self._messages(params, json_instruction(params.get("schema")))
            output = await self._chat(model, messages, params, json_mode=True)
            output.value = parse_json_object(output.value)
            return output
        return handler

    async def embedding(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        single = "texts" not in params
        texts = [str(params.get("text", ""))] if single else [str(t) for t in params["texts"]]
        if not texts:
            return ModelOutput(value=[])
        options: dict[str, Any] = {}
        if self.settings.openai_embedding_dimensions:
            options["dimensions"] = self.settings.openai_embedding_dimensions
        model = self.settings.openai_embedding_model
        response = await self._call(
            lambda client: client.embeddings.create(model=model, input=texts, encoding_format="float", **options)
        )
        vectors = [list(item.embedding) for item in sorted(response.data, key=lambda d: d.index)]
        if len(vectors) != len(texts):
            raise ValueError(f"{NAME}: asked for {len(texts)} embeddings, got {len(vectors)}")
        usage = response.usage
        return ModelOutput(value=vectors[0] if single else vectors, model=response.model or model,
                           prompt_tokens=usage.prompt_tokens if usage else 0)

    async def transcription(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        mime = params.get("mime_type") or "audio/ogg"
        # Whisper picks the decoder from the file name's extension, so it must match the bytes.
        filename = params.get("filename") or f"audio.{AUDIO_EXTENSIONS.get(mime.split(';')[0], 'ogg')}"
        model = self.settings.openai_transcription_model
        response = await self._call(
            lambda client: client.audio.transcriptions.create(model=model, file=(filename, params["audio"], mime))
        )
        return ModelOutput(value=str(getattr(response, "text", response)).strip(), model=model)

    async def speech(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        model = self.settings.openai_tts_model
        response = await self._call(lambda client: client.audio.speech.create(
            model=model, voice=params.get("voice") or self.settings.openai_tts_voice, input=str(params["text"]),
            response_format="mp3",
        ))
        audio = response.content
        if not audio:
            raise ValueError(f"{NAME}: text to speech returned no audio")
        return ModelOutput(value=audio, model=model)

    async def image(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        model = self.settings.openai_image_model
        count = max(1, int(params.get("count") or 1))
        options: dict[str, Any] = {"size": params["size"]} if params.get("size") else {}
        if model.startswith("dall-e"):
            options["response_format"] = "b64_json"  # gpt-image models always return b64 and reject this
        # dall-e-3 makes one image per request.
        batches = [1] * count if model == "dall-e-3" else [count]
        responses = await asyncio.gather(*(
            self._call(lambda client, n=n: client.images.generate(model=model, prompt=str(params["prompt"]), n=n,
                                                                  **options))
            for n in batches
        ))
        attachments = [
            self._attachment(item, str(params["prompt"])) for response in responses for item in response.data or []
        ]
        if not attachments:
            raise ValueError(f"{NAME}: image generation returned no images")
        return ModelOutput(value=attachments, model=model)

    @staticmethod
    def _attachment(item: Any, prompt: str) -> Attachment:
        common = {"id": uuid.uuid4().hex, "kind": "image", "title": prompt[:80],
                  "description": getattr(item, "revised_prompt", None) or prompt}
        if item.b64_json:
            data = base64.b64decode(item.b64_json)
            return Attachment(**common, content_type=sniff_image_type(data), data=data)
        if item.url:
            return Attachment(**common, content_type="image/png", url=item.url)
        raise ValueError(f"{NAME}: an image came back with neither data nor a URL")

    async def describe_image(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        prompt = f"{params.get('prompt') or DESCRIBE_PROMPT}\n{DESCRIBE_INSTRUCTION}"
        messages = [{"role": "user", "content": [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": image_url_for(params)}},
        ]}]
        output = await self._chat(self.settings.openai_image_description_model, messages,
                                  {"max_tokens": params.get("max_tokens")}, json_mode=True)
        output.value = describe_result(output.value)
        return output

    def registrations(self, priority: int) -> list[ModelRegistration]:
        small, large = self.settings.openai_small_model, self.settings.openai_large_model
        handlers: dict[ModelType, ModelHandler] = {
            ModelType.TEXT_SMALL: self._text(small),
            ModelType.TEXT_LARGE: self._text(large),
            ModelType.OBJECT_SMALL: self._object(small),
            ModelType.OBJECT_LARGE: self._object(large),
            ModelType.TEXT_EMBEDDING: self.embedding,
            ModelType.TRANSCRIPTION: self.transcription,
            ModelType.TEXT_TO_SPEECH: self.speech,
            ModelType.IMAGE: self.image,
            ModelType.IMAGE_DESCRIPTION: self.describe_image,
        }
        native = {ModelType.TEXT_SMALL, ModelType.TEXT_LARGE} if self.settings.openai_native_tools else set()
        return [ModelRegistration(t, h, provider=NAME, priority=priority, native_tools=t in native)
                for t, h in handlers.items()]


def openai_plugin(settings: Settings, api_key: str | None, priority: int = 0) -> Plugin:
    """The OpenAI model plugin; `priority` is its place in the fallback order (lower first)."""
    provider = OpenAIProvider(settings, api_key)
    return Plugin(
        name=NAME,
        description="OpenAI (or an OpenAI-compatible server) for text, JSON, embeddings, audio and images",
        priority=Priority.MODEL,
        models=provider.registrations(priority),
        services=[client_closer(NAME, provider)],
    )
