"""Accepts messages: store first, then run them — rooms concurrently, each room in order.

elizaOS drops a quarter to a half of a burst in one room because a new message cancels the run
in progress. Here every message waits its turn in its room's queue, so every DM and every
mention gets an answer, and each run sees every message stored before it started.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING
from uuid import UUID

from bot.lru import LRU
from bot.plugin import HandlerCallback, MessagePreparer
from bot.runtime import SLOW_DOWN, MessageHandler, MessageTicket, RunOutcome, ShuttingDown
from bot.types import Content, EventType, Memory

from .embeddings import EmbeddingQueue
from .pipeline import Job, Pipeline

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

MAX_TRACKED_USERS = 10_000


class RateLimiter:
    """Per-user token bucket shared by every entry point (API, Telegram, Discord).

    aiolimiter only offers a waiting acquire; here an over-budget message must be answered with
    "slow down" at once, so the check is a non-blocking bucket.
    """

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: OrderedDict[UUID, tuple[float, float]] = OrderedDict()
        self._warned: LRU[UUID, float] = LRU(MAX_TRACKED_USERS)

    def allow(self, entity_id: UUID) -> bool:
        if self.per_minute <= 0:
            return True
        now = self.clock()
        tokens, last = self._buckets.pop(entity_id, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60)
        allowed = tokens >= 1
        self._buckets[entity_id] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > MAX_TRACKED_USERS:
            self._buckets.popitem(last=False)
        return allowed

    def should_warn(self, entity_id: UUID) -> bool:
        """Say "slow down" once a minute at most, so the warning itself is not a flood."""
        now = self.clock()
        if now - self._warned.get(entity_id, -1e9) < 60:
            return False
        self._warned[entity_id] = now
        return True


class MessageDispatcher(MessageHandler):
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.embeddings = EmbeddingQueue(runtime)
        self.pipeline = Pipeline(runtime, self.embeddings)
        self.rate_limiter = RateLimiter(runtime.settings.rate_limit_per_minute)
        self._queues: dict[UUID, deque[tuple[Job, asyncio.Future[RunOutcome]]]] = {}
        self._workers: dict[UUID, asyncio.Task[None]] = {}
        self._running: dict[UUID, tuple[Job, asyncio.Future[RunOutcome]]] = {}
        self._slots = asyncio.Semaphore(runtime.settings.max_concurrent_rooms)
        self._accepting = True
        self._receiving = 0  # receives past the accepting check, not yet queued
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queue_depth(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def active_rooms(self) -> int:
        return len(self._workers)

    async def receive(self, message: Memory, callback: HandlerCallback | None,
                      prepare: MessagePreparer | None = None) -> MessageTicket:
        if not self._accepting:
            # Stored all the same, so nothing received is lost; it is not answered in this process.
            if message.entity_id != self.runtime.agent_id:
                await self.runtime.create_memory(message)
            raise ShuttingDown("shutting down: message stored, not answered")
        self._receiving += 1
        self._idle.clear()
        try:
            return await self._accept(message, callback, prepare)
        finally:
            self._receiving -= 1
            if not self._receiving:
                self._idle.set()

    async def _accept(self, message: Memory, callback: HandlerCallback | None,
                      prepare: MessagePreparer | None) -> MessageTicket:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RunOutcome] = loop.create_future()
        if message.entity_id == self.runtime.agent_id:
            future.set_result(RunOutcome(status="ignored", error="own message"))
            return MessageTicket(message, duplicate=False, outcome=future)
        if not await self.runtime.create_memory(message):
            future.set_result(RunOutcome(status="duplicate"))
            return MessageTicket(message, duplicate=True, outcome=future)
        await self.runtime.emit(EventType.MESSAGE_RECEIVED, {"runtime": self.runtime, "message": message})
        if prepare is None:  # a prepared message is embedded once its text is complete
            self.embeddings.add(message)
        if not self.rate_limiter.allow(message.entity_id):
            future.set_result(await self._slow_down(message, callback if self.runtime.is_addressed(message) else None))
            return MessageTicket(message, duplicate=False, outcome=future)
        self._queues.setdefault(message.room_id, deque()).append((Job(message, callback, prepare), future))
        if message.room_id not in self._workers:
            self._workers[message.room_id] = asyncio.create_task(
                self._drain_room(message.room_id), name=f"room-{message.room_id}"
            )
        return MessageTicket(message, duplicate=False, outcome=future)

    async def _slow_down(self, message: Memory, callback: HandlerCallback | None) -> RunOutcome:
        """Over the limit: say "slow down" (only to someone talking to the bot), skip the run."""
        if callback is not None and self.rate_limiter.should_warn(message.entity_id):
            try:
                await callback(Content(text=SLOW_DOWN, in_reply_to=message.id, actions=["RATE_LIMITED"]))
            except Exception:
                log.exception("could not send the rate-limit notice")
        return RunOutcome(status="rate_limited")

    async def _drain_room(self, room_id: UUID) -> None:
        queue = self._queues[room_id]
        try:
            while queue:
                job, future = queue.popleft()
                if queue and not self.runtime.is_addressed(job.message):
                    # A later message is waiting: its run sees this one, so one decision covers both.
                    if job.prepare is not None:
                        job.message = await self.pipeline.prepare(job)  # so that run sees its transcript
                    future.set_result(RunOutcome(status="ignored", run_id=job.run_id, error="superseded"))
                    continue
                async with self._slots:
                    self._running[room_id] = (job, future)
                    try:
                        outcome = await self.pipeline.run(job)
                    except Exception as error:  # run() handles its own errors; this is a last guard
                        log.exception("pipeline crashed for message %s", job.message.id)
                        outcome = RunOutcome(status="error", run_id=job.run_id, error=str(error))
                    finally:
                        self._running.pop(room_id, None)
                if not future.done():
                    future.set_result(outcome)
        finally:
            self._workers.pop(room_id, None)
            if not queue:
                self._queues.pop(room_id, None)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let queued and running messages finish (up to `timeout`), flush embeddings.

        A message whose run could not finish in time gets a stored error in its place, so every
        accepted message ends with a stored reply or a stored error.
        """
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()  # messages being stored right now still get their run
                while self._workers:
                    await asyncio.wait(list(self._workers.values()))
        except TimeoutError:
            log.warning("shutdown: %d room(s) still busy after %.0fs", len(self._workers), timeout)
            unfinished = [pair for queue in self._queues.values() for pair in queue]
            unfinished += list(self._running.values())
            for task in list(self._workers.values()):
                task.cancel()
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
            for job, future in unfinished:
                await self._store_shutdown_error(job)
                if not future.done():
                    future.set_result(RunOutcome(status="error", run_id=job.run_id, error="shutdown"))
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + 1)):
                await self.embeddings.close()
        except TimeoutError:
            log.warning("shutdown: embeddings not flushed in time; those messages stay searchable by text")

    async def _store_shutdown_error(self, job: Job) -> None:
        message = job.message
        await self.runtime.create_memory(Memory(
            entity_id=self.runtime.agent_id, agent_id=self.runtime.agent_id, room_id=message.room_id,
            world_id=message.world_id, content=Content(
                text="", actions=["ERROR"], in_reply_to=message.id, source=message.content.source,
                metadata={"error": "shutdown before the reply was ready", "run_id": str(job.run_id)}),
        ))
