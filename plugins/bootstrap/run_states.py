"""Write-behind of messages' run states (queued → running → done | failed), off the reply path.

Awaiting one UPDATE per state change cost each message ~0.3 ms (a quarter of the pipeline's
own time on SQLite), and so did writing each change in the background right away (it queued in
front of the next message's INSERT on the same connection). Here the changes of BATCH_WAIT
seconds go out in one write; a message whose later state is not yet written has only that
later state written. `flush` (at shutdown)
writes what is left. If the process dies before a change is written, the message reads as
queued or running on the next start; `MessageDispatcher.resume` then finds its stored reply
and marks it done instead of answering it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from uuid import UUID

from bot.store.base import RunState, Store

log = logging.getLogger(__name__)

BATCH_WAIT = 0.05  # seconds of state changes gathered into one write


class RunStates:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[UUID, RunState] = {}
        self._task: asyncio.Task[None] | None = None
        self._now = asyncio.Event()  # set by flush: write without waiting for the batch

    def mark(self, memory_id: UUID, state: RunState) -> None:
        self._pending[memory_id] = state
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="run-states")

    async def _run(self) -> None:
        while self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), BATCH_WAIT)
            batch, self._pending = self._pending, {}
            try:
                await self.store.set_run_states(list(batch.items()))
            except Exception as error:  # the messages stay queued/running: the next start checks them
                log.warning("could not record the run state of %d message(s): %s", len(batch), error)

    async def flush(self) -> None:
        """Write what is pending now (at shutdown: no waiting for the batch to fill)."""
        self._now.set()
        if self._task is not None:
            await self._task
