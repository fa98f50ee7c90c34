"""Which process runs a room, when several share one PostgreSQL database.

A room is claimed with a PostgreSQL session-level advisory lock, held on one connection this
process keeps for coordination. PostgreSQL releases a session's locks when its connection ends,
so a process that dies (even by kill -9: the kernel closes its socket) frees its rooms at once;
no lease row has to time out. Finished runs are announced with NOTIFY, so the process that
received a message learns that another one answered it.

With SQLite there is one process and nothing to coordinate (`SqlStore.coordinator` is None).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CHANNEL = "parley_runs"
STATEMENT_TIMEOUT = 5.0  # seconds; each statement here is a lock, an unlock or a NOTIFY
Announcement = Callable[[uuid.UUID, str], None]  # (message id, final run state)


def lock_key(room_id: uuid.UUID) -> int:
    """A room's advisory lock key: its id's first 64 bits (room ids are per agent already)."""
    return int.from_bytes(room_id.bytes[:8], "big", signed=True)


class PgCoordinator:
    """Room claims and run announcements over one dedicated asyncpg connection.

    Calls on the connection are serialised (asyncpg runs one statement at a time per connection);
    each is a sub-millisecond statement, and claims are only taken for the run in progress.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._conn: Any = None  # the SQLAlchemy connection kept out of the pool
        self._raw: Any = None  # its asyncpg connection
        self._lock = asyncio.Lock()
        self._held: set[uuid.UUID] = set()
        self.on_done: Announcement | None = None  # called for every run another process announces

    async def _connect(self) -> None:
        self._conn = await self.engine.connect()
        self._raw = (await self._conn.get_raw_connection()).driver_connection
        # If this process's network goes away without closing the socket, the server notices
        # within about 25 s (not the system's 2 hours) and frees its rooms.
        await self._raw.execute("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
                                "SET tcp_keepalives_count = 3")
        await self._raw.add_listener(CHANNEL, self._notified)
        if self._held:  # the old connection's locks went with it; another process may run those rooms now
            log.warning("coordination connection to PostgreSQL was lost: %d room claim(s) dropped", len(self._held))
            self._held.clear()

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        message_id, _, state = payload.partition(":")
        try:
            parsed = uuid.UUID(message_id)
        except ValueError:
            return
        if self.on_done is not None:
            self.on_done(parsed, state)

    async def _execute(self, query: str, *args: Any) -> Any:
        async with self._lock:
            if self._raw is None or self._raw.is_closed():  # first use, or PostgreSQL dropped it
                await self._reconnect()
            try:
                return await self._raw.fetchval(query, *args, timeout=STATEMENT_TIMEOUT)
            except TimeoutError:
                # A connection that does not answer would hold every claim of this process: drop
                # it (its locks go with it) and let the caller retry on a new one.
                self._raw.terminate()
                raise

    async def _reconnect(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.invalidate()
                await self._conn.close()
            except Exception:  # the connection is gone either way
                log.debug("closing the lost coordination connection failed", exc_info=True)
        await self._connect()

    async def claim(self, room_id: uuid.UUID) -> bool:
        """True when this process now runs the room (no other process can until `release`)."""
        if room_id in self._held:
            return True
        if await self._execute("SELECT pg_try_advisory_lock($1)", lock_key(room_id)):
            self._held.add(room_id)
            return True
        return False

    async def release(self, room_id: uuid.UUID) -> None:
        if room_id in self._held:
            self._held.discard(room_id)
            await self._execute("SELECT pg_advisory_unlock($1)", lock_key(room_id))

    async def announce(self, message_id: uuid.UUID, state: str) -> None:
        await self._execute("SELECT pg_notify($1, $2)", CHANNEL, f"{message_id}:{state}")

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._held.clear()
                await self._conn.invalidate()  # closed, not pooled: its locks and LISTEN end with it
                await self._conn.close()
                self._conn = self._raw = None
