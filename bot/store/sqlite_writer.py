"""A one-statement fast path for SQLite writes on the message hot path.

Through SQLAlchemy's async adapter a single INSERT costs ~0.5 ms on SQLite: checkout, cursor,
execute, commit and reset each hop to aiosqlite's worker thread. An autocommit connection runs
the same compiled SQLAlchemy statement in one hop (~0.15 ms). Every message is stored this way
twice (the user's and the reply) and changes its processing state twice (running, then done),
so it is worth one small class. The statements and their bind processing still come from
SQLAlchemy, so the rows are exactly what the ORM path would write.

SQLite's automatic WAL checkpoint would run inside whichever insert crosses the threshold and
stall that message for milliseconds; this connection turns it off and asks its owner to run a
PASSIVE checkpoint on another connection every CHECKPOINT_EVERY inserts, which never blocks
writers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite
import sqlalchemy as sa
from sqlalchemy.engine import Dialect

CHECKPOINT_EVERY = 500


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement compiled once: its SQL, parameter order and bind processors."""

    sql: str
    keys: list[str]
    processors: dict[str, Callable[[Any], Any]]

    def params(self, values: dict[str, Any]) -> list[Any]:
        return [self.processors[k](values[k]) if k in self.processors else values[k] for k in self.keys]


class SqliteAutocommitWriter:
    def __init__(self, database: str, dialect: Dialect, checkpoint: Callable[[], None]) -> None:
        self.dialect = dialect
        self.database = database
        self._checkpoint = checkpoint
        self.statements = 0  # counted so benchmarks see these statements too
        self._connection: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def _connect(self) -> aiosqlite.Connection:
        async with self._lock:
            if self._closed:  # a write after the store closed must not open a connection no one closes
                raise sa.exc.InvalidRequestError("the store is closed")
            if self._connection is None:
                connection = await aiosqlite.connect(self.database, isolation_level=None)
                await connection.execute("PRAGMA busy_timeout=5000")
                await connection.execute("PRAGMA synchronous=NORMAL")
                await connection.execute("PRAGMA wal_autocheckpoint=0")
                self._connection = connection
            return self._connection

    def prepare(self, statement: sa.Insert | sa.Update) -> Prepared:
        compiled = statement.compile(dialect=self.dialect)
        keys = list(compiled.positiontup or [])
        processors = {key: p for key, p in compiled._bind_processors.items() if key in keys}
        return Prepared(str(compiled), keys, processors)

    async def run(self, statement: Prepared, values: dict[str, Any]) -> int:
        """Run one statement in its own implicit transaction; returns the row count."""
        connection = self._connection or await self._connect()
        self.statements += 1
        cursor = await connection.execute(statement.sql, statement.params(values))
        if self.statements % CHECKPOINT_EVERY == 0:
            self._checkpoint()
        return cursor.rowcount

    async def run_many(self, statement: Prepared, rows: list[dict[str, Any]]) -> None:
        """Run one statement per row in a single hop to the database thread."""
        connection = self._connection or await self._connect()
        self.statements += len(rows)
        await connection.executemany(statement.sql, [statement.params(values) for values in rows])

    async def close(self) -> None:
        """Close the connection; later writes are refused (a connection still being opened is closed
        too: the lock makes close wait for it). An open connection's thread keeps a process alive."""
        async with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
