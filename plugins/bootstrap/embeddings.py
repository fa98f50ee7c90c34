"""Background, batched embedding of stored memories: never on the reply's critical path."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bot.types import Memory, ModelType

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

BATCH_SIZE = 32
BATCH_WAIT = 0.5  # seconds to gather a batch before embedding it


class EmbeddingQueue:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self._pending: list[Memory] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, memory: Memory) -> None:
        if not memory.content.text.strip() or not self.runtime.has_model(ModelType.TEXT_EMBEDDING):
            return
        self._pending.append(memory)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="embeddings")
        if len(self._pending) >= BATCH_SIZE:
            self._wakeup.set()

    async def _run(self) -> None:
        while self._pending:
            if len(self._pending) < BATCH_SIZE:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), BATCH_WAIT)
                except TimeoutError:
                    pass
            self._wakeup.clear()
            await self._embed_next_batch()

    async def _embed_next_batch(self) -> None:
        batch, self._pending = self._pending[:BATCH_SIZE], self._pending[BATCH_SIZE:]
        try:
            vectors = await self.runtime.use_model(ModelType.TEXT_EMBEDDING, {"texts": [m.content.text for m in batch]})
            await self.runtime.store.set_embeddings([(m.id, v) for m, v in zip(batch, vectors, strict=True)])
        except Exception as error:
            log.warning("embedding %d memories failed (they stay searchable by text): %s", len(batch), error)

    async def flush(self) -> None:
        while self._pending:
            await self._embed_next_batch()

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
