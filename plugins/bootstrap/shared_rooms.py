"""Rooms shared by several processes on one PostgreSQL database: one runs a room at a time, in order.

Any process may receive a message (a Telegram webhook behind a load balancer, the API); it is
stored as "queued" first. The database is the room's queue: whichever process holds the room's
claim (see bot/store/coordination.py) runs its oldest unfinished message, whoever received it,
then lets the claim go. So a room's messages are answered in order and once, and the claim is
held only for a run in progress (at most MAX_CONCURRENT_ROOMS per process).

A message's run state only moves forward (queued → running → sending → done), each step one
conditional write, and a reply goes out only after its run moved the message to "sending" (see
bot/delivery.py): two processes that both believe they hold a room (one lost its claim with its
connection) never both answer.

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
from bot.store.base import RunState, Store
from bot.store.coordination import PgCoordinator
from bot.types import ChannelType, Memory, now_ms

from .pipeline import Job

if TYPE_CHECKING:
    from .dispatcher import MessageDispatcher

log = logging.getLogger(__name__)

FINAL = {"done": "completed", "failed": "error", "expired": "expired"}
PENDING_BATCH = 20  # a run needs the room's oldest messages only (is another waiting behind it?)
PREPARE_STALE = 120  # seconds: a message still "preparing" this long lost its process


UNSENT = ("queued", "running")
OPEN = (*UNSENT, "sending")


class Fenced(Exception):
    """Another process moved this message on (its claim outlived ours): our reply must not go out."""


class SendingMark:
    """Moves the message to "sending" right before its first reply becomes visible (connectors call
    it after their rate-limit waits, see bot/delivery.py), in one conditional write: of two processes
    that both think they run the message (one lost its claim with its connection), only the first
    to get here sends; the other's send is refused. A process taking the room over after this one
    died does not run the message again: a reply may be lost in that instant, never doubled."""

    def __init__(self, store: Store, message_id: UUID) -> None:
        self.store, self.message_id = store, message_id
        self.recorded = False
        self.fenced = False
        self.closed = False  # the run is over: a late background send must not reopen its state

    async def record(self) -> None:
        if self.closed or self.fenced:
            raise Fenced(f"message {self.message_id} is no longer this run's to answer")
        if not self.recorded:
            if not await self.store.advance_run_state(self.message_id, "sending", from_states=UNSENT):
                self.fenced = True
                raise Fenced(f"message {self.message_id} is no longer this run's to answer")
            self.recorded = True


class SharedRooms:
    def __init__(self, dispatcher: MessageDispatcher, coordinator: PgCoordinator) -> None:
        self.dispatcher = dispatcher
        self.runtime = dispatcher.runtime
        self.coordinator = coordinator  # the store's, shared with the process's other characters
        coordinator.add_listener(self._announced)
        self.window = self.runtime.settings.resume_window
        # Messages received here and not yet run here, with what waits for them.
        self.local: dict[UUID, tuple[Job, asyncio.Future[RunOutcome]]] = {}
        self.workers: dict[UUID, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.preparing: set[asyncio.Task[None]] = set()

    # Receiving ----------------------------------------------------------------------------------
    def accept(self, job: Job, future: asyncio.Future[RunOutcome]) -> None:
        """Queue a stored message: run it here when this process gets the room, else wait for its owner."""
        if job.prepare is not None:
            task = asyncio.create_task(self._prepare_first(job, future), name=f"prepare-{job.message.id}")
            self.preparing.add(task)
            task.add_done_callback(self.preparing.discard)
            return
        self.local[job.message.id] = (job, future)
        self.wake(job.message.room_id)

    async def _prepare_first(self, job: Job, future: asyncio.Future[RunOutcome]) -> None:
        """A message that needs enriching (a voice note's transcript) is prepared by the process that
        has its media, before any process may run it: stored "preparing", it is hidden from the others."""
        job.message = await self.dispatcher.pipeline.prepare(job)
        job.prepare = None
        # Conditional: after PREPARE_STALE another process requeued it (and may have answered it);
        # which process runs it is then decided by who moves it to "running" first.
        await self.runtime.store.advance_run_state(job.message.id, "queued", from_states=("preparing",))
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

    async def _pending(self, room_id: UUID) -> list[tuple[Memory, RunState]]:
        """The room's queue: its oldest messages not yet answered, those still being prepared included."""
        return await self.runtime.store.room_queue(self.runtime.agent_id, room_id,
                                                   since=now_ms() - int(self.window * 1000), limit=PENDING_BATCH)

    async def _run_next(self, room_id: UUID) -> bool | None:
        """Run the room's oldest unfinished message: True when one ran, False when none was left,
        None when another process holds the room (or its oldest message is still being prepared)."""
        dispatcher, store = self.dispatcher, self.runtime.store
        async with dispatcher._slots:
            if not await self._can_answer(room_id) or not await self.coordinator.claim(room_id, self):
                return None
            try:
                queue = await self._pending(room_id)
                if queue and queue[0][1] == "preparing":
                    return None  # its receiver is transcribing it and wakes the room when it is done
                pending = [message for message, _ in queue]
                if pending and not dispatcher.accepting and pending[0].id not in self.local:
                    return None  # shutting down: only our own messages, and only in their turn
                answered = await dispatcher.answered(pending)
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
                elif not await store.advance_run_state(message.id, "running", from_states=UNSENT):
                    return True  # another process got to it first
                else:
                    sending = SendingMark(store, message.id)
                    with recording_sends(sending.record):
                        outcome = await dispatcher.run_job(room_id, job, future)
                    sending.closed = True
                    if sending.fenced:
                        return True  # its state is the other run's to set
                if future is not None and not future.done():
                    future.set_result(outcome)
                await self._finish(message.id, "failed" if outcome.status == "error" else "done")
                return True
            finally:
                await self.coordinator.release(room_id, self)

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

    async def _finish(self, message_id: UUID, state: RunState) -> None:
        if await self.runtime.store.advance_run_state(message_id, state, from_states=OPEN):
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
        left running or sending by a process that died stays so: past RESUME_WINDOW nobody will
        finish it, and its waiter is let go."""
        states = await self.runtime.store.run_states_of(list(self.local))
        for message_id, (job, _) in list(self.local.items()):
            state = states.get(message_id)
            if state not in FINAL and job.message.created_at < cutoff:
                state = "expired"
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
        # Only waiting ones: a run in progress in some process (a long backlog) still answers.
        expired = await store.expire_unfinished(agent_id, before=cutoff, running=False)
        if expired:
            log.info("%d unanswered message(s) older than RESUME_WINDOW (%.0fs) expired, not answered",
                     expired, self.window)
        await self._settle_waiting(cutoff)
        for room_id in await store.rooms_with_unfinished(agent_id, since=cutoff):
            self.wake(room_id)

    async def stop_sweeping(self) -> None:
        """Shutting down: take over nothing more (what is ours and claimable still runs)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def close(self) -> None:
        """What another process runs for us is its to finish. The coordinator is the store's (the other
        characters keep using it): only this character's claims go, so a character stopped at run
        time frees its rooms at once."""
        self.coordinator.remove_listener(self._announced)
        for job, future in self.local.values():
            if not future.done():
                future.set_result(RunOutcome(status="error", run_id=job.run_id, error="shutdown"))
        self.local.clear()
        await self.coordinator.release_all(self)
