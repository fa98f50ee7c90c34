"""Background, batched embedding of stored memories: never on the reply's critical path; and the
start-up check that says when stored vectors have another size than the embedding model's."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bot.plugin import Service
from bot.runtime import ModelError
from bot.types import Memory, MemoryType, ModelType

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

BATCH_SIZE = 32
BATCH_WAIT = 0.5  # seconds to gather a batch before embedding it
REEMBEDDED = (MemoryType.MESSAGE, MemoryType.FACT)  # fragments are the knowledge indexer's


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
            vectors = await self.runtime.embed_many([m.content.text for m in batch])
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


class VectorSizeCheck(Service):
    """One line at start when stored vectors have another size than the embedding model makes
    (the model was changed, e.g. an OpenAI key was added after offline embeddings).

    Nothing is mixed up: the store keeps one vector index per size, so those vectors are simply
    not found by meaning. With a model that runs in this process, messages and facts are embedded
    again in the background (it costs nothing); with an API model they keep their old vectors
    (re-embedding a history would cost an API bill). The knowledge indexer re-embeds its
    fragments either way. Learning the model's size costs at most one embedding of one word
    (shared with the indexer), and only when vectors are stored.
    """

    service_type = "vector-size-check"

    async def start(self) -> None:
        self.task = self.runtime.run_in_background(self.check(), "vector-size-check")

    async def stop(self) -> None:
        self.task.cancel()  # and waited for: no re-embedding write may reach a store closing after us
        await asyncio.gather(self.task, return_exceptions=True)

    async def check(self) -> None:
        runtime = self.runtime
        if not runtime.has_model(ModelType.TEXT_EMBEDDING):
            return
        sizes = await runtime.store.count_embeddings(runtime.agent_id)
        if not sizes:
            return
        try:
            size = await runtime.embedding_size()
        except ModelError as error:  # the queue will say so when it embeds; nothing to compare with
            log.debug("vector sizes not checked: %s", error)
            return
        other = {dim: count for dim, count in sorted(sizes.items()) if dim != size}
        if not other:
            return
        again = runtime.runs_in_process(ModelType.TEXT_EMBEDDING)
        log.warning(
            "%d stored memories have embeddings of another size (%s) than the embedding model's %d: %s; "
            "knowledge fragments are re-embedded by the knowledge indexer", sum(other.values()),
            ", ".join(f"{count} of size {dim}" for dim, count in other.items()), size,
            "messages and facts are embedded again in the background" if again else
            "search by meaning leaves them out (messages and facts are not re-embedded)",
        )
        if again:
            await self.reembed(size)

    async def reembed(self, size: int) -> int:
        """Embed messages and facts again with the current model, a batch at a time, oldest first
        (a page past the last, so each is looked at once); how many."""
        runtime, done, last = self.runtime, 0, None
        while batch := await runtime.store.embedded_in_other_size(runtime.agent_id, size, types=REEMBEDDED,
                                                                  count=BATCH_SIZE, after=last):
            last = batch[-1]
            embeddable = [m for m in batch if m.content.text.strip()]
            if not embeddable:
                continue
            try:  # not through runtime.embed_many: a history would push recent vectors out of its cache
                vectors = await runtime.use_model(ModelType.TEXT_EMBEDDING, {"texts": [m.content.text
                                                                                       for m in embeddable]})
            except ModelError as error:
                log.warning("re-embedding messages and facts stopped (they keep their old vectors): %s", error)
                break
            await runtime.store.set_embeddings([(m.id, v) for m, v in zip(embeddable, vectors, strict=True)])
            done += len(embeddable)
        if done:
            log.debug("%d messages and facts embedded again with the %d-dimension model", done, size)
        return done
