"""Table definitions and the ordered list of schema migrations.

Ids are 36-character UUID strings on both backends, so the same queries and tests serve SQLite and
PostgreSQL. Times are integer milliseconds (see `bot.types.now_ms`).

Migrations only ever get appended. Each one must be safe to run on a database whose tables were
created from the *current* definitions below (a fresh install runs migration 1 with today's
tables), which is why column additions go through `add_column`, which skips existing columns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = sa.MetaData()

Id = sa.String(36)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("username", sa.String(200)),
    sa.Column("character", sa.JSON, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

entities = sa.Table(
    "entities",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("agent_id", Id, nullable=False, index=True),
    sa.Column("names", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
)

worlds = sa.Table(
    "worlds",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("agent_id", Id, nullable=False, index=True),
    sa.Column("name", sa.String(500)),
    sa.Column("server_id", sa.String(200)),
    sa.Column("meta", sa.JSON, nullable=False),
)

rooms = sa.Table(
    "rooms",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("agent_id", Id, nullable=False),
    sa.Column("name", sa.String(500)),
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("channel_id", sa.String(200)),
    sa.Column("server_id", sa.String(200)),
    sa.Column("world_id", Id),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Index("ix_rooms_agent_world", "agent_id", "world_id"),
)

participants = sa.Table(
    "participants",
    metadata,
    sa.Column("room_id", Id, primary_key=True),
    sa.Column("entity_id", Id, primary_key=True, index=True),
    sa.Column("state", sa.String(16)),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

memories = sa.Table(
    "memories",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("agent_id", Id, nullable=False),
    sa.Column("room_id", Id, nullable=False),
    sa.Column("entity_id", Id, nullable=False),
    sa.Column("world_id", Id),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("content", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("is_unique", sa.Boolean, nullable=False, server_default=sa.false()),
    # A received message's processing: queued → running → done | failed, or expired when it waited
    # longer than RESUME_WINDOW. NULL for everything the dispatcher never took (replies, facts).
    sa.Column("run_state", sa.String(16)),
    sa.Index("ix_memories_room", "agent_id", "room_id", "type", "created_at"),
    sa.Index("ix_memories_type", "agent_id", "type", "created_at"),
    sa.Index("ix_memories_entity", "entity_id", "type", "created_at"),
)

UNFINISHED = ("queued", "running")
_unfinished = sa.column("run_state").in_(UNFINISHED)
# Partial: only messages not yet answered are in it, so start-up finds them without a scan and
# the hot path's state changes touch a tiny index.
pending_index = sa.Index("ix_memories_pending", memories.c.agent_id, memories.c.created_at,
                         sqlite_where=_unfinished, postgresql_where=_unfinished)

_preparing = sa.column("run_state") == sa.literal_column("'preparing'")
# Voice notes being transcribed by the process that received them (several processes): the sweep
# that requeues those whose process died reads this tiny index, not the table.
preparing_index = sa.Index("ix_memories_preparing", memories.c.agent_id, memories.c.created_at,
                           sqlite_where=_preparing, postgresql_where=_preparing)

embeddings = sa.Table(
    "embeddings",
    metadata,
    sa.Column("memory_id", Id, sa.ForeignKey("memories.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

relationships = sa.Table(
    "relationships",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("agent_id", Id, nullable=False),
    sa.Column("source_entity_id", Id, nullable=False),
    sa.Column("target_entity_id", Id, nullable=False, index=True),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("agent_id", "source_entity_id", "target_entity_id", name="uq_relationship"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("agent_id", Id, nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("room_id", Id),
    sa.Column("world_id", Id),
    sa.Column("entity_id", Id),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_tasks_agent_name", "agent_id", "name"),
)

cache = sa.Table(
    "cache",
    metadata,
    sa.Column("agent_id", Id, primary_key=True),
    sa.Column("key", sa.String(500), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
)

logs = sa.Table(
    "logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("agent_id", Id, nullable=False),
    sa.Column("type", sa.String(100), nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("room_id", Id),
    sa.Column("entity_id", Id),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_logs_agent_type", "agent_id", "type"),
)

model_usage = sa.Table(
    "model_usage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("agent_id", Id, nullable=False),
    sa.Column("provider", sa.String(50), nullable=False),
    sa.Column("model_type", sa.String(50), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("room_id", Id),
    sa.Column("entity_id", Id),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_model_usage_agent", "agent_id", "created_at"),
)

# Send budgets shared by the processes on one PostgreSQL database (bot.store.budgets): one row per
# key, updated in place on every send. Only the primary key is indexed, so those updates stay HOT
# (no index entry to write); the occasional sweep of idle rows scans the small table instead.
send_budgets = sa.Table(
    "send_budgets",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("tat", sa.Float(53), nullable=False),  # seconds since the epoch on the database's clock
)

# SQLite: an external-content FTS5 table over a virtual generated column, kept in sync by triggers,
# so inserts stay one client statement and `rebuild` can re-read the text from `memories`.
_SQLITE_FTS = (
    "ALTER TABLE memories ADD COLUMN text TEXT GENERATED ALWAYS AS (json_extract(content, '$.text')) VIRTUAL",
    "CREATE VIRTUAL TABLE memories_fts USING fts5(text, content='memories', content_rowid='rowid')",
    "CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN "
    "INSERT INTO memories_fts(rowid, text) VALUES (new.rowid, new.text); END",
    "CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN "
    "INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.rowid, old.text); END",
    "CREATE TRIGGER memories_fts_update AFTER UPDATE OF content ON memories BEGIN "
    "INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.rowid, old.text); "
    "INSERT INTO memories_fts(rowid, text) VALUES (new.rowid, new.text); END",
    "INSERT INTO memories_fts(memories_fts) VALUES ('rebuild')",
)

# PostgreSQL: an expression GIN index; queries must repeat the exact expression to use it.
PG_TSVECTOR = "to_tsvector('simple', coalesce(content->>'text', ''))"
_PG_FTS = (f"CREATE INDEX IF NOT EXISTS ix_memories_fts ON memories USING GIN ({PG_TSVECTOR})",)

# PostgreSQL since migration 7: the tsvector stored in a generated column with the GIN index on it.
# The expression index found the matches, but ranking them (ts_rank) parsed each matching row's text
# again: 140 ms a query at 100k fragments. Like SQLite's `text`, the column is not in the table
# definition above, so reading memories never fetches it.
PG_TEXT_SEARCH = "text_search"
_PG_STORED_FTS = (
    f"ALTER TABLE memories ADD COLUMN IF NOT EXISTS {PG_TEXT_SEARCH} tsvector GENERATED ALWAYS AS ({PG_TSVECTOR}) STORED",
    f"CREATE INDEX IF NOT EXISTS ix_memories_text_search ON memories USING GIN ({PG_TEXT_SEARCH})",
    "DROP INDEX IF EXISTS ix_memories_fts",
)


async def _create_tables(conn: AsyncConnection, *names: str) -> None:
    tables = [metadata.tables[name] for name in names]
    await conn.run_sync(lambda sync: metadata.create_all(sync, tables=tables, checkfirst=True))


async def add_column(conn: AsyncConnection, table: str, column: sa.Column) -> None:
    """`ALTER TABLE .. ADD COLUMN` unless present (fresh installs already have today's columns)."""

    def existing(sync: sa.Connection) -> set[str]:
        return {c["name"] for c in sa.inspect(sync).get_columns(table)}

    if column.name in await conn.run_sync(existing):
        return
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    await conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")


async def _v1_core(conn: AsyncConnection) -> None:
    await _create_tables(
        conn, "agents", "entities", "worlds", "rooms", "participants", "memories", "embeddings",
        "relationships", "tasks", "cache", "logs",
    )


async def _v2_text_search(conn: AsyncConnection) -> None:
    for statement in _SQLITE_FTS if conn.dialect.name == "sqlite" else _PG_FTS:
        await conn.exec_driver_sql(statement)


async def _v3_usage_and_unique(conn: AsyncConnection) -> None:
    await _create_tables(conn, "model_usage")
    await add_column(
        conn, "memories", sa.Column("is_unique", sa.Boolean, nullable=False, server_default=sa.false())
    )


async def _v4_run_state(conn: AsyncConnection) -> None:
    await add_column(conn, "memories", sa.Column("run_state", sa.String(16)))
    await conn.run_sync(lambda sync: pending_index.create(sync, checkfirst=True))


async def _v5_send_budgets(conn: AsyncConnection) -> None:
    """Created on SQLite too, though its single process keeps its budgets in memory: one schema for both."""
    await _create_tables(conn, "send_budgets")


async def _v6_preparing(conn: AsyncConnection) -> None:
    await conn.run_sync(lambda sync: preparing_index.create(sync, checkfirst=True))


async def _v7_stored_tsvector(conn: AsyncConnection) -> None:
    """PostgreSQL only (SQLite's FTS5 table stores its index already). Rewrites the memories table once."""
    if conn.dialect.name == "postgresql":
        for statement in _PG_STORED_FTS:
            await conn.exec_driver_sql(statement)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[AsyncConnection], Awaitable[None]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core tables", _v1_core),
    Migration(2, "full-text search on memory text", _v2_text_search),
    Migration(3, "model usage accounting; memories.is_unique", _v3_usage_and_unique),
    Migration(4, "durable processing state of received messages", _v4_run_state),
    Migration(5, "send budgets shared across processes", _v5_send_budgets),
    Migration(6, "index of messages being prepared", _v6_preparing),
    Migration(7, "stored tsvector for PostgreSQL full-text ranking", _v7_stored_tsvector),
)

LATEST_VERSION = MIGRATIONS[-1].version
