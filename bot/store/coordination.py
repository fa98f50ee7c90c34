"""Which process runs a room, when several share one PostgreSQL database.

A room is claimed with a PostgreSQL session-level advisory lock, held on one connection this
process keeps for coordination (one per store, shared by every character). PostgreSQL releases a session's locks when its connection ends,
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

    One per store (`SqlStore.coordinator`), shared by every character of the process and by the
    knowledge start-up pass, so the pool needs one connection for it, however many characters run.
    Each claim has an owner (a character's dispatcher, an indexer): within the process a key held
    by one owner is refused to the others, as PostgreSQL refuses it to other processes (session
    advisory locks are re-entrant, so the connection alone would grant it twice), and an owner that
    stops releases only its own claims (`release_all`).

    Calls on the connection are serialised (asyncpg runs one statement at a time per connection);
    each is a sub-millisecond statement, and claims are only taken for the run in progress.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._conn: Any = None  # the SQLAlchemy connection kept out of the pool
        self._raw: Any = None  # its asyncpg connection
        self._lock = asyncio.Lock()
        self._held: dict[uuid.UUID, object] = {}  # claimed key → its owner
        self._listeners: set[Announcement] = set()  # each hears every run announced (by any process)

    def add_listener(self, listener: Announcement) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Announcement) -> None:
        self._listeners.discard(listener)

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
        for listener in list(self._listeners):  # a listener may remove itself (its character stopping)
            try:
                listener(parsed, state)
            except Exception:  # one character's failure must not keep the announcement from the others
                log.exception("a run announcement listener failed")

    async def _execute(self, query: str, *args: Any) -> Any:
        async with self._lock:
            return await self._execute_locked(query, *args)

    async def _connected(self) -> None:
        if self._raw is None or self._raw.is_closed():  # first use, or PostgreSQL dropped it
            await self._reconnect()

    async def _execute_locked(self, query: str, *args: Any) -> Any:
        await self._connected()
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

    async def _lock_statement(self, query: str, key: uuid.UUID) -> Any:
        """A lock or unlock. One cut short (its task cancelled) leaves the server's state of that lock
        unknown: the connection is dropped, and every claim with it, as when it is lost."""
        try:
            return await self._execute_locked(query, lock_key(key))
        except asyncio.CancelledError:
            if self._raw is not None:
                self._raw.terminate()
            raise

    async def claim(self, key: uuid.UUID, owner: object) -> bool:
        """True when `owner` now holds the key (a room: no one else runs it until `release`)."""
        async with self._lock:
            await self._connected()  # a claim recorded on a dropped connection holds nothing any more
            if key in self._held:
                return self._held[key] is owner
            if not await self._lock_statement("SELECT pg_try_advisory_lock($1)", key):
                return False
            self._held[key] = owner
            return True

    async def release(self, key: uuid.UUID, owner: object) -> None:
        """Let the key go. With the connection gone the lock went with it: nothing to reconnect for
        (a database that is away must not hold up a character's stop)."""
        async with self._lock:
            if self._held.get(key) is not owner:
                return
            del self._held[key]
            if self._raw is None or self._raw.is_closed():
                return
            try:
                await self._lock_statement("SELECT pg_advisory_unlock($1)", key)
            except Exception as error:  # the connection failed under it (a timeout drops it): so did the lock
                log.debug("unlocking on the coordination connection failed: %s", error)

    async def release_all(self, owner: object) -> None:
        """An owner stopping (a character stopped at run time): its claims go, the others' stay."""
        for key in [key for key, held_by in self._held.items() if held_by is owner]:
            await self.release(key, owner)

    async def announce(self, message_id: uuid.UUID, state: str) -> None:
        await self._execute("SELECT pg_notify($1, $2)", CHANNEL, f"{message_id}:{state}")

    async def close(self) -> None:
        """The store closing: the connection ends, and with it every claim and the LISTEN."""
        async with self._lock:
            self._listeners.clear()
            if self._conn is not None:
                self._held.clear()
                await self._conn.invalidate()  # closed, not pooled: its locks and LISTEN end with it
                await self._conn.close()
                self._conn = self._raw = None
