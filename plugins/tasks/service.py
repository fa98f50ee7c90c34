"""TaskService: fires scheduled messages from the `tasks` table, once each, also across restarts.

The table is the only truth (nothing is held in memory between passes), so tasks survive a restart
and several processes sharing one PostgreSQL see each other's tasks. A pass reads the tasks, fires
the due ones and sleeps until the next one is due, at most POLL_SECONDS (for tasks another process
created) and less when `wake()` is called (a task was created here).

Firing claims the row first (`store.claim_task`, a compare-and-swap on `updated_at`): a one-shot
task is marked "sending" before it is sent and deleted after; a repeating one moves to its next
run in the same claim. So of two processes that see the same due task, one sends it; and a process
that dies mid-send never sends twice (the stale mark is reported at the next start instead).

Time comes from `runtime.clock`. A clock with a `subscribe(callback)` method is a driven (fake)
clock: the service wakes when it moves instead of sleeping, so tests advance hours in no time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from bot.lru import LRU
from bot.plugin import Service
from bot.settings import LatePolicy
from bot.types import Content, Memory, Task

from .schedule import Repeat, duration_text, local_text, zone

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

TASK_NAME = "scheduled_message"
POLL_SECONDS = 30.0  # bound on how long a task created by another process waits to be seen
NOT_READY_SECONDS = 1.0  # first retry while a due task's connector is not connected yet (doubling)
SEND_TIMEOUT = 30.0
MAX_ATTEMPTS = 3  # a one-shot message that failed this often is given up (one error line)
RETRY_SECONDS = 60.0  # times the attempt number
STALE_SENDING_SECONDS = 300.0  # a "sending" mark this old was left by a process that stopped mid-send
STOP_WAIT_SECONDS = 10.0
ZONE_KEY = "timezone:"  # cache key prefix of a user's remembered time zone


class TaskService(Service):
    service_type = "tasks"

    def __init__(self, runtime: AgentRuntime) -> None:
        super().__init__(runtime)
        self._wake = asyncio.Event()
        self._wakes = 0
        self._idle_after = -1  # the wake count the loop had seen when it last went idle
        self._idle = asyncio.Condition()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._blocked: set[uuid.UUID] = set()  # due tasks waiting for their room's connector
        self._blocked_now: set[uuid.UUID] = set()
        self._not_ready_delay = NOT_READY_SECONDS
        self._driven = callable(getattr(runtime.clock, "subscribe", None))
        self._broken: set[uuid.UUID] = set()
        self._zones: LRU[uuid.UUID, str | None] = LRU(10_000)

    # Lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._driven:
            self.runtime.clock.subscribe(self.wake)
        self._loop = self.runtime.run_in_background(self._run(), "tasks")

    async def stop(self) -> None:
        """Let a pass in flight finish (a claimed message is sent, not cut off), then end the loop."""
        self._stopping = True
        self.wake()
        if self._loop is not None:
            await asyncio.wait({self._loop}, timeout=STOP_WAIT_SECONDS)
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    def wake(self) -> None:
        """Look at the tasks again now (a task was created, or a driven clock moved)."""
        self._wakes += 1
        self._wake.set()

    async def settled(self) -> None:
        """Wait until the loop has made a whole pass after the latest `wake()` and is idle: tests
        prove that nothing was sent by this, never by sleeping."""
        async with self._idle:
            await self._idle.wait_for(lambda: self._idle_after >= self._wakes)

    async def _run(self) -> None:
        while not self._stopping:
            seen = self._wakes
            self._wake.clear()
            try:
                next_due = await self.run_due()
            except Exception as error:  # a database outage: one line per pass, retried at the poll
                log.warning("scheduled tasks: pass failed (%s: %s); retrying", type(error).__name__, error)
                next_due = None
            delay = POLL_SECONDS if next_due is None else min(max(next_due - self.runtime.clock(), 0), POLL_SECONDS)
            async with self._idle:
                self._idle_after = seen
                self._idle.notify_all()
            await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        if not self._blocked:
            self._not_ready_delay = NOT_READY_SECONDS
            if self._driven:  # only the clock moving (or a new task) can make something due
                await self._wake.wait()
                return
        else:  # a connector still starting retries soon; one that never comes backs off to the poll
            seconds = min(seconds, self._not_ready_delay)
            self._not_ready_delay = min(self._not_ready_delay * 2, POLL_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # Passes -----------------------------------------------------------------------------------
    async def tasks(self) -> list[Task]:
        return await self.runtime.store.get_tasks(agent_id=self.runtime.agent_id, name=TASK_NAME)

    async def run_due(self) -> float | None:
        """Fire every due task; return when the next one is due (epoch seconds), None if none is."""
        next_due: float | None = None
        self._blocked_now = set()
        for task in await self.tasks():
            if self._stopping:
                break
            meta = task.metadata
            now = self.runtime.clock()
            if meta.get("state") == "sending":
                if now - float(meta.get("claimed_at", now)) > STALE_SENDING_SECONDS:
                    log.warning("scheduled message %s may not have been delivered: the process stopped "
                                "while sending it; not sending it twice", task.id)
                    await self.runtime.store.delete_task(task.id)
                continue
            due = float(meta["next_run"])
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            try:
                again = await self._fire(task, now)
            except Exception as error:  # one bad row must not stop the others; said once per row
                if task.id not in self._broken:
                    self._broken.add(task.id)
                    log.error("scheduled message %s cannot be fired: %s: %s", task.id, type(error).__name__, error)
                continue
            if again is not None:
                next_due = again if next_due is None else min(next_due, again)
        self._blocked = self._blocked_now
        return next_due

    async def _fire(self, task: Task, now: float) -> float | None:
        """Claim, send, settle one due task; returns its next run when it stays scheduled."""
        runtime, meta = self.runtime, dict(task.metadata)
        room = await runtime.get_room(task.room_id) if task.room_id else None
        if room is None:
            log.warning("scheduled message %s: its room is gone; deleting it", task.id)
            await runtime.store.delete_task(task.id)
            return None
        connector = runtime.connector_for(room.source)
        if connector is None or not connector.connected:  # starting, reconnecting or stopping: not claimed
            if task.id not in self._blocked:
                log.info("scheduled message %s waits for the %s connector", task.id, room.source)
            self._blocked_now.add(task.id)
            return None
        tz = zone(meta.get("timezone") or "UTC")
        repeat = Repeat.from_dict(meta["repeat"]) if meta.get("repeat") else None
        late = now - float(meta["next_run"])
        too_late = late > runtime.settings.task_grace_seconds
        if repeat is not None:
            claimed = {**meta, "next_run": repeat.next_after(now, tz), "attempts": 0}
        else:
            claimed = {**meta, "state": "sending", "claimed_at": now}
        mine = task.model_copy(update={"metadata": claimed, "updated_at": max(int(now * 1000), task.updated_at + 1)})
        if not await runtime.store.claim_task(mine, task.updated_at):
            return None  # another process fired it
        if too_late and runtime.settings.task_late_policy is LatePolicy.DROP:
            log.info("scheduled message %s was due %s ago (more than TASK_GRACE_SECONDS); dropped",
                     task.id, duration_text(late))
            if repeat is None:
                await runtime.store.delete_task(task.id)
            return claimed["next_run"] if repeat else None
        text = await self._reminder_text(task, tz, late if too_late else 0.0)
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await runtime.send_message_to_room(room.id, Content(text=text, source=room.source,
                                                                    actions=["SCHEDULED_MESSAGE"]))
        except Exception as error:
            return await self._failed(mine, repeat, tz, error)
        await runtime.create_memory(Memory(
            entity_id=runtime.agent_id, agent_id=runtime.agent_id, room_id=room.id, world_id=room.world_id,
            content=Content(text=text, source=room.source, actions=["SCHEDULED_MESSAGE"]),
            metadata={"task_id": str(task.id)},
        ))
        if repeat is None:
            await runtime.store.delete_task(task.id)
            return None
        return claimed["next_run"]

    async def _reminder_text(self, task: Task, tz: ZoneInfo, late: float) -> str:
        names = await self.runtime.entity_names({task.entity_id} if task.entity_id else set())
        who = f" for {names[task.entity_id]}" if task.entity_id in names else ""
        body = task.metadata["text"]
        if late:
            due = local_text(float(task.metadata["next_run"]), tz)
            return f"Reminder{who} (due {due}, {duration_text(late)} late): {body}"
        return f"Reminder{who}: {body}"

    async def _failed(self, task: Task, repeat: Repeat | None, tz: ZoneInfo, error: Exception) -> float | None:
        """A failed send is one log line and, for a one-shot message, a bounded retry later."""
        reason = f"{type(error).__name__}: {error}"
        if repeat is not None:
            log.warning("scheduled message %s could not be sent (%s); next run %s", task.id, reason,
                        local_text(float(task.metadata["next_run"]), tz))
            return float(task.metadata["next_run"])
        attempts = int(task.metadata.get("attempts", 0)) + 1
        if attempts >= MAX_ATTEMPTS:
            log.error("scheduled message %s could not be sent after %d attempts (%s); giving up",
                      task.id, attempts, reason)
            await self.runtime.store.delete_task(task.id)
            return None
        now = self.runtime.clock()
        retry = now + RETRY_SECONDS * attempts
        meta = {**task.metadata, "state": "scheduled", "next_run": retry, "attempts": attempts}
        meta.pop("claimed_at", None)
        back = task.model_copy(update={"metadata": meta, "updated_at": max(int(now * 1000), task.updated_at + 1)})
        await self.runtime.store.claim_task(back, task.updated_at)
        log.warning("scheduled message %s could not be sent (%s); retry %d of %d in %s", task.id, reason,
                    attempts, MAX_ATTEMPTS - 1, duration_text(retry - now))
        return retry

    # Creating tasks and time zones -------------------------------------------------------------
    async def create(self, *, text: str, first: float, repeat: Repeat | None, tz_name: str, room_id: uuid.UUID,
                     world_id: uuid.UUID | None, entity_id: uuid.UUID) -> Task:
        now = self.runtime.clock()
        task = Task(
            agent_id=self.runtime.agent_id, name=TASK_NAME, description=text[:200], room_id=room_id,
            world_id=world_id, entity_id=entity_id, tags=["scheduled"], updated_at=int(now * 1000),
            metadata={"text": text, "next_run": first, "repeat": repeat.to_dict() if repeat else None,
                      "timezone": tz_name, "state": "scheduled", "attempts": 0, "created_at": now},
        )
        await self.runtime.store.create_task(task)
        self.wake()
        return task

    async def zone_for(self, entity_id: uuid.UUID) -> tuple[str, bool]:
        """The zone to read this user's times in, and whether they gave it (else TIMEZONE)."""
        remembered = await self.user_zone(entity_id)
        return (remembered, True) if remembered else (self.runtime.settings.timezone, False)

    async def user_zone(self, entity_id: uuid.UUID) -> str | None:
        """The zone this user gave (remembered in the cache table), or None if they never did."""
        if entity_id not in self._zones:
            self._zones[entity_id] = await self.runtime.store.get_cache(self.runtime.agent_id,
                                                                        f"{ZONE_KEY}{entity_id}")
        return self._zones[entity_id]

    async def set_user_zone(self, entity_id: uuid.UUID, name: str) -> None:
        await self.runtime.store.set_cache(self.runtime.agent_id, f"{ZONE_KEY}{entity_id}", name)
        self._zones[entity_id] = name
