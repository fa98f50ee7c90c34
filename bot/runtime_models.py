"""The model half of the runtime: registered handlers per model type, fallback between providers,
and token usage written in batches off the reply path."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.lru import LRU
from bot.plugin import ModelOutput, ModelRegistration
from bot.store.base import ModelUsage, Store
from bot.streaming import TextSink
from bot.types import EventType, ModelType

log = logging.getLogger("bot.runtime")

USAGE_FLUSH_SECONDS = 1.0
EMBEDDING_CACHE_SIZE = 64  # recent texts' vectors: a message is asked for by several parts of its run


class ModelError(Exception):
    """Every handler for a model type failed (or none is registered)."""


class ModelsMixin:
    """Part of AgentRuntime (see bot/runtime.py), kept apart so each file reads in one sitting."""

    agent_id: uuid.UUID
    store: Store
    clock: Callable[[], float]
    _models: dict[ModelType, list[ModelRegistration]]
    _usage: list[Any]
    _usage_task: asyncio.Task[None] | None
    _vectors: LRU[str, np.ndarray]  # float32: a 1536-dimension vector is 6 KB, not 50 KB of floats
    _embedding: dict[str, asyncio.Future[list[float]]]
    _embedding_size: int | None

    if TYPE_CHECKING:  # provided by AgentRuntime
        async def emit(self, event: EventType | str, payload: dict[str, Any]) -> None: ...

        def run_in_background(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]: ...

    def register_model(self, registration: ModelRegistration) -> None:
        handlers = self._models.setdefault(registration.model_type, [])
        handlers.append(registration)
        handlers.sort(key=lambda r: r.priority)

    def has_model(self, model_type: ModelType) -> bool:
        return bool(self._models.get(model_type))

    def has_plain_model(self, model_type: ModelType) -> bool:
        """Whether any model for this type (first choice or fallback) needs the plain prompt."""
        return any(not r.structured for r in self._models.get(model_type, ()))

    def follows_formats(self, model_type: ModelType) -> bool:
        """Whether the first model for this type can follow an output format (XML, JSON); small
        local models cannot, and work that needs one (fact extraction) is skipped for them."""
        handlers = self._models.get(model_type)
        return bool(handlers) and handlers[0].structured

    def has_native_tools(self, model_type: ModelType) -> bool:
        """Whether the first model for this type takes tools natively (function calling)."""
        handlers = self._models.get(model_type)
        return bool(handlers) and handlers[0].native_tools

    def runs_in_process(self, model_type: ModelType) -> bool:
        """Whether the first model for this type runs in this process (calls cost nothing)."""
        handlers = self._models.get(model_type)
        return bool(handlers) and handlers[0].in_process

    def model_providers(self, model_type: ModelType) -> list[str]:
        return [r.provider for r in self._models.get(model_type, [])]

    async def use_model(
        self, model_type: ModelType, params: dict[str, Any], *, provider: str | None = None
    ) -> Any:
        """Call the best handler for `model_type`, falling back to the next one when it fails."""
        return (await self.use_model_output(model_type, params, provider=provider)).value

    async def use_model_output(
        self, model_type: ModelType, params: dict[str, Any], *, provider: str | None = None,
        plain: dict[str, Any] | None = None, stream: TextSink | None = None,
    ) -> ModelOutput:
        """Like `use_model`, but returns the whole output: which provider answered, and whether it
        was given the structured prompt. `plain` is the prompt for handlers that cannot follow an
        output format (small local models), so a fallback never receives a template it would echo.
        `stream` receives the text as it is written, from handlers that can stream (`params["stream"]`).

        A provider that fails while another answers is one warning; when all fail, ModelError
        names each provider's error and nothing is logged here (the caller decides how loud).
        """
        handlers = [r for r in self._models.get(model_type, []) if provider is None or r.provider == provider]
        if not handlers:
            raise ModelError(f"no model is configured for {model_type}")
        errors: list[str] = []
        for registration in handlers:
            call = params if registration.structured or plain is None else {**params, **plain}
            if stream is not None:
                call = {**call, "stream": stream.listener(registration.structured)}
            started = time.perf_counter()
            try:
                output = await registration.handler(self, call)
            except Exception as error:
                errors.append(f"{registration.provider}: {type(error).__name__}: {error}")
                await self.emit(EventType.MODEL_USED, {
                    "runtime": self, "type": model_type, "provider": registration.provider, "ok": False,
                    "error": type(error).__name__, "duration": time.perf_counter() - started,
                })
                continue
            result = output if isinstance(output, ModelOutput) else ModelOutput(value=output)
            result.provider, result.structured = registration.provider, registration.structured
            if errors:
                log.warning("model %s: %s; answered by %s", model_type, "; ".join(errors), registration.provider)
            await self._record_usage(model_type, registration.provider, result, params,
                                     time.perf_counter() - started)
            return result
        raise ModelError(f"every model for {model_type} failed: " + "; ".join(errors))

    async def embed(self, text: str, *, room_id: Any = None, entity_id: Any = None) -> list[float]:
        """The TEXT_EMBEDDING vector of one text, computed once: the embedding queue, recall and
        knowledge search all ask for the new message's, so recent vectors are kept by text and
        concurrent asks share one call. Raises ModelError as `use_model` does."""
        if (vector := self._vectors.get(text)) is not None:
            return vector.tolist()
        call = self._embedding.get(text)
        if call is None:
            call = asyncio.ensure_future(self.use_model(ModelType.TEXT_EMBEDDING, {
                "text": text, "room_id": room_id, "entity_id": entity_id}))
            self._embedding[text] = call
            call.add_done_callback(lambda done: self._embedded(text, done))
        return list(await asyncio.shield(call))

    async def embed_many(self, texts: list[str]) -> list[list[float]]:
        """Vectors for a batch (one call for the texts not embedded lately), in the order given."""
        known = {t: self._vectors[t].tolist() for t in texts if t in self._vectors}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            vectors = await self.use_model(ModelType.TEXT_EMBEDDING, {"texts": missing})
            if len(vectors) != len(missing):
                raise ModelError(f"asked for {len(missing)} vectors, got {len(vectors)}")
            for text, vector in zip(missing, vectors, strict=True):
                known[text] = list(vector)
                self._remember_vector(text, known[text])
        return [list(known[t]) for t in texts]

    async def embedding_size(self) -> int:
        """The embedding model's vector size, learnt from any vector it made (one probe at most)."""
        if self._embedding_size is None:
            self._embedding_size = len(await self.embed("size"))
        return self._embedding_size

    def _embedded(self, text: str, call: asyncio.Future[list[float]]) -> None:
        self._embedding.pop(text, None)
        if not call.cancelled() and call.exception() is None:
            self._remember_vector(text, list(call.result()))

    def _remember_vector(self, text: str, vector: list[float]) -> None:
        if vector:
            self._vectors[text] = np.asarray(vector, dtype=np.float32)
            self._embedding_size = len(vector)

    async def _record_usage(
        self, model_type: ModelType, provider: str, result: ModelOutput, params: dict[str, Any], duration: float
    ) -> None:
        room_id, entity_id = params.get("room_id"), params.get("entity_id")
        if result.prompt_tokens or result.completion_tokens:
            self._usage.append(ModelUsage(
                agent_id=self.agent_id, provider=provider, model_type=str(model_type), model=result.model,
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                room_id=room_id, entity_id=entity_id, created_at=int(self.clock() * 1000),
            ))
            if self._usage_task is None or self._usage_task.done():
                self._usage_task = self.run_in_background(self._flush_usage_soon(), "usage")
        await self.emit(EventType.MODEL_USED, {
            "runtime": self, "type": model_type, "provider": provider, "model": result.model, "ok": True,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "duration": duration, "room_id": room_id, "entity_id": entity_id,
        })

    async def _flush_usage_soon(self) -> None:
        await asyncio.sleep(USAGE_FLUSH_SECONDS)
        await self.flush_usage()

    async def flush_usage(self) -> None:
        """Write buffered token usage in one batch: off the reply path, and flushed at stop."""
        while self._usage:
            batch, self._usage = self._usage, []
            await self.store.record_model_usage(batch)

