"""Rooms shared by several processes on one PostgreSQL database: one runs a room at a time, in order.

Any process may receive a message (a Telegram webhook behind a load balancer, the API); it is
stored as "queued" first. The database is the room's queue: whichever process holds the room's
claim (see bot/store/coordination.py) runs its oldest unfinished message, whoever received it,
then lets the claim go. So a room's messages are answered in order and once, and the claim is
held only for a run in progress (at most MAX_CONCURRENT_ROOMS per process).

A message received here but run elsewhere waits for that process's announcement; the sweep
(every CLUSTER_SWEEP_SECONDS) finds what no live process is running — a dead process's rooms,
a missed announcement — and takes it over.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING
from uuid import UUID

from bot.delivery import recording_sends
from bot.plugin import HandlerCallback
from bot.runtime import RunOutcome
from bot.store.coordination import PgCoordinator, SoloCoordinator
from bot.types import ChannelType, Memory, now_ms

from .pipeline import Job
from .run_states import RunStates

if TYPE_CHECKING:
    from .dispatcher import MessageDispatcher

log = logging.getLogger(__name__)

FINAL = {"done": "completed", "failed": "error", "expired": "expired"}
PENDING_BATCH = 20  # a run needs the room's oldest messages only (is another waiting behind it?)
PREPARE_STALE = 120  # seconds: a message still "preparing" this long lost its process


class SendingMark:
    """Records "sending" before a run's first reply becomes visible (connectors call it after their
    rate-limit waits, see bot/delivery.py), so a process taking the room over after this one died
    does not answer the message again: a reply may be lost in that instant, never doubled."""

    def __init__(self, run_states: RunStates, message_id: UUID) -> None:
        self.run_states, self.message_id = run_states, message_id
        self.recorded = False
        self.closed = False  # the run is over: a late background send must not reopen its state

    async def record(self) -> None:
        if not self.recorded and not self.closed:
            self.recorded = True
            self.run_states.mark(self.message_id, "sending")
            await self.run_states.flush()


class SharedRooms:
    def __init__(self, dispatcher: MessageDispatcher, coordinator: SoloCoordinator | PgCoordinator) -> None:
        self.dispatcher = dispatcher
        self.runtime = dispatcher.runtime
        self.coordinator = coordinator
        coordinator.on_done = self._announced
        self.window = self.runtime.settings.resume_window
        # Messages received here and not yet run here, with what waits for them.
        self.local: dict[UUID, tuple[Job, asyncio.Future[RunOutcome]]] = {}
        self.workers: dict[UUID, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._preparing: set[asyncio.Task[None]] = set()

    # Receiving ----------------------------------------------------------------------------------
    def accept(self, job: Job, future: asyncio.Future[RunOutcome]) -> None:
        """Queue a stored message: run it here when this process gets the room, else wait for its owner."""
        if job.prepare is not None:
            task = asyncio.create_task(self._prepare_first(job, future), name=f"prepare-{job.message.id}")
            self._preparing.add(task)
            task.add_done_callback(self._preparing.discard)
            return
        self.local[job.message.id] = (job, future)
        self.wake(job.message.room_id)

    async def _prepare_first(self, job: Job, future: asyncio.Future[RunOutcome]) -> None:
        """A message that needs enriching (a voice note's transcript) is prepared by the process that
        has its media, before any process may run it: stored "preparing", it is hidden from the others."""
        job.message = await self.dispatcher.pipeline.prepare(job)
        job.prepare = None
        await self.runtime.store.set_run_states([(job.message.id, "queued")])
        self.accept(job, future)

    def wake(self, room_id: UUID) -> None:
        if room_id not in self.workers:
            self.workers[room_id] = asyncio.create_task(self._work(room_id), name=f"room-{room_id}")

    # Running ------------------------------------------------------------------------------------
    async def _work(self, room_id: UUID) -> None:
        try:
            while True:
                ran = await self._run_next(room_id)
                if ran is None:
                    return  # another process runs the room; it will find our messages
                if not ran and not await self._pending(room_id):
                    # Checked after letting the claim go: a message stored while we held it was
                    # refused the claim by us, so it is visible now and nobody else is on it.
                    return
        except Exception as error:  # the database went away mid-run: the sweep comes back to the room
            log.warning("room %s: could not run its queue (%s); retrying at the next sweep", room_id, error)
        finally:
            self.workers.pop(room_id, None)

    async def _pending(self, room_id: UUID) -> list[Memory]:
        store, agent_id = self.runtime.store, self.runtime.agent_id
        return await store.unfinished_messages(agent_id, since=now_ms() - int(self.window * 1000), room_id=room_id,
                                               limit=PENDING_BATCH)

    async def _run_next(self, room_id: UUID) -> bool | None:
        """Run the room's oldest unfinished message: True when one ran, False when none was left,
        None when another process holds the room."""
        dispatcher = self.dispatcher
        async with dispatcher._slots:
            if not await self._can_answer(room_id) or not await self.coordinator.claim(room_id):
                return None
            try:
                await dispatcher.run_states.flush()  # our last run's end is what the next claimant reads
                pending = await self._pending(room_id)
                if not dispatcher.accepting and pending and pending[0].id not in self.local:
                    return None  # shutting down: only our own messages, and only in their turn
                answered = await dispatcher.answered([m for m in pending if m.id not in self.local])
                for message in [m for m in pending if m.id in answered]:
                    await self._finish(message.id, "done")
                pending = [m for m in pending if m.id not in answered]
                if not pending:
                    return False
                message = pending[0]
                job, future = self.local.pop(message.id, None) or (await self._adopt(message), None)
                if len(pending) > 1 and not self.runtime.is_addressed(message):
                    # A later message is waiting: its run sees this one, so one decision covers both.
                    outcome = RunOutcome(status="ignored", run_id=job.run_id, error="superseded")
                else:
                    dispatcher.run_states.mark(message.id, "running")
                    sending = SendingMark(dispatcher.run_states, message.id)
                    with recording_sends(sending.record):
                        outcome = await dispatcher.run_job(room_id, job, future)
                    sending.closed = True
                if future is not None and not future.done():
                    future.set_result(outcome)
                await self._finish(message.id, "failed" if outcome.status == "error" else "done")
                return True
            finally:
                await self.coordinator.release(room_id)

    async def _can_answer(self, room_id: UUID) -> bool:
        """An API room can be answered anywhere (the receiver reads the stored reply back); a platform
        room only where its connector runs (a process may run Telegram but not Discord)."""
        room = await self.runtime.get_room(room_id)
        return room is not None and (room.type == ChannelType.API or self.runtime.connector_for(room.source) is not None)

    async def _adopt(self, message: Memory) -> Job:
        """A message another process received: replies go out through our connector for its room
        (or are only stored, for the API, where the receiving process reads them back)."""
        room = await self.runtime.get_room(message.room_id)
        callback: HandlerCallback | None = None
        if room is not None and room.type != ChannelType.API:
            callback = partial(self.runtime.send_message_to_room, message.room_id)
        return Job(message, callback)

    async def _finish(self, message_id: UUID, state: str) -> None:
        self.dispatcher.run_states.mark(message_id, state)  # type: ignore[arg-type]
        await self.dispatcher.run_states.flush()
        await self.coordinator.announce(message_id, state)

    # Messages run elsewhere -----------------------------------------------------------------------
    def _announced(self, message_id: UUID, state: str) -> None:
        waiting = self.local.get(message_id)
        if waiting is None or waiting[1].done() or state not in FINAL:
            return
        # Ours, run by another process: it is done; no run of ours may start it again.
        del self.local[message_id]
        waiting[1].set_result(RunOutcome(status=FINAL[state], run_id=waiting[0].run_id))

    async def _settle_waiting(self, cutoff: int) -> None:
        """Announcements can be missed (a dropped connection): read the states instead. A message
        left "sending" by a process that died stays so; past RESUME_WINDOW nobody will finish it."""
        states = await self.runtime.store.run_states_of(list(self.local))
        for message_id, state in states.items():
            if state == "sending" and self.local[message_id][0].message.created_at < cutoff:
                state = "done"
            if state in FINAL:
                self._announced(message_id, state)

    # The sweep ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Answer or expire what no process is running now, and keep doing so."""
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="room-sweep")

    async def _sweep_forever(self) -> None:
        interval = self.runtime.settings.cluster_sweep_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception as error:  # the database is away: the next sweep tries again
                log.warning("could not look for rooms to take over: %s", error)

    async def sweep(self) -> None:
        store, agent_id = self.runtime.store, self.runtime.agent_id
        now = now_ms()
        await store.requeue_preparing(agent_id, before=now - PREPARE_STALE * 1000)
        cutoff = now - int(self.window * 1000)
        expired = await store.expire_unfinished(agent_id, before=cutoff)
        if expired:
            log.info("%d unanswered message(s) older than RESUME_WINDOW (%.0fs) expired, not answered",
                     expired, self.window)
        await self._settle_waiting(cutoff)
        for room_id in await store.rooms_with_unfinished(agent_id, since=cutoff):
            self.wake(room_id)

    async def stop_sweeping(self) -> None:
        """Shutting down: take over nothing more (what is ours and claimable still runs)."""
        await asyncio.gather(*self._preparing, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def close(self) -> None:
        """What another process runs for us is its to finish; our claims end with the connection."""
        for job, future in self.local.values():
            if not future.done():
                future.set_result(RunOutcome(status="error", run_id=job.run_id, error="shutdown"))
        self.local.clear()
        await self.coordinator.close()
