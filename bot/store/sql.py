"""`SqlStore`: the Store contract on SQLAlchemy 2 async, for SQLite (aiosqlite) and PostgreSQL (asyncpg).

Hot paths are single statements built once in `__init__` (SQLAlchemy then reuses their compiled
form): `create_memory` is one INSERT .. ON CONFLICT DO NOTHING (two with an embedding),
`set_run_states` one batched UPDATE and `get_memories` one SELECT. Embedding search runs in process over `VectorIndex` (see vector.py);
text search uses FTS5 on SQLite and a stored tsvector column with a GIN index on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from pydantic_core import to_jsonable_python
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.store.base import ModelUsage, RunState, ScoredMemory, Store, UsageTotals
from bot.store.coordination import PgCoordinator
from bot.store.schema import (
    LATEST_VERSION,
    MIGRATIONS,
    PG_TEXT_SEARCH,
    UNFINISHED,
    agents,
    cache,
    embeddings,
    entities,
    logs,
    memories,
    model_usage,
    participants,
    relationships,
    rooms,
    schema_version,
    tasks,
    worlds,
)
from bot.store.sqlite_writer import SqliteAutocommitWriter
from bot.store.vector import Row, VectorIndex
from bot.types import (
    Agent,
    ChannelType,
    Entity,
    Memory,
    MemoryType,
    Participant,
    Relationship,
    Room,
    RoomState,
    Task,
    World,
    now_ms,
)

log = logging.getLogger(__name__)

# Searching more rows than this inline would hold the event loop for more than about a millisecond.
_INLINE_SEARCH_ROWS = 20_000
_LOAD_BATCH = 10_000
_MAX_QUERY_WORDS = 32
# Any constant works: it only has to be the same for every process migrating the same database.
_PG_MIGRATION_LOCK = 0x7061726C6579

_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-65536",
)


# The database could not be reached or did not answer: worth retrying later, unlike a bug.
UNAVAILABLE = (OSError, TimeoutError, sa.exc.OperationalError, sa.exc.InterfaceError)


def normalize_url(url: str) -> str:
    """Map `postgres://`, `postgresql://` and plain `sqlite://` URLs to their async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}; use sqlite or postgresql")
    return parsed.render_as_string(hide_password=False)


def _id(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


def _merge_unique(old: Iterable[str], new: Iterable[str]) -> list[str]:
    """Union keeping first-seen order, so names and tags stay stable across merges."""
    return list(dict.fromkeys([*old, *new]))


def _query_words(query: str) -> list[str]:
    """Word tokens only: nothing a user types can inject FTS5 or tsquery operators."""
    return list(dict.fromkeys(re.findall(r"\w+", query.lower())))[:_MAX_QUERY_WORDS]


def _vector_bytes(embedding: Sequence[float]) -> bytes:
    return np.asarray(embedding, dtype=np.float32).tobytes()


@dataclass(slots=True)
class _Slot:
    """An index being loaded (writes go to `journal`, replayed after the load) or ready (journal None)."""

    index: VectorIndex
    journal: list[Callable[[VectorIndex], None]] | None = field(default_factory=list)


_MEMORY_COLUMNS = (*memories.c, embeddings.c.vector)
_MEMORY_FROM = memories.outerjoin(embeddings, embeddings.c.memory_id == memories.c.id)


def _memory(row: sa.Row[Any]) -> Memory:
    vector = row.vector
    return Memory.model_validate(
        {
            "id": row.id,
            "entity_id": row.entity_id,
            "agent_id": row.agent_id,
            "room_id": row.room_id,
            "world_id": row.world_id,
            "content": row.content,
            "type": row.type,
            "created_at": row.created_at,
            "embedding": None if vector is None else np.frombuffer(vector, dtype=np.float32).tolist(),
            "unique": row.is_unique,
            "metadata": row.meta,
        }
    )


# Built once, like the queries below: every search reads its hits' rows through it.
_MEMORIES_BY_ID = (sa.select(*_MEMORY_COLUMNS).select_from(_MEMORY_FROM)
                   .where(memories.c.id.in_(sa.bindparam("ids", expanding=True))))

_RECENT_OPTIONAL = ("room_id", "entity_id", "before", "after", "count")


@functools.cache
def _recent_memories_query(room: bool, entity: bool, before: bool, after: bool, limit: bool) -> sa.Select[Any]:
    """`get_memories` SQL for one combination of filters, built once: building it per call cost ~0.4 ms."""
    where = [memories.c.agent_id == sa.bindparam("agent_id"), memories.c.type == sa.bindparam("type")]
    if room:
        where.append(memories.c.room_id == sa.bindparam("room_id"))
    if entity:
        where.append(memories.c.entity_id == sa.bindparam("entity_id"))
    if before:
        where.append(memories.c.created_at < sa.bindparam("before"))
    if after:
        where.append(memories.c.created_at > sa.bindparam("after"))
    stmt = sa.select(*_MEMORY_COLUMNS).select_from(_MEMORY_FROM).where(*where).order_by(memories.c.created_at.desc())
    return stmt.limit(sa.bindparam("count")) if limit else stmt


_TEXT_OPTIONAL = ("room_id", "entity_id", "type")


@functools.cache
def _text_search_query(sqlite: bool, room: bool, entity: bool, type: bool) -> sa.Select[Any]:
    """`search_memories_by_text` SQL for one backend and combination of filters, built once.

    The inner query ranks only ids (filtered, best `count` first); the outer one reads the columns
    of those few rows. Ranking whole rows made the sort carry the text, metadata and vector of
    every match (hundreds per query at 100k fragments) to keep 20.
    """
    where = [memories.c.agent_id == sa.bindparam("agent_id")]
    if room:
        where.append(memories.c.room_id == sa.bindparam("room_id"))
    if entity:
        where.append(memories.c.entity_id == sa.bindparam("entity_id"))
    if type:
        where.append(memories.c.type == sa.bindparam("type"))
    query = sa.bindparam("query")
    if sqlite:
        fts = sa.literal_column("memories_fts")
        rowid = sa.literal_column("memories.rowid")
        # bm25 is lower-is-better; the outer query negates it so scores read like similarities.
        rank = sa.func.bm25(fts)
        ranked = (
            sa.select(rowid.label("key"), rank.label("rank"))
            .select_from(memories.join(sa.table("memories_fts"), sa.literal_column("memories_fts.rowid") == rowid))
            .where(*where, fts.op("MATCH")(query))
            .order_by(rank).limit(sa.bindparam("count")).subquery("ranked")
        )
        source, score = _MEMORY_FROM.join(ranked, ranked.c.key == rowid), -ranked.c.rank
    else:
        tsquery = sa.func.to_tsquery(sa.literal_column("'simple'::regconfig"), query)
        vector = sa.literal_column(f"memories.{PG_TEXT_SEARCH}")
        rank = sa.func.ts_rank(vector, tsquery)
        ranked = (
            sa.select(memories.c.id.label("key"), rank.label("rank"))
            .where(*where, vector.op("@@")(tsquery))
            .order_by(rank.desc()).limit(sa.bindparam("count")).subquery("ranked")
        )
        source, score = _MEMORY_FROM.join(ranked, ranked.c.key == memories.c.id), ranked.c.rank
    return sa.select(*_MEMORY_COLUMNS, score.label("score")).select_from(source).order_by(score.desc())


class SqlStore(Store):
    """The Store on an `AsyncEngine`; `engine` is public so benchmarks can count statements.

    `clock` (seconds, like `time.time`) decides cache expiry; tests may replace it.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.clock: Callable[[], float] = time.time
        self._sqlite = engine.dialect.name == "sqlite"
        self._insert = sqlite.insert if self._sqlite else postgresql.insert
        self._slots: dict[tuple[str, int], _Slot] = {}
        # Serialises this process's read-merge-write upserts (entities, relationships).
        self._merge_lock = asyncio.Lock()
        self._load_lock = asyncio.Lock()
        if self._sqlite:
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        self._insert_memory = self._insert(memories).on_conflict_do_nothing(index_elements=["id"])
        self._set_state = (memories.update().where(memories.c.id == sa.bindparam("memory_id"))
                           .values(run_state=sa.bindparam("state")))
        database = engine.url.database
        self._fast = (
            SqliteAutocommitWriter(database, engine.dialect, self._checkpoint_soon)
            if self._sqlite and database and database != ":memory:" else None
        )
        if self._fast is not None:
            self._fast_insert_memory = self._fast.prepare(self._insert_memory)
            self._fast_set_state = self._fast.prepare(self._set_state)
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._ready = False
        # One per store, shared by every character and the knowledge pass: one pool connection in all.
        self._coordinator = None if self._sqlite else PgCoordinator(engine)
        upsert_embedding = self._insert(embeddings)
        self._upsert_embedding = upsert_embedding.on_conflict_do_update(
            index_elements=["memory_id"],
            set_={"dim": upsert_embedding.excluded.dim, "vector": upsert_embedding.excluded.vector},
        )

    def _checkpoint_soon(self) -> None:
        if self._checkpoint_task is None or self._checkpoint_task.done():
            self._checkpoint_task = asyncio.create_task(self._checkpoint(), name="sqlite-checkpoint")

    async def _checkpoint(self) -> None:
        """Move WAL pages into the database file without blocking writers (PASSIVE)."""
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except sa.exc.SQLAlchemyError as error:
            log.warning("SQLite checkpoint failed (the next one will retry): %s", error)

    @property
    def direct_statements(self) -> int:
        """Statements run outside the engine (the SQLite insert fast path), for statement counts."""
        return self._fast.statements if self._fast is not None else 0

    @classmethod
    def from_url(cls, url: str, **engine_options: Any) -> SqlStore:
        """A store for any accepted URL; `engine_options` go to `create_async_engine` (e.g. connect_args)."""
        return cls(create_async_engine(normalize_url(url), **engine_options))

    # Lifecycle -----------------------------------------------------------------------------
    async def init(self) -> None:
        """Idempotent; after the first success in this process it costs nothing."""
        if not self._ready:
            await self.migrate()
            self._ready = True

    async def migrate(self, target: int = LATEST_VERSION) -> int:
        """Apply pending migrations up to `target` in one locked transaction; returns the version.

        Exposed (beyond `init`) so tests can build a database as an older release left it.
        """
        async with self.engine.connect() as conn:
            if self._sqlite:
                # Take the write lock first so two processes starting together run migrations once.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            await conn.run_sync(lambda sync: schema_version.create(sync, checkfirst=True))
            current = (await conn.execute(sa.select(sa.func.max(schema_version.c.version)))).scalar() or 0
            for migration in MIGRATIONS:
                if current < migration.version <= target:
                    await migration.apply(conn)
                    await conn.execute(
                        schema_version.insert().values(
                            version=migration.version, description=migration.description, applied_at=now_ms()
                        )
                    )
                    current = migration.version
            await conn.commit()
        return current

    async def close(self) -> None:
        try:
            if self._coordinator is not None:  # before the engine: its connection is not pooled
                await self._coordinator.close()
            if self._checkpoint_task is not None:
                await self._checkpoint_task
            if self._fast is not None:
                await self._fast.close()
        finally:
            await self.engine.dispose()

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.select(1))
        except (OSError, sa.exc.SQLAlchemyError):
            return False
        return True

    async def _rows(self, statement: sa.Executable, params: Any = None) -> Sequence[sa.Row[Any]]:
        async with self.engine.connect() as conn:
            return (await conn.execute(statement, params)).all()

    async def _write(self, statement: sa.Executable, params: Any = None) -> int:
        async with self.engine.begin() as conn:
            return (await conn.execute(statement, params)).rowcount

    # Agents, entities, worlds, rooms, participants -----------------------------------------
    async def upsert_agent(self, agent: Agent) -> None:
        values = {
            "id": str(agent.id),
            "name": agent.name,
            "username": agent.username,
            "character": to_jsonable_python(agent.character),
            "enabled": agent.enabled,
            "created_at": agent.created_at,
        }
        stmt = self._insert(agents).values(values)
        changed = {k: stmt.excluded[k] for k in ("name", "username", "character", "enabled")}
        await self._write(stmt.on_conflict_do_update(index_elements=["id"], set_=changed))

    async def get_agent(self, agent_id: uuid.UUID) -> Agent | None:
        found = [a for a in await self._agents(agents.c.id == str(agent_id))]
        return found[0] if found else None

    async def list_agents(self) -> list[Agent]:
        return await self._agents(sa.true())

    async def _agents(self, where: sa.ColumnElement[bool]) -> list[Agent]:
        rows = await self._rows(sa.select(agents).where(where).order_by(agents.c.created_at))
        return [
            Agent(id=r.id, name=r.name, username=r.username, character=r.character, enabled=r.enabled,
                  created_at=r.created_at)
            for r in rows
        ]

    async def upsert_entity(self, entity: Entity) -> None:
        names = list(dict.fromkeys(entity.names))
        meta = to_jsonable_python(entity.metadata)
        async with self._merge_lock:
            # Read outside the write transaction: on SQLite a read-then-write transaction can fail
            # with SQLITE_BUSY when another connection commits in between.
            rows = await self._rows(sa.select(entities.c.names, entities.c.meta).where(entities.c.id == str(entity.id)))
            if not rows:
                inserted = await self._write(
                    self._insert(entities)
                    .values(id=str(entity.id), agent_id=str(entity.agent_id), names=names, meta=meta)
                    .on_conflict_do_nothing(index_elements=["id"])
                )
                if inserted:
                    return
                rows = await self._rows(sa.select(entities.c.names, entities.c.meta).where(entities.c.id == str(entity.id)))
            old_names, old_meta = rows[0]
            merged_names = _merge_unique(old_names, names)
            merged_meta = {**old_meta, **meta}
            if merged_names != old_names or merged_meta != old_meta:
                await self._write(
                    entities.update().where(entities.c.id == str(entity.id)).values(names=merged_names, meta=merged_meta)
                )

    async def get_entity(self, entity_id: uuid.UUID) -> Entity | None:
        found = await self.get_entities([entity_id])
        return found[0] if found else None

    async def get_entities(self, entity_ids: Sequence[uuid.UUID]) -> list[Entity]:
        if not entity_ids:
            return []
        rows = await self._rows(sa.select(entities).where(entities.c.id.in_([str(i) for i in entity_ids])))
        by_id = {r.id: Entity(id=r.id, agent_id=r.agent_id, names=r.names, metadata=r.meta) for r in rows}
        return [by_id[str(i)] for i in dict.fromkeys(entity_ids) if str(i) in by_id]

    async def upsert_world(self, world: World) -> None:
        values = {
            "id": str(world.id),
            "agent_id": str(world.agent_id),
            "name": world.name,
            "server_id": world.server_id,
            "meta": to_jsonable_python(world.metadata),
        }
        stmt = self._insert(worlds).values(values)
        changed = {k: stmt.excluded[k] for k in ("name", "server_id", "meta")}
        await self._write(stmt.on_conflict_do_update(index_elements=["id"], set_=changed))

    async def get_world(self, world_id: uuid.UUID) -> World | None:
        rows = await self._rows(sa.select(worlds).where(worlds.c.id == str(world_id)))
        if not rows:
            return None
        r = rows[0]
        return World(id=r.id, agent_id=r.agent_id, name=r.name, server_id=r.server_id, metadata=r.meta)

    async def upsert_room(self, room: Room) -> None:
        values = {
            "id": str(room.id),
            "agent_id": str(room.agent_id),
            "name": room.name,
            "source": room.source,
            "type": room.type.value,
            "channel_id": room.channel_id,
            "server_id": room.server_id,
            "world_id": _id(room.world_id),
            "meta": to_jsonable_python(room.metadata),
        }
        stmt = self._insert(rooms).values(values)
        changed = {k: stmt.excluded[k] for k in values if k not in ("id", "agent_id")}
        await self._write(stmt.on_conflict_do_update(index_elements=["id"], set_=changed))

    async def get_room(self, room_id: uuid.UUID) -> Room | None:
        found = await self._rooms(rooms.c.id == str(room_id))
        return found[0] if found else None

    async def get_rooms(self, agent_id: uuid.UUID, world_id: uuid.UUID | None = None) -> list[Room]:
        where = rooms.c.agent_id == str(agent_id)
        if world_id is not None:
            where &= rooms.c.world_id == str(world_id)
        return await self._rooms(where)

    async def _rooms(self, where: sa.ColumnElement[bool]) -> list[Room]:
        rows = await self._rows(sa.select(rooms).where(where).order_by(rooms.c.name, rooms.c.id))
        return [
            Room(id=r.id, agent_id=r.agent_id, name=r.name, source=r.source, type=ChannelType(r.type),
                 channel_id=r.channel_id, server_id=r.server_id, world_id=r.world_id, metadata=r.meta)
            for r in rows
        ]

    async def add_participant(self, entity_id: uuid.UUID, room_id: uuid.UUID) -> None:
        await self._write(
            self._insert(participants)
            .values(room_id=str(room_id), entity_id=str(entity_id), state=None, created_at=now_ms())
            .on_conflict_do_nothing(index_elements=["room_id", "entity_id"])
        )

    async def get_participants(self, room_id: uuid.UUID) -> list[Participant]:
        rows = await self._rows(
            sa.select(participants)
            .where(participants.c.room_id == str(room_id))
            .order_by(participants.c.created_at, participants.c.entity_id)
        )
        return [
            Participant(entity_id=r.entity_id, room_id=r.room_id, state=r.state and RoomState(r.state))
            for r in rows
        ]

    async def set_participant_state(
        self, room_id: uuid.UUID, entity_id: uuid.UUID, state: RoomState | None
    ) -> None:
        """Also makes the entity a participant, so following a room never silently does nothing."""
        stmt = self._insert(participants).values(
            room_id=str(room_id), entity_id=str(entity_id), state=state and state.value, created_at=now_ms()
        )
        await self._write(
            stmt.on_conflict_do_update(index_elements=["room_id", "entity_id"], set_={"state": stmt.excluded.state})
        )

    async def get_participant_state(self, room_id: uuid.UUID, entity_id: uuid.UUID) -> RoomState | None:
        rows = await self._rows(
            sa.select(participants.c.state).where(
                participants.c.room_id == str(room_id), participants.c.entity_id == str(entity_id)
            )
        )
        return RoomState(rows[0].state) if rows and rows[0].state else None

    # Memories --------------------------------------------------------------------------------
    @staticmethod
    def _memory_values(memory: Memory) -> dict[str, Any]:
        return {
            "id": str(memory.id),
            "agent_id": str(memory.agent_id),
            "room_id": str(memory.room_id),
            "entity_id": str(memory.entity_id),
            "world_id": _id(memory.world_id),
            "type": memory.type.value,
            "content": memory.content.model_dump(mode="json", exclude_none=True),
            "meta": to_jsonable_python(memory.metadata),
            "created_at": memory.created_at,
            "is_unique": memory.unique,
        }

    async def create_memory(self, memory: Memory, *, run_state: RunState | None = None) -> bool:
        values = self._memory_values(memory)
        values["run_state"] = run_state
        if self._fast is not None and not memory.embedding:
            return await self._fast.run(self._fast_insert_memory, values) == 1
        async with self.engine.begin() as conn:
            inserted = (await conn.execute(self._insert_memory, values)).rowcount == 1
            if inserted and memory.embedding:
                await conn.execute(
                    self._upsert_embedding,
                    {"memory_id": values["id"], "dim": len(memory.embedding), "vector": _vector_bytes(memory.embedding)},
                )
        if inserted and memory.embedding:
            self._index_add(memory, memory.embedding)
        return inserted

    async def update_memory(self, memory: Memory) -> bool:
        """Content and metadata change; an embedding, when given, replaces the stored one."""
        values = self._memory_values(memory)
        async with self.engine.begin() as conn:
            updated = (
                await conn.execute(
                    memories.update()
                    .where(memories.c.id == values["id"])
                    .values(content=values["content"], meta=values["meta"])
                )
            ).rowcount > 0
            if updated and memory.embedding:
                await conn.execute(
                    self._upsert_embedding,
                    {"memory_id": values["id"], "dim": len(memory.embedding), "vector": _vector_bytes(memory.embedding)},
                )
        if updated and memory.embedding:
            self._index_remove([values["id"]])
            self._index_add(memory, memory.embedding)
        return updated

    async def set_run_states(self, states: Sequence[tuple[uuid.UUID, RunState]]) -> None:
        values = [{"memory_id": str(memory_id), "state": state} for memory_id, state in states]
        if not values:
            return
        if self._fast is not None:
            await self._fast.run_many(self._fast_set_state, values)
        else:
            await self._write(self._set_state, values)

    @staticmethod
    def _unfinished(agent_id: uuid.UUID) -> list[sa.ColumnElement[bool]]:
        # Literal states, so the planner can see the partial index ix_memories_pending applies.
        states = [sa.literal_column(f"'{state}'") for state in UNFINISHED]
        return [memories.c.agent_id == str(agent_id), memories.c.run_state.in_(states)]

    async def unfinished_messages(self, agent_id: uuid.UUID, *, since: int) -> list[Memory]:
        rows = await self._rows(
            sa.select(*_MEMORY_COLUMNS).select_from(_MEMORY_FROM)
            .where(*self._unfinished(agent_id), memories.c.created_at >= since)
            .order_by(memories.c.created_at, memories.c.id)
        )
        return [_memory(row) for row in rows]

    async def room_queue(self, agent_id: uuid.UUID, room_id: uuid.UUID, *, since: int,
                         limit: int) -> list[tuple[Memory, RunState]]:
        rows = await self._rows(
            sa.select(*_MEMORY_COLUMNS).select_from(_MEMORY_FROM)
            .where(memories.c.agent_id == str(agent_id), memories.c.room_id == str(room_id),
                   memories.c.run_state.in_(["preparing", *UNFINISHED]), memories.c.created_at >= since)
            .order_by(memories.c.created_at, memories.c.id).limit(limit)
        )
        return [(_memory(row), row.run_state) for row in rows]

    async def advance_run_state(self, memory_id: uuid.UUID, state: RunState, *, from_states: Sequence[str]) -> bool:
        return await self._write(
            memories.update().where(memories.c.id == str(memory_id), memories.c.run_state.in_(list(from_states)))
            .values(run_state=state)
        ) == 1

    async def rooms_with_unfinished(self, agent_id: uuid.UUID, *, since: int) -> list[uuid.UUID]:
        rows = await self._rows(
            sa.select(memories.c.room_id).where(*self._unfinished(agent_id), memories.c.created_at >= since)
            .group_by(memories.c.room_id).order_by(sa.func.min(memories.c.created_at))
        )
        return [uuid.UUID(row.room_id) for row in rows]

    async def run_states_of(self, memory_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str | None]:
        if not memory_ids:
            return {}
        rows = await self._rows(
            sa.select(memories.c.id, memories.c.run_state).where(memories.c.id.in_([str(i) for i in memory_ids]))
        )
        return {uuid.UUID(row.id): row.run_state for row in rows}

    async def requeue_preparing(self, agent_id: uuid.UUID, *, before: int) -> int:
        return await self._write(
            memories.update().where(memories.c.agent_id == str(agent_id),
                                    memories.c.run_state == sa.literal_column("'preparing'"),
                                    memories.c.created_at < before)
            .values(run_state="queued")
        )

    async def latest_received_time(self, agent_id: uuid.UUID, room_id: uuid.UUID) -> int | None:
        return (await self._rows(
            sa.select(sa.func.max(memories.c.created_at))
            .where(memories.c.agent_id == str(agent_id), memories.c.room_id == str(room_id),
                   memories.c.type == MemoryType.MESSAGE.value, memories.c.entity_id != str(agent_id))
        ))[0][0]

    def coordinator(self) -> PgCoordinator | None:
        """How this process shares rooms with others on the same database (see coordination.py):
        the same one on every call, which the store closes."""
        return self._coordinator

    async def expire_unfinished(self, agent_id: uuid.UUID, *, before: int, running: bool = True) -> int:
        where = [*self._unfinished(agent_id), memories.c.created_at < before]
        if not running:
            where.append(memories.c.run_state == sa.literal_column("'queued'"))
        return await self._write(memories.update().where(*where).values(run_state="expired"))

    async def get_memory(self, memory_id: uuid.UUID) -> Memory | None:
        found = await self._memories_by_id([str(memory_id)])
        return found.get(str(memory_id))

    async def _memories_by_id(self, ids: Sequence[str]) -> dict[str, Memory]:
        if not ids:
            return {}
        rows = await self._rows(_MEMORIES_BY_ID, {"ids": list(ids)})
        return {row.id: _memory(row) for row in rows}

    @staticmethod
    def _memory_filters(
        agent_id: uuid.UUID, room_id: uuid.UUID | None, entity_id: uuid.UUID | None, type: MemoryType | None
    ) -> list[sa.ColumnElement[bool]]:
        where = [memories.c.agent_id == str(agent_id)]
        if room_id is not None:
            where.append(memories.c.room_id == str(room_id))
        if entity_id is not None:
            where.append(memories.c.entity_id == str(entity_id))
        if type is not None:
            where.append(memories.c.type == type.value)
        return where

    async def get_memories(
        self,
        *,
        agent_id: uuid.UUID,
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        type: MemoryType = MemoryType.MESSAGE,
        count: int | None = 32,
        before: int | None = None,
        after: int | None = None,
    ) -> list[Memory]:
        params = {
            "agent_id": str(agent_id),
            "type": type.value,
            "room_id": _id(room_id),
            "entity_id": _id(entity_id),
            "before": before,
            "after": after,
            "count": count,
        }
        stmt = _recent_memories_query(*(params[name] is not None for name in _RECENT_OPTIONAL))
        rows = await self._rows(stmt, {name: value for name, value in params.items() if value is not None})
        return [_memory(row) for row in rows]

    async def count_memories(
        self,
        *,
        agent_id: uuid.UUID,
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        type: MemoryType = MemoryType.MESSAGE,
    ) -> int:
        where = self._memory_filters(agent_id, room_id, entity_id, type)
        rows = await self._rows(sa.select(sa.func.count()).select_from(memories).where(*where))
        return int(rows[0][0])

    async def delete_memory(self, memory_id: uuid.UUID) -> bool:
        deleted = await self._write(memories.delete().where(memories.c.id == str(memory_id)))
        self._index_remove([str(memory_id)])
        return deleted > 0

    async def delete_room_memories(self, room_id: uuid.UUID, type: MemoryType | None = None) -> int:
        where = [memories.c.room_id == str(room_id)]
        if type is not None:
            where.append(memories.c.type == type.value)
        deleted = await self._write(memories.delete().where(*where))
        type_value = None if type is None else type.value
        self._index_touch(lambda index: index.remove_room(str(room_id), type_value))
        return deleted

    async def set_embeddings(self, items: Sequence[tuple[uuid.UUID, Sequence[float]]]) -> None:
        """Memories that do not exist are skipped (their embedding has nothing to attach to)."""
        vectors = {str(memory_id): vector for memory_id, vector in items if len(vector)}
        if not vectors:
            return
        async with self.engine.begin() as conn:
            owners = (
                await conn.execute(
                    sa.select(memories.c.id, memories.c.agent_id, memories.c.room_id, memories.c.entity_id,
                              memories.c.type).where(memories.c.id.in_(list(vectors)))
                )
            ).all()
            if not owners:
                return
            await conn.execute(
                self._upsert_embedding,
                [{"memory_id": o.id, "dim": len(vectors[o.id]), "vector": _vector_bytes(vectors[o.id])} for o in owners],
            )
        self._index_remove([o.id for o in owners])
        for o in owners:
            vector = vectors[o.id]
            row = Row(o.id, o.room_id, o.entity_id, o.type, np.asarray(vector, dtype=np.float32))
            self._index_touch(lambda index, row=row: index.add([row]), (o.agent_id, len(vector)))

    async def count_embeddings(self, agent_id: uuid.UUID) -> dict[int, int]:
        stmt = (
            sa.select(embeddings.c.dim, sa.func.count())
            .select_from(embeddings.join(memories, memories.c.id == embeddings.c.memory_id))
            .where(memories.c.agent_id == str(agent_id))
            .group_by(embeddings.c.dim)
        )
        return {int(dim): int(count) for dim, count in await self._rows(stmt)}

    async def embedded_in_other_size(self, agent_id: uuid.UUID, dim: int, *, types: Sequence[MemoryType],
                                     count: int = 100, after: Memory | None = None) -> list[Memory]:
        where = [memories.c.agent_id == str(agent_id), embeddings.c.dim != dim,
                 memories.c.type.in_([t.value for t in types])]
        if after is not None:
            where.append(sa.tuple_(memories.c.created_at, memories.c.id) > (after.created_at, str(after.id)))
        stmt = (
            sa.select(*_MEMORY_COLUMNS)
            .select_from(memories.join(embeddings, embeddings.c.memory_id == memories.c.id))
            .where(*where)
            .order_by(memories.c.created_at, memories.c.id)
            .limit(count)
        )
        return [_memory(row) for row in await self._rows(stmt)]

    async def search_memories_by_embedding(
        self,
        embedding: Sequence[float],
        *,
        agent_id: uuid.UUID,
        count: int = 10,
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        type: MemoryType | None = None,
        min_score: float | None = None,
    ) -> list[ScoredMemory]:
        if not len(embedding) or count <= 0:
            return []
        index = await self._index(str(agent_id), len(embedding))
        query = np.asarray(embedding, dtype=np.float32)
        filters = {
            "room_id": _id(room_id),
            "entity_id": _id(entity_id),
            "type": None if type is None else type.value,
            "min_score": min_score,
        }
        if len(index) > _INLINE_SEARCH_ROWS:
            hits = await asyncio.to_thread(index.search, query, count, **filters)
        else:
            hits = index.search(query, count, **filters)
        found = await self._memories_by_id([memory_id for memory_id, _ in hits])
        return [ScoredMemory(found[memory_id], score) for memory_id, score in hits if memory_id in found]

    async def search_memories_by_text(
        self,
        query: str,
        *,
        agent_id: uuid.UUID,
        count: int = 10,
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        type: MemoryType | None = None,
    ) -> list[ScoredMemory]:
        words = _query_words(query)
        if not words or count <= 0:
            return []
        params = {"agent_id": str(agent_id), "room_id": _id(room_id), "entity_id": _id(entity_id),
                  "type": None if type is None else type.value}
        stmt = _text_search_query(self._sqlite, *(params[name] is not None for name in _TEXT_OPTIONAL))
        params |= {"count": count, "query": " OR ".join(f'"{word}"' for word in words) if self._sqlite
                   else " | ".join(f"'{word}'" for word in words)}
        rows = await self._rows(stmt, {name: value for name, value in params.items() if value is not None})
        return [ScoredMemory(_memory(row), float(row.score)) for row in rows]

    # Vector index maintenance ---------------------------------------------------------------
    def _index_touch(self, change: Callable[[VectorIndex], None], key: tuple[str, int] | None = None) -> None:
        """Apply a write to loaded indexes (one key, or all), journaling it for ones mid-load."""
        if key is None:
            slots = list(self._slots.values())
        else:
            slots = [self._slots[key]] if key in self._slots else []
        for slot in slots:
            if slot.journal is not None:
                slot.journal.append(change)
            else:
                change(slot.index)

    def _index_add(self, memory: Memory, embedding: Sequence[float]) -> None:
        row = Row(str(memory.id), str(memory.room_id), str(memory.entity_id), memory.type.value,
                  np.asarray(embedding, dtype=np.float32))
        self._index_touch(lambda index: index.add([row]), (str(memory.agent_id), len(embedding)))

    def _index_remove(self, memory_ids: list[str]) -> None:
        self._index_touch(lambda index: index.remove(memory_ids))

    def forget_vectors(self, agent_id: uuid.UUID) -> None:
        for key in [key for key, slot in self._slots.items() if key[0] == str(agent_id) and slot.journal is None]:
            del self._slots[key]

    async def _index(self, agent_id: str, dim: int) -> VectorIndex:
        """The loaded index for (agent, dim), reading it from the database on first use."""
        key = (agent_id, dim)
        slot = self._slots.get(key)
        if slot is not None and slot.journal is None:
            return slot.index
        async with self._load_lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = _Slot(VectorIndex(dim))
                self._slots[key] = slot
                try:
                    await self._load(slot, agent_id)
                except BaseException:
                    # Forget the half-built index; the next search (or a waiter) loads it afresh.
                    del self._slots[key]
                    raise
        return slot.index

    async def _load(self, slot: _Slot, agent_id: str) -> None:
        """Stream the agent's vectors in batches, build the matrix off the loop, then replay the journal."""
        stmt = (
            sa.select(embeddings.c.memory_id, memories.c.room_id, memories.c.entity_id, memories.c.type,
                      embeddings.c.vector)
            .select_from(embeddings.join(memories, memories.c.id == embeddings.c.memory_id))
            .where(memories.c.agent_id == agent_id, embeddings.c.dim == slot.index.dim)
        )
        columns: tuple[list[Any], ...] = ([], [], [], [], [])
        async with self.engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=_LOAD_BATCH))
            async for batch in result.partitions(_LOAD_BATCH):
                for column, values in zip(columns, zip(*batch, strict=True), strict=True):
                    column.extend(values)
        ids, room_ids, entity_ids, types, blobs = columns

        def build() -> None:
            matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), slot.index.dim)
            slot.index.load(ids, room_ids, entity_ids, types, matrix)

        await asyncio.to_thread(build)
        for change in slot.journal or ():
            change(slot.index)
        slot.journal = None

    # Relationships -------------------------------------------------------------------------
    async def upsert_relationship(self, relationship: Relationship) -> None:
        key = (
            relationships.c.agent_id == str(relationship.agent_id),
            relationships.c.source_entity_id == str(relationship.source_entity_id),
            relationships.c.target_entity_id == str(relationship.target_entity_id),
        )
        tags = list(dict.fromkeys(relationship.tags))
        meta = to_jsonable_python(relationship.metadata)
        async with self._merge_lock:
            rows = await self._rows(sa.select(relationships.c.tags, relationships.c.meta).where(*key))
            if not rows:
                inserted = await self._write(
                    self._insert(relationships)
                    .values(
                        id=str(relationship.id),
                        agent_id=str(relationship.agent_id),
                        source_entity_id=str(relationship.source_entity_id),
                        target_entity_id=str(relationship.target_entity_id),
                        tags=tags,
                        meta=meta,
                        created_at=relationship.created_at,
                    )
                    .on_conflict_do_nothing()
                )
                if inserted:
                    return
                rows = await self._rows(sa.select(relationships.c.tags, relationships.c.meta).where(*key))
            old_tags, old_meta = rows[0]
            await self._write(
                relationships.update().where(*key).values(tags=_merge_unique(old_tags, tags), meta={**old_meta, **meta})
            )

    async def get_relationships(
        self, *, agent_id: uuid.UUID, entity_id: uuid.UUID, tags: Sequence[str] | None = None
    ) -> list[Relationship]:
        entity = str(entity_id)
        rows = await self._rows(
            sa.select(relationships)
            .where(
                relationships.c.agent_id == str(agent_id),
                sa.or_(relationships.c.source_entity_id == entity, relationships.c.target_entity_id == entity),
            )
            .order_by(relationships.c.created_at)
        )
        wanted = set(tags or ())
        return [
            Relationship(id=r.id, agent_id=r.agent_id, source_entity_id=r.source_entity_id,
                         target_entity_id=r.target_entity_id, tags=r.tags, metadata=r.meta, created_at=r.created_at)
            for r in rows
            if wanted.issubset(r.tags)
        ]

    # Tasks -----------------------------------------------------------------------------------
    @staticmethod
    def _task_values(task: Task) -> dict[str, Any]:
        return {
            "id": str(task.id),
            "agent_id": str(task.agent_id),
            "name": task.name,
            "description": task.description,
            "room_id": _id(task.room_id),
            "world_id": _id(task.world_id),
            "entity_id": _id(task.entity_id),
            "tags": list(task.tags),
            "meta": to_jsonable_python(task.metadata),
            "updated_at": task.updated_at,
        }

    async def create_task(self, task: Task) -> None:
        await self._write(tasks.insert().values(self._task_values(task)))

    async def get_tasks(
        self,
        *,
        agent_id: uuid.UUID,
        room_id: uuid.UUID | None = None,
        name: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Task]:
        """Tasks having all `tags` (tag filtering happens here: JSON containment differs per backend)."""
        where = [tasks.c.agent_id == str(agent_id)]
        if room_id is not None:
            where.append(tasks.c.room_id == str(room_id))
        if name is not None:
            where.append(tasks.c.name == name)
        rows = await self._rows(sa.select(tasks).where(*where).order_by(tasks.c.updated_at, tasks.c.id))
        wanted = set(tags or ())
        return [
            Task(id=r.id, agent_id=r.agent_id, name=r.name, description=r.description, room_id=r.room_id,
                 world_id=r.world_id, entity_id=r.entity_id, tags=r.tags, metadata=r.meta, updated_at=r.updated_at)
            for r in rows
            if wanted.issubset(r.tags)
        ]

    async def update_task(self, task: Task) -> None:
        values = self._task_values(task)
        await self._write(tasks.update().where(tasks.c.id == values.pop("id")).values(values))

    async def delete_task(self, task_id: uuid.UUID) -> None:
        await self._write(tasks.delete().where(tasks.c.id == str(task_id)))

    async def claim_task(self, task: Task, expected_updated_at: int) -> bool:
        """One conditional UPDATE: PostgreSQL re-checks the WHERE after a concurrent writer's row
        lock is released, SQLite serialises writers, so a lost race is a row count of 0."""
        if task.updated_at == expected_updated_at:
            raise ValueError("a claim must change updated_at, or a second claim could not tell it lost")
        values = self._task_values(task)
        task_id = values.pop("id")
        claimed = tasks.update().where(tasks.c.id == task_id, tasks.c.updated_at == expected_updated_at)
        return await self._write(claimed.values(values)) == 1

    # Cache -----------------------------------------------------------------------------------
    def _unexpired(self) -> sa.ColumnElement[bool]:
        return sa.or_(cache.c.expires_at.is_(None), cache.c.expires_at > int(self.clock() * 1000))

    async def get_cache(self, agent_id: uuid.UUID, key: str) -> Any | None:
        rows = await self._rows(
            sa.select(cache.c.value).where(cache.c.agent_id == str(agent_id), cache.c.key == key, self._unexpired())
        )
        return rows[0].value if rows else None

    async def set_cache(
        self, agent_id: uuid.UUID, key: str, value: Any, ttl_seconds: float | None = None
    ) -> None:
        expires_at = None if ttl_seconds is None else int((self.clock() + ttl_seconds) * 1000)
        stmt = self._insert(cache).values(
            agent_id=str(agent_id), key=key, value=to_jsonable_python(value), expires_at=expires_at
        )
        await self._write(
            stmt.on_conflict_do_update(
                index_elements=["agent_id", "key"],
                set_={"value": stmt.excluded.value, "expires_at": stmt.excluded.expires_at},
            )
        )

    async def delete_cache(self, agent_id: uuid.UUID, key: str) -> bool:
        return await self._write(cache.delete().where(cache.c.agent_id == str(agent_id), cache.c.key == key)) > 0

    async def list_cache(self, agent_id: uuid.UUID, prefix: str) -> dict[str, Any]:
        rows = await self._rows(
            sa.select(cache.c.key, cache.c.value)
            .where(cache.c.agent_id == str(agent_id), cache.c.key.startswith(prefix, autoescape=True), self._unexpired())
            .order_by(cache.c.key)
        )
        return {r.key: r.value for r in rows}

    # Logs and model usage ----------------------------------------------------------------------
    async def log(
        self,
        *,
        agent_id: uuid.UUID,
        type: str,
        body: dict[str, Any],
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
    ) -> None:
        await self._write(
            logs.insert().values(
                agent_id=str(agent_id), type=type, body=to_jsonable_python(body), room_id=_id(room_id),
                entity_id=_id(entity_id), created_at=now_ms(),
            )
        )

    async def get_logs(
        self, *, agent_id: uuid.UUID, type: str | None = None, room_id: uuid.UUID | None = None, count: int = 50
    ) -> list[dict[str, Any]]:
        """Newest first by insertion order (the integer id), which created_at alone can't break ties for."""
        where = [logs.c.agent_id == str(agent_id)]
        if type is not None:
            where.append(logs.c.type == type)
        if room_id is not None:
            where.append(logs.c.room_id == str(room_id))
        rows = await self._rows(sa.select(logs).where(*where).order_by(logs.c.id.desc()).limit(count))
        return [
            {"id": r.id, "type": r.type, "body": r.body, "room_id": _uuid(r.room_id),
             "entity_id": _uuid(r.entity_id), "created_at": r.created_at}
            for r in rows
        ]

    async def record_model_usage(self, usages: Sequence[ModelUsage]) -> None:
        if not usages:
            return
        rows = [
            {
                "agent_id": str(u.agent_id), "provider": u.provider, "model_type": str(u.model_type),
                "model": u.model, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "room_id": _id(u.room_id), "entity_id": _id(u.entity_id), "created_at": u.created_at or now_ms(),
            }
            for u in usages
        ]
        await self._write(model_usage.insert(), rows)

    async def usage_totals(
        self, *, agent_id: uuid.UUID, room_id: uuid.UUID | None = None, entity_id: uuid.UUID | None = None
    ) -> UsageTotals:
        where = [model_usage.c.agent_id == str(agent_id)]
        if room_id is not None:
            where.append(model_usage.c.room_id == str(room_id))
        if entity_id is not None:
            where.append(model_usage.c.entity_id == str(entity_id))
        rows = await self._rows(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(model_usage.c.prompt_tokens), 0),
                sa.func.coalesce(sa.func.sum(model_usage.c.completion_tokens), 0),
            ).where(*where)
        )
        calls, prompt, completion = rows[0]
        return UsageTotals(calls=int(calls), prompt_tokens=int(prompt), completion_tokens=int(completion))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection settings: WAL lets readers run during writes; NORMAL sync is safe under WAL."""
    cursor = dbapi_connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()

