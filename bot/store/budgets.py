"""Send budgets shared by every process on one PostgreSQL database (the GCRA of `bot.budgets`).

A reservation is one autocommitted statement: an upsert of the key's row in `send_budgets` that
moves its tat on and returns the slot. PostgreSQL's row lock makes concurrent reservations of one
key, from any process, take consecutive slots. Every time in it is the database's clock, so
processes whose clocks disagree still agree on the slots, and each sleeps only the difference the
database computed; it is read once per statement (`statement_timestamp()`), so the slot and the
"now" it is measured from are consistent, and the sleep, starting when the answer arrives, can
only end after the slot, never before.

pyrate-limiter's PostgresBucket was considered: it stores a row per send, locks the whole table
(refusing under contention instead of queueing) and runs on a separate, synchronous driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.budgets import MAX_TRACKED_KEYS, MemoryBudget, SendBudget, Slot
from bot.store.base import Store
from bot.store.sql import SqlStore

log = logging.getLogger(__name__)

_NOW = "extract(epoch FROM statement_timestamp())::float8"
_RESERVE = sa.text(f"""
    INSERT INTO send_budgets AS b (key, tat) VALUES (:key, {_NOW} + :interval)
    ON CONFLICT (key) DO UPDATE SET tat = greatest(b.tat, {_NOW}) + :interval
    RETURNING b.tat - :burst * :interval AS at, {_NOW} AS now
""").bindparams(sa.bindparam("interval", type_=sa.Float), sa.bindparam("burst", type_=sa.Float))
# Only when the slot is due now: a refused take leaves the row as it was (no row comes back).
_TAKE_NOW = sa.text(f"""
    INSERT INTO send_budgets AS b (key, tat) VALUES (:key, {_NOW} + :interval)
    ON CONFLICT (key) DO UPDATE SET tat = greatest(b.tat, {_NOW}) + :interval
    WHERE greatest(b.tat, {_NOW}) + :interval - :burst * :interval <= {_NOW}
    RETURNING 1
""").bindparams(sa.bindparam("interval", type_=sa.Float), sa.bindparam("burst", type_=sa.Float))
_SWEEP = sa.text(f"DELETE FROM send_budgets WHERE tat < {_NOW} - :idle").bindparams(
    sa.bindparam("idle", type_=sa.Float))

SWEEP_EVERY = 60.0  # seconds between two sweeps by one process
IDLE_AFTER = 600.0  # seconds after its tat passed that a key's row is deleted
WARN_EVERY = 60.0


class PostgresBudget(SendBudget):
    """Budgets in the `send_budgets` table, shared by every process using the same database.

    At most every `sweep_every` seconds (on this process's `clock`) a reservation also deletes the
    rows idle for `idle_after` seconds, so the table holds only the recently active keys; deleting
    them changes nothing, as a key whose tat has passed behaves like a new one. When the database
    cannot be reached, sends are paced by this process alone (a warning says so) rather than fail.
    """

    def __init__(self, engine: AsyncEngine, *, sweep_every: float = SWEEP_EVERY,
                 idle_after: float = IDLE_AFTER, clock: Callable[[], float] = time.monotonic) -> None:
        # One statement needs no transaction around it: autocommit spares the BEGIN and COMMIT round trips.
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.sweep_every = sweep_every
        self.idle_after = idle_after
        self.clock = clock
        self._swept_at: float | None = None
        self._warned_at: float | None = None
        self._fallback = MemoryBudget(clock)

    async def reserve(self, key: str, interval: float, burst: int) -> Slot:
        try:
            row = (await self._run(_RESERVE, key, interval, burst)).one()
        except (OSError, sa.exc.SQLAlchemyError) as error:
            self._warn(error)
            return await self._fallback.reserve(key, interval, burst)
        return Slot(row.at, row.now)

    async def take_now(self, key: str, interval: float, burst: int) -> bool:
        try:
            return (await self._run(_TAKE_NOW, key, interval, burst)).first() is not None
        except (OSError, sa.exc.SQLAlchemyError) as error:
            self._warn(error)
            return await self._fallback.take_now(key, interval, burst)

    async def _run(self, statement: sa.TextClause, key: str, interval: float, burst: int) -> sa.CursorResult:
        async with self.engine.connect() as conn:
            if self._swept_at is None or self.clock() - self._swept_at >= self.sweep_every:
                self._swept_at = self.clock()
                await conn.execute(_SWEEP, {"idle": self.idle_after})
            return await conn.execute(statement, {"key": key, "interval": interval, "burst": burst})

    def _warn(self, error: BaseException) -> None:
        if self._warned_at is None or self.clock() - self._warned_at >= WARN_EVERY:
            self._warned_at = self.clock()
            log.warning("send budgets: the database failed (%s: %s); pacing this process's sends alone",
                        type(error).__name__, error)


def send_budget(store: Store, *, max_keys: int = MAX_TRACKED_KEYS) -> SendBudget:
    """The budget every process on `store` shares: PostgreSQL's table, else this process's memory
    for its `max_keys` most recent keys (SQLite serves one process, which then needs no database
    round trip per send)."""
    if isinstance(store, SqlStore) and store.engine.dialect.name == "postgresql":
        return PostgresBudget(store.engine)
    return MemoryBudget(max_keys=max_keys)
