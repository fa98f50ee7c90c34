"""Accepts messages: store first, then run them — rooms concurrently, each room in order.

elizaOS drops a quarter to a half of a burst in one room because a new message cancels the run
in progress. Here every message waits its turn in its room's queue, so every DM and every
mention gets an answer, and each run sees every message stored before it started.

Each accepted message carries a durable run state in the store (queued → running → done |
failed), so a restart answers what the last process stored but never answered (`resume`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING
from uuid import UUID

from bot.budgets import SendBudget
from bot.lru import LRU
from bot.plugin import HandlerCallback, MessagePreparer
from bot.runtime import SLOW_DOWN, MessageHandler, MessageTicket, RunOutcome, ShuttingDown
from bot.store.base import RunState
from bot.store.budgets import send_budget
from bot.types import Content, EventType, Memory, now_ms

from .embeddings import EmbeddingQueue
from .pipeline import Job, Pipeline
from .run_states import RunStates
from .shared_rooms import SharedRooms

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

MAX_TRACKED_USERS = 10_000
MAX_TRACKED_ROOMS = 10_000
MAX_STORED_BEFORE_RESUME = 100_000


SAME_SECOND = 1000  # ms: the resolution of the coarsest platform timestamps (Telegram)


class RateLimiter:
    """Per-user limit shared by every entry point (API, Telegram, Discord) and, on PostgreSQL, by
    every process of the bot: `per_minute` messages at once, then one every 60/per_minute seconds.

    An over-budget message must be answered with "slow down" at once, so it takes a budget slot
    only if one is free now (`SendBudget.try_take`), never waits for one.
    """

    def __init__(self, per_minute: int, budget: SendBudget, agent_id: UUID, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self.budget = budget
        self.prefix = f"inbound:{agent_id}"
        self.clock = clock
        self._warned: LRU[UUID, float] = LRU(MAX_TRACKED_USERS)

    async def allow(self, entity_id: UUID) -> bool:
        if self.per_minute <= 0:
            return True
        return await self.budget.try_take(f"{self.prefix}:{entity_id}", rate=self.per_minute, per=60,
                                          burst=self.per_minute)

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
        self.run_states = RunStates(runtime.store)
        self.rate_limiter = RateLimiter(runtime.settings.rate_limit_per_minute,
                                        send_budget(runtime.store, max_keys=MAX_TRACKED_USERS), runtime.agent_id)
        self._queues: dict[UUID, deque[tuple[Job, asyncio.Future[RunOutcome]]]] = {}
        self._workers: dict[UUID, asyncio.Task[None]] = {}
        self._running: dict[UUID, tuple[Job, asyncio.Future[RunOutcome] | None]] = {}
        self._latest: LRU[UUID, int] = LRU(MAX_TRACKED_ROOMS)  # newest created_at stored per room
        # What this process stored before `resume` ran: never resumed, it is being answered already.
        self._stored_here: LRU[UUID, bool] | None = LRU(MAX_STORED_BEFORE_RESUME)
        self._slots = asyncio.Semaphore(runtime.settings.max_concurrent_rooms)
        coordinator = runtime.store.coordinator()
        # Several processes on one database: rooms are run where they are claimed (shared_rooms.py).
        self.shared = SharedRooms(self, coordinator) if coordinator is not None else None
        self._accepting = True
        self._receiving = 0  # receives past the accepting check, not yet queued
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queue_depth(self) -> int:
        if self.shared is not None:
            return len(self.shared.local)
        return sum(len(q) for q in self._queues.values())

    @property
    def active_rooms(self) -> int:
        return len(self.shared.workers if self.shared is not None else self._workers)

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def receive(self, message: Memory, callback: HandlerCallback | None,
                      prepare: MessagePreparer | None = None) -> MessageTicket:
        if not self._accepting:
            # Stored as queued all the same: nothing received is lost, the next start answers it.
            if message.entity_id != self.runtime.agent_id:
                await self._store(message)
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
        # Over the limit: stored as done, so that no run (in any process) ever takes it up.
        allowed = await self.rate_limiter.allow(message.entity_id)
        if not allowed:
            state: RunState = "done"
        else:
            state = "preparing" if self.shared is not None and prepare is not None else "queued"
        if not await self._store(message, state):
            if self.shared is not None:  # a retry: if the first copy's process is gone, its room is ours now
                self.shared.wake(message.room_id)
            future.set_result(RunOutcome(status="duplicate"))
            return MessageTicket(message, duplicate=True, outcome=future)
        await self.runtime.emit(EventType.MESSAGE_RECEIVED, {"runtime": self.runtime, "message": message})
        if prepare is None:  # a prepared message is embedded once its text is complete
            self.embeddings.add(message)
        if not allowed:
            future.set_result(await self._slow_down(message, callback if self.runtime.is_addressed(message) else None))
            return MessageTicket(message, duplicate=False, outcome=future)
        if self.shared is not None:
            self.shared.accept(Job(message, callback, prepare), future)
            return MessageTicket(message, duplicate=False, outcome=future)
        queue = self._queues.setdefault(message.room_id, deque())
        self._supersede_tail(queue)
        queue.append((Job(message, callback, prepare), future))
        self._start_worker(message.room_id)
        return MessageTicket(message, duplicate=False, outcome=future)

    def _supersede_tail(self, queue: deque[tuple[Job, asyncio.Future[RunOutcome]]]) -> None:
        """A waiting message not addressed to the bot is covered by the one arriving after it (its
        run sees both), so a room's queue holds its addressed messages and at most one other:
        group chatter cannot pile up while a slow run holds the room."""
        if queue and queue[-1][0].prepare is None and not self.runtime.is_addressed(queue[-1][0].message):
            job, future = queue.pop()
            self.run_states.mark(job.message.id, "done")
            future.set_result(RunOutcome(status="ignored", run_id=job.run_id, error="superseded"))

    async def _store(self, message: Memory, state: RunState = "queued") -> bool:
        """Store the message with its run state (normally "queued") in one statement; False for a duplicate.

        Messages of a room stamped within the same second as the one before (Telegram dates are
        whole seconds) get strictly increasing times in the order they arrive, so a burst keeps
        its order in history and when resumed after a restart. Older stamps stay as they are.
        With several processes the room's newest message may have come through another one, so
        the store says which is newest.
        """
        if self.shared is not None:
            latest = await self.runtime.store.latest_received_time(self.runtime.agent_id, message.room_id)
        else:
            latest = self._latest.get(message.room_id)
        if latest is not None and latest - SAME_SECOND < message.created_at <= latest:
            message.created_at = latest + 1
        self._latest[message.room_id] = message.created_at
        if self._stored_here is not None:
            self._stored_here[message.id] = True
        created = await self.runtime.store.create_memory(message, run_state=state)
        if created:
            self.runtime.history.add(message)
        return created

    def _start_worker(self, room_id: UUID) -> None:
        if room_id not in self._workers:
            self._workers[room_id] = asyncio.create_task(self._drain_room(room_id), name=f"room-{room_id}")

    async def resume(self, window: float) -> None:
        """Answer what an earlier process stored but never answered, oldest first in each room.

        Messages that waited longer than `window` seconds are marked expired instead: an answer
        that late would be out of context. One with a stored reply is done already (the process
        ended between storing the reply and marking it), so no message is answered twice.
        Replies go out through the connector that owns the room; the original callback is gone.
        """
        if self.shared is not None:
            self._stored_here = None
            await self.shared.start()
            return
        store, agent_id = self.runtime.store, self.runtime.agent_id
        cutoff = now_ms() - int(window * 1000)
        expired = await store.expire_unfinished(agent_id, before=cutoff)
        if expired:
            log.info("%d unanswered message(s) older than RESUME_WINDOW (%.0fs) expired, not answered", expired, window)
        unfinished = await store.unfinished_messages(agent_id, since=cutoff)
        # Messages this process stored (connectors run already) are on their way through _accept.
        here, self._stored_here = self._stored_here, None
        pending = [m for m in unfinished if here is None or m.id not in here]
        answered = await self.answered(pending)
        by_room: dict[UUID, list[tuple[Job, asyncio.Future[RunOutcome]]]] = {}
        loop = asyncio.get_running_loop()
        for message in pending:
            if message.id in answered:
                self.run_states.mark(message.id, "done")
                continue
            callback = partial(self.runtime.send_message_to_room, message.room_id)
            by_room.setdefault(message.room_id, []).append((Job(message, callback), loop.create_future()))
        for room_id, jobs in by_room.items():
            # Ahead of anything that arrived since start-up: they are older.
            self._queues.setdefault(room_id, deque()).extendleft(reversed(jobs))
            self._start_worker(room_id)
        if by_room:
            log.info("resuming %d unanswered message(s) in %d room(s)", sum(map(len, by_room.values())), len(by_room))

    async def answered(self, messages: list[Memory]) -> set[UUID]:
        """Ids among `messages` that already have a stored reply from the agent."""
        answered: set[UUID] = set()
        for room_id in {m.room_id for m in messages}:
            oldest = min(m.created_at for m in messages if m.room_id == room_id)
            replies = await self.runtime.store.get_memories(
                agent_id=self.runtime.agent_id, room_id=room_id, entity_id=self.runtime.agent_id,
                after=oldest - 1, count=None)
            answered |= {r.content.in_reply_to for r in replies if r.content.in_reply_to is not None}
        return answered

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
                    self.run_states.mark(job.message.id, "done")
                    future.set_result(RunOutcome(status="ignored", run_id=job.run_id, error="superseded"))
                    continue
                async with self._slots:
                    self.run_states.mark(job.message.id, "running")
                    outcome = await self.run_job(room_id, job, future)
                if not future.done():
                    future.set_result(outcome)
                self.run_states.mark(job.message.id, "failed" if outcome.status == "error" else "done")
        finally:
            self._workers.pop(room_id, None)
            if not queue:
                self._queues.pop(room_id, None)

    async def run_job(self, room_id: UUID, job: Job, future: asyncio.Future[RunOutcome] | None) -> RunOutcome:
        """One message's run, tracked so a shutdown that cannot wait for it knows it is unfinished."""
        self._running[room_id] = (job, future)
        try:
            return await self.pipeline.run(job)
        except Exception as error:  # run() handles its own errors; this is a last guard
            log.exception("pipeline crashed for message %s", job.message.id)
            return RunOutcome(status="error", run_id=job.run_id, error=str(error))
        finally:
            self._running.pop(room_id, None)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let queued and running messages finish (up to `timeout`), flush embeddings.

        A message whose run could not finish in time stays queued (or running) in the store: the
        next start answers it, unless a reply to it was stored already.
        """
        self._accepting = False
        if self.shared is not None:
            await self.shared.stop_sweeping()
        workers = self.shared.workers if self.shared is not None else self._workers

        def busy() -> list[asyncio.Task[None]]:  # runs, and (several processes) voice notes being prepared
            return [*workers.values(), *(self.shared.preparing if self.shared is not None else ())]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()  # messages being stored right now still get their run
                while busy():
                    await asyncio.wait(busy())
        except TimeoutError:
            log.warning("shutdown: %d room(s) still busy after %.0fs", len(workers), timeout)
            unfinished = [pair for queue in self._queues.values() for pair in queue]
            unfinished += list(self._running.values())
            tasks = busy()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for job, future in unfinished:
                if future is not None and not future.done():
                    future.set_result(RunOutcome(status="error", run_id=job.run_id, error="shutdown"))
        await self.run_states.flush()
        if self.shared is not None:
            await self.shared.close()
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + 1)):
                await self.embeddings.close()
        except TimeoutError:
            log.warning("shutdown: embeddings not flushed in time; those messages stay searchable by text")
