"""SqlStore behaviour on every backend (`store` fixture: SQLite always, PostgreSQL with TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from bot.settings import Settings
from bot.store.base import ModelUsage
from bot.store.factory import create_store
from bot.store.schema import LATEST_VERSION, memories, schema_version
from bot.store.sql import SqlStore, normalize_url
from bot.store.vector import VectorIndex
from bot.types import (
    Agent,
    ChannelType,
    Content,
    Entity,
    Memory,
    MemoryType,
    Relationship,
    Room,
    RoomState,
    Task,
    World,
)


def memory(agent_id: uuid.UUID, room_id: uuid.UUID, text: str = "hi", **fields: object) -> Memory:
    fields.setdefault("entity_id", uuid.uuid4())
    return Memory(agent_id=agent_id, room_id=room_id, content=Content(text=text), **fields)


@contextmanager
def count_statements(store: SqlStore) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    direct = store.direct_statements
    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", record)
        statements.extend(["direct insert"] * (store.direct_statements - direct))


# Lifecycle and schema ---------------------------------------------------------------------------
async def test_ping_and_init_is_idempotent(store: SqlStore, agent_id: uuid.UUID) -> None:
    room = uuid.uuid4()
    await store.create_memory(memory(agent_id, room))
    await store.init()
    await store.init()
    assert await store.ping()
    assert await store.count_memories(agent_id=agent_id, room_id=room) == 1
    async with store.engine.connect() as conn:
        versions = (await conn.execute(sa.select(schema_version.c.version))).scalars().all()
    assert sorted(versions) == list(range(1, LATEST_VERSION + 1))


async def test_upgrade_from_previous_version_keeps_data(raw_store: SqlStore) -> None:
    assert await raw_store.migrate(2) == 2
    agent, room, entity = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with raw_store.engine.begin() as conn:
        # Release 2's memories table had neither is_unique (v3) nor run_state and its indexes (v4, v6).
        await conn.exec_driver_sql("DROP INDEX ix_memories_pending")
        await conn.exec_driver_sql("DROP INDEX ix_memories_preparing")
        await conn.exec_driver_sql("ALTER TABLE memories DROP COLUMN is_unique")
        await conn.exec_driver_sql("ALTER TABLE memories DROP COLUMN run_state")
        await conn.execute(
            memories.insert().values(
                id=str(uuid.uuid4()), agent_id=str(agent), room_id=str(room), entity_id=str(entity),
                type="messages", content={"text": "remember the blue door"}, meta={"k": 1}, created_at=1000,
            )
        )
    await raw_store.init()
    await raw_store.init()
    [old] = await raw_store.get_memories(agent_id=agent, room_id=room)
    assert old.content.text == "remember the blue door"
    assert old.metadata == {"k": 1} and old.unique is False
    assert [m.memory.id for m in await raw_store.search_memories_by_text("door", agent_id=agent)] == [old.id]
    await raw_store.record_model_usage([ModelUsage(
        agent_id=agent, provider="openai", model_type="TEXT_SMALL", model="m", prompt_tokens=1, completion_tokens=2
    )])
    assert (await raw_store.usage_totals(agent_id=agent)).calls == 1
    assert await raw_store.create_memory(memory(agent, room, unique=True))
    assert await raw_store.count_memories(agent_id=agent, room_id=room) == 2


def test_normalize_url() -> None:
    assert normalize_url("postgres://u:p@h:5/db") == "postgresql+asyncpg://u:p@h:5/db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    with pytest.raises(ValueError):
        normalize_url("mysql://h/db")


async def test_factory_creates_sqlite_file_under_data_dir(tmp_path: Path) -> None:
    store = create_store(Settings(data_dir=tmp_path / "data", database_url=None))
    try:
        await store.init()
        assert (tmp_path / "data" / "parley.db").exists()
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await store.close()


# Agents, entities, worlds, rooms, participants ------------------------------------------------
async def test_agents(store: SqlStore) -> None:
    agent = Agent(id=uuid.uuid4(), name="Eliza", character={"bio": ["hi"]})
    await store.upsert_agent(agent)
    await store.upsert_agent(agent.model_copy(update={"name": "Eliza 2", "enabled": False}))
    stored = await store.get_agent(agent.id)
    assert stored is not None and stored.name == "Eliza 2" and not stored.enabled
    assert stored.character == {"bio": ["hi"]}
    assert [a.id for a in await store.list_agents()] == [agent.id]
    assert await store.get_agent(uuid.uuid4()) is None


async def test_upsert_entity_merges_names_and_metadata(store: SqlStore, agent_id: uuid.UUID) -> None:
    entity_id = uuid.uuid4()
    await store.upsert_entity(Entity(id=entity_id, agent_id=agent_id, names=["ann", "Ann"], metadata={"a": 1, "b": 1}))
    await store.upsert_entity(Entity(id=entity_id, agent_id=agent_id, names=["annie", "ann"], metadata={"b": 2}))
    entity = await store.get_entity(entity_id)
    assert entity is not None
    assert entity.names == ["ann", "Ann", "annie"]
    assert entity.metadata == {"a": 1, "b": 2}
    other = Entity(id=uuid.uuid4(), agent_id=agent_id, names=["bob"])
    await store.upsert_entity(other)
    assert [e.id for e in await store.get_entities([other.id, uuid.uuid4(), entity_id])] == [other.id, entity_id]


async def test_worlds_rooms_participants(store: SqlStore, agent_id: uuid.UUID) -> None:
    world = World(id=uuid.uuid4(), agent_id=agent_id, name="guild", server_id="1")
    await store.upsert_world(world)
    await store.upsert_world(world.model_copy(update={"name": "guild 2"}))
    assert (await store.get_world(world.id)).name == "guild 2"
    room = Room(id=uuid.uuid4(), agent_id=agent_id, name="a", source="discord", type=ChannelType.GROUP, world_id=world.id)
    lone = Room(id=uuid.uuid4(), agent_id=agent_id, name="b", source="telegram", type=ChannelType.DM)
    await store.upsert_room(room)
    await store.upsert_room(lone)
    assert (await store.get_room(room.id)).world_id == world.id
    assert [r.id for r in await store.get_rooms(agent_id)] == [room.id, lone.id]
    assert [r.id for r in await store.get_rooms(agent_id, world.id)] == [room.id]

    entity = uuid.uuid4()
    await store.add_participant(entity, room.id)
    await store.add_participant(entity, room.id)
    assert [(p.entity_id, p.state) for p in await store.get_participants(room.id)] == [(entity, None)]
    await store.set_participant_state(room.id, entity, RoomState.FOLLOWED)
    assert await store.get_participant_state(room.id, entity) is RoomState.FOLLOWED
    await store.set_participant_state(room.id, entity, None)
    assert await store.get_participant_state(room.id, entity) is None
    assert await store.get_participant_state(room.id, uuid.uuid4()) is None


# Memories --------------------------------------------------------------------------------------
async def test_create_memory_is_idempotent_and_one_statement(store: SqlStore, agent_id: uuid.UUID) -> None:
    room = uuid.uuid4()
    first = memory(agent_id, room, "hello", metadata={"x": [1]})
    with count_statements(store) as statements:
        assert await store.create_memory(first)
    assert len(statements) == 1
    assert not await store.create_memory(first.model_copy(update={"content": Content(text="changed")}))
    assert await store.count_memories(agent_id=agent_id, room_id=room) == 1
    stored = await store.get_memory(first.id)
    assert stored == first


async def test_get_memories_order_bounds_and_filters(store: SqlStore, agent_id: uuid.UUID) -> None:
    room, other_room, speaker = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for at in range(1, 6):
        await store.create_memory(memory(agent_id, room, f"m{at}", created_at=at * 10, entity_id=speaker))
    await store.create_memory(memory(agent_id, other_room, "elsewhere", created_at=35))
    await store.create_memory(memory(agent_id, room, "a fact", created_at=45, type=MemoryType.FACT))
    await store.create_memory(memory(uuid.uuid4(), room, "another agent", created_at=46))

    with count_statements(store) as statements:
        newest = await store.get_memories(agent_id=agent_id, room_id=room)
    assert len(statements) == 1
    assert [m.content.text for m in newest] == ["m5", "m4", "m3", "m2", "m1"]
    assert [m.content.text for m in await store.get_memories(agent_id=agent_id, room_id=room, count=2)] == ["m5", "m4"]
    window = await store.get_memories(agent_id=agent_id, room_id=room, before=50, after=10)
    assert [m.created_at for m in window] == [40, 30, 20]
    assert len(await store.get_memories(agent_id=agent_id, count=None)) == 6
    assert [m.content.text for m in await store.get_memories(agent_id=agent_id, entity_id=speaker, count=1)] == ["m5"]
    facts = await store.get_memories(agent_id=agent_id, room_id=room, type=MemoryType.FACT)
    assert [m.content.text for m in facts] == ["a fact"]
    assert await store.count_memories(agent_id=agent_id) == 6
    assert await store.count_memories(agent_id=agent_id, room_id=room, entity_id=speaker) == 5
    assert await store.count_memories(agent_id=agent_id, type=MemoryType.FACT) == 1


async def test_update_and_delete_memories(store: SqlStore, agent_id: uuid.UUID) -> None:
    room = uuid.uuid4()
    original = memory(agent_id, room, "typo")
    await store.create_memory(original)
    edited = original.model_copy(update={"content": Content(text="fixed"), "metadata": {"edited": True}})
    assert await store.update_memory(edited)
    stored = await store.get_memory(original.id)
    assert stored.content.text == "fixed" and stored.metadata == {"edited": True}
    assert [m.memory.id for m in await store.search_memories_by_text("fixed", agent_id=agent_id)] == [original.id]
    assert await store.search_memories_by_text("typo", agent_id=agent_id) == []
    assert not await store.update_memory(memory(agent_id, room))

    assert await store.delete_memory(original.id)
    assert not await store.delete_memory(original.id)
    assert await store.get_memory(original.id) is None
    for _ in range(3):
        await store.create_memory(memory(agent_id, room))
    await store.create_memory(memory(agent_id, room, type=MemoryType.FACT))
    assert await store.delete_room_memories(room, MemoryType.MESSAGE) == 3
    assert await store.count_memories(agent_id=agent_id, room_id=room, type=MemoryType.FACT) == 1
    assert await store.delete_room_memories(room) == 1


# Embedding search --------------------------------------------------------------------------------
async def test_embedding_search_ranks_filters_and_ignores_other_dimensions(
    store: SqlStore, agent_id: uuid.UUID
) -> None:
    room, other_room, speaker = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    exact = memory(agent_id, room, "exact", embedding=[2.0, 0.0, 0.0, 0.0], entity_id=speaker)
    close = memory(agent_id, room, "close", embedding=[0.9, 0.1, 0.0, 0.0])
    far = memory(agent_id, room, "far", embedding=[0.0, 0.0, 1.0, 0.0])
    elsewhere = memory(agent_id, other_room, "elsewhere", embedding=[1.0, 0.05, 0.0, 0.0])
    fact = memory(agent_id, room, "fact", embedding=[1.0, 0.2, 0.0, 0.0], type=MemoryType.FACT)
    small = memory(agent_id, room, "3-dim", embedding=[1.0, 0.0, 0.0])
    foreign = memory(uuid.uuid4(), room, "other agent", embedding=[1.0, 0.0, 0.0, 0.0])
    for m in (exact, close, far, elsewhere, fact, small, foreign):
        await store.create_memory(m)

    query = [1.0, 0.0, 0.0, 0.0]
    hits = await store.search_memories_by_embedding(query, agent_id=agent_id, count=10)
    assert [h.memory.content.text for h in hits] == ["exact", "elsewhere", "close", "fact", "far"]
    assert hits[0].score == pytest.approx(1.0)
    assert hits[0].memory.embedding == [2.0, 0.0, 0.0, 0.0]
    assert [h.memory.id for h in await store.search_memories_by_embedding(query, agent_id=agent_id, count=2)] == [
        exact.id, elsewhere.id,
    ]
    in_room = await store.search_memories_by_embedding(query, agent_id=agent_id, room_id=room, type=MemoryType.MESSAGE)
    assert [h.memory.id for h in in_room] == [exact.id, close.id, far.id]
    by_speaker = await store.search_memories_by_embedding([0, 0, 1, 0], agent_id=agent_id, entity_id=speaker)
    assert [h.memory.id for h in by_speaker] == [exact.id]
    above = await store.search_memories_by_embedding(query, agent_id=agent_id, min_score=0.5)
    assert far.id not in {h.memory.id for h in above} and len(above) == 4
    assert [h.memory.id for h in await store.search_memories_by_embedding([1, 0, 0], agent_id=agent_id)] == [small.id]
    assert await store.search_memories_by_embedding([1, 0], agent_id=agent_id) == []
    assert await store.search_memories_by_embedding(query, agent_id=agent_id, room_id=uuid.uuid4()) == []


async def test_memories_embedded_in_another_size_are_listed_oldest_first(store: SqlStore, agent_id: uuid.UUID) -> None:
    room = uuid.uuid4()
    old = [memory(agent_id, room, f"old {i}", embedding=[1.0, 0.0, 0.0], created_at=1000 + i) for i in range(3)]
    fact = memory(agent_id, room, "old fact", embedding=[0.0, 1.0, 0.0], type=MemoryType.FACT, created_at=999)
    fragment = memory(agent_id, room, "old fragment", embedding=[0.0, 1.0, 0.0], type=MemoryType.FRAGMENT)
    current = memory(agent_id, room, "current", embedding=[1.0, 0.0, 0.0, 0.0])
    foreign = memory(uuid.uuid4(), room, "other agent", embedding=[1.0, 0.0, 0.0])
    for m in (*old, fact, fragment, current, foreign):
        await store.create_memory(m)
    kinds = (MemoryType.MESSAGE, MemoryType.FACT)
    found = await store.embedded_in_other_size(agent_id, 4, types=kinds, count=10)
    assert [m.id for m in found] == [fact.id, *(m.id for m in old)], "oldest first, no fragment, no other agent"
    first_page = await store.embedded_in_other_size(agent_id, 4, types=kinds, count=2)
    assert [m.id for m in first_page] == [fact.id, old[0].id]
    next_page = await store.embedded_in_other_size(agent_id, 4, types=kinds, count=2, after=first_page[-1])
    assert [m.id for m in next_page] == [old[1].id, old[2].id]
    await store.set_embeddings([(m.id, [0.0, 0.0, 0.0, 1.0]) for m in found])
    assert await store.embedded_in_other_size(agent_id, 4, types=kinds) == []
    assert await store.count_embeddings(agent_id) == {4: 5, 3: 1}


async def test_embedding_index_follows_writes_after_loading(store: SqlStore, agent_id: uuid.UUID) -> None:
    room = uuid.uuid4()
    first = memory(agent_id, room, "first", embedding=[1.0, 0.0])
    await store.create_memory(first)
    assert len(await store.search_memories_by_embedding([1, 0], agent_id=agent_id)) == 1

    later = memory(agent_id, room, "later", embedding=[0.0, 1.0])
    await store.create_memory(later)
    assert [h.memory.id for h in await store.search_memories_by_embedding([0, 1], agent_id=agent_id, count=1)] == [
        later.id
    ]
    plain = memory(agent_id, room, "embedded afterwards")
    await store.create_memory(plain)
    await store.set_embeddings([(plain.id, [-1.0, 0.0]), (uuid.uuid4(), [1.0, 1.0])])
    assert (await store.get_memory(plain.id)).embedding == [-1.0, 0.0]
    assert [h.memory.id for h in await store.search_memories_by_embedding([-1, 0], agent_id=agent_id, count=1)] == [
        plain.id
    ]
    await store.update_memory(first.model_copy(update={"embedding": [0.0, -1.0]}))
    assert [h.memory.id for h in await store.search_memories_by_embedding([0, -1], agent_id=agent_id, count=1)] == [
        first.id
    ]
    await store.delete_memory(later.id)
    assert later.id not in {h.memory.id for h in await store.search_memories_by_embedding([0, 1], agent_id=agent_id)}
    fresh = SqlStore(store.engine)
    assert len(await fresh.search_memories_by_embedding([1, 0], agent_id=agent_id)) == 2
    await store.delete_room_memories(room)
    assert await store.search_memories_by_embedding([1, 0], agent_id=agent_id) == []


@pytest.mark.parametrize("min_score", [None, 0.05])
def test_vector_index_returns_the_exact_top_rows_under_every_filter(min_score: float | None) -> None:
    """Against a brute-force ranking: narrow filters (scoring only the matching rows), broad ones
    (scoring all, the rest excluded), a bar, and counts beyond the matches."""
    rng = np.random.default_rng(7)
    size, dim = 3000, 16
    vectors = rng.standard_normal((size, dim)).astype(np.float32)
    rooms = [f"room{i % 50}" for i in range(size)]
    types = ["fragments" if i % 10 else "messages" for i in range(size)]
    index = VectorIndex(dim)
    index.load([f"m{i}" for i in range(size)], rooms, ["someone"] * size, types, vectors)
    index.remove([f"m{i}" for i in range(0, size, 7)])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for query in rng.standard_normal((5, dim)).astype(np.float32):
        scores = unit @ (query / np.linalg.norm(query))
        for filters in ({}, {"room_id": "room3"}, {"type": "fragments"}, {"room_id": "room4", "type": "messages"}):
            for count in (1, 7, 400):
                expected = sorted(
                    ((f"m{i}", float(scores[i])) for i in range(size)
                     if i % 7 and rooms[i] == filters.get("room_id", rooms[i])
                     and types[i] == filters.get("type", types[i])
                     and (min_score is None or scores[i] >= min_score)),
                    key=lambda hit: -hit[1])[:count]
                found = index.search(query, count, min_score=min_score, **filters)
                assert [i for i, _ in found] == [i for i, _ in expected]
                np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], rtol=1e-5)
    assert index.search(vectors[0], 5, room_id="nowhere") == []
    assert index.search(vectors[0], 5, min_score=1.1) == []


# Text search --------------------------------------------------------------------------------------
async def test_text_search_matches_any_word_safely_with_filters(store: SqlStore, agent_id: uuid.UUID) -> None:
    room, other_room = uuid.uuid4(), uuid.uuid4()
    pizza = memory(agent_id, room, "I love pizza with pineapple")
    both = memory(agent_id, room, "pizza and pasta, pasta and pizza")
    pasta = memory(agent_id, other_room, "Pasta is great")
    fact = memory(agent_id, room, "User likes pizza", type=MemoryType.FACT)
    for m in (pizza, both, pasta, fact, memory(uuid.uuid4(), room, "pizza for someone else")):
        await store.create_memory(m)

    hits = await store.search_memories_by_text("PIZZA", agent_id=agent_id)
    assert {h.memory.id for h in hits} == {pizza.id, both.id, fact.id}
    ranked = await store.search_memories_by_text("pizza pasta", agent_id=agent_id, count=10)
    assert ranked[0].memory.id == both.id
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    nasty = 'pasta" OR (NEAR* :col ^x) \'; DROP TABLE memories; -- & | ! <->'
    assert {h.memory.id for h in await store.search_memories_by_text(nasty, agent_id=agent_id)} == {both.id, pasta.id}
    assert await store.search_memories_by_text("?!...", agent_id=agent_id) == []
    in_room = await store.search_memories_by_text("pasta", agent_id=agent_id, room_id=other_room)
    assert [h.memory.id for h in in_room] == [pasta.id]
    facts = await store.search_memories_by_text("pizza", agent_id=agent_id, type=MemoryType.FACT)
    assert [h.memory.id for h in facts] == [fact.id]
    by_entity = await store.search_memories_by_text("pizza", agent_id=agent_id, entity_id=pizza.entity_id)
    assert [h.memory.id for h in by_entity] == [pizza.id]
    assert len(await store.search_memories_by_text("pizza", agent_id=agent_id, count=1)) == 1


async def test_text_search_ranks_only_rows_that_pass_the_filters(store: SqlStore, agent_id: uuid.UUID) -> None:
    """The best `count` of the agent's matching fragments, however many better matches other agents
    or other memory types hold (the ranking is limited before the rows are read)."""
    room = uuid.uuid4()
    fragments = [memory(agent_id, room, " ".join(["pizza"] * k + ["dough"] * (6 - k)), type=MemoryType.FRAGMENT)
                 for k in range(1, 6)]
    louder = [memory(uuid.uuid4(), room, "pizza " * 6, type=MemoryType.FRAGMENT) for _ in range(8)]
    louder += [memory(agent_id, room, "pizza " * 6) for _ in range(8)]
    for m in (*fragments, *louder):
        await store.create_memory(m)
    hits = await store.search_memories_by_text("pizza", agent_id=agent_id, type=MemoryType.FRAGMENT, count=3)
    assert [h.memory.id for h in hits] == [m.id for m in fragments[:1:-1]]  # five, four and three pizzas
    assert hits[0].score > hits[1].score > hits[2].score
    every = await store.search_memories_by_text("pizza", agent_id=agent_id, type=MemoryType.FRAGMENT, count=50)
    assert [h.memory.id for h in every] == [m.id for m in reversed(fragments)]


# Relationships, tasks, cache, logs, usage ---------------------------------------------------------
async def test_relationships_merge(store: SqlStore, agent_id: uuid.UUID) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await store.upsert_relationship(
        Relationship(agent_id=agent_id, source_entity_id=a, target_entity_id=b, tags=["friend"], metadata={"n": 1})
    )
    await store.upsert_relationship(
        Relationship(agent_id=agent_id, source_entity_id=a, target_entity_id=b, tags=["colleague", "friend"],
                     metadata={"m": 2})
    )
    await store.upsert_relationship(Relationship(agent_id=agent_id, source_entity_id=c, target_entity_id=a, tags=["x"]))
    [ab] = await store.get_relationships(agent_id=agent_id, entity_id=b)
    assert ab.tags == ["friend", "colleague"] and ab.metadata == {"n": 1, "m": 2}
    assert len(await store.get_relationships(agent_id=agent_id, entity_id=a)) == 2
    tagged = await store.get_relationships(agent_id=agent_id, entity_id=a, tags=["friend", "colleague"])
    assert [r.target_entity_id for r in tagged] == [b]
    assert await store.get_relationships(agent_id=uuid.uuid4(), entity_id=a) == []


async def test_tasks_crud(store: SqlStore, agent_id: uuid.UUID) -> None:
    room = uuid.uuid4()
    task = Task(agent_id=agent_id, name="remind", room_id=room, tags=["queue", "repeat"], metadata={"every": 60})
    await store.create_task(task)
    await store.create_task(Task(agent_id=agent_id, name="other", tags=["queue"]))
    assert [t.id for t in await store.get_tasks(agent_id=agent_id, room_id=room)] == [task.id]
    assert len(await store.get_tasks(agent_id=agent_id, tags=["queue"])) == 2
    assert [t.id for t in await store.get_tasks(agent_id=agent_id, tags=["queue", "repeat"])] == [task.id]
    assert [t.name for t in await store.get_tasks(agent_id=agent_id, name="other")] == ["other"]
    await store.update_task(task.model_copy(update={"description": "later", "metadata": {"every": 5}}))
    [stored] = await store.get_tasks(agent_id=agent_id, name="remind")
    assert stored.description == "later" and stored.metadata == {"every": 5} and stored.tags == ["queue", "repeat"]
    await store.delete_task(task.id)
    assert [t.name for t in await store.get_tasks(agent_id=agent_id)] == ["other"]


async def test_cache_ttl_and_prefix(store: SqlStore, agent_id: uuid.UUID) -> None:
    now = [1_000_000.0]
    store.clock = lambda: now[0]
    await store.set_cache(agent_id, "a:1", {"v": 1})
    await store.set_cache(agent_id, "a:2", [1, 2], ttl_seconds=10)
    await store.set_cache(agent_id, "a_x", "underscore")
    await store.set_cache(agent_id, "ab%", "percent")
    await store.set_cache(uuid.uuid4(), "a:3", "other agent")
    assert await store.get_cache(agent_id, "a:1") == {"v": 1}
    assert await store.list_cache(agent_id, "a:") == {"a:1": {"v": 1}, "a:2": [1, 2]}
    assert await store.list_cache(agent_id, "a_") == {"a_x": "underscore"}
    assert await store.list_cache(agent_id, "ab%") == {"ab%": "percent"}
    now[0] += 11
    assert await store.get_cache(agent_id, "a:2") is None
    assert await store.list_cache(agent_id, "a:") == {"a:1": {"v": 1}}
    await store.set_cache(agent_id, "a:2", "again", ttl_seconds=5)
    assert await store.get_cache(agent_id, "a:2") == "again"
    await store.set_cache(agent_id, "a:1", {"v": 2})
    assert await store.get_cache(agent_id, "a:1") == {"v": 2}
    assert await store.delete_cache(agent_id, "a:1")
    assert not await store.delete_cache(agent_id, "a:1")
    assert await store.get_cache(agent_id, "missing") is None


async def test_logs_newest_first(store: SqlStore, agent_id: uuid.UUID) -> None:
    room, entity = uuid.uuid4(), uuid.uuid4()
    await store.log(agent_id=agent_id, type="run", body={"n": 1}, room_id=room, entity_id=entity)
    await store.log(agent_id=agent_id, type="action", body={"n": 2})
    await store.log(agent_id=agent_id, type="run", body={"n": 3})
    assert [entry["body"]["n"] for entry in await store.get_logs(agent_id=agent_id)] == [3, 2, 1]
    assert [entry["body"]["n"] for entry in await store.get_logs(agent_id=agent_id, type="run")] == [3, 1]
    [entry] = await store.get_logs(agent_id=agent_id, room_id=room)
    assert entry["room_id"] == room and entry["entity_id"] == entity and entry["type"] == "run"
    assert len(await store.get_logs(agent_id=agent_id, count=1)) == 1


async def test_usage_totals(store: SqlStore, agent_id: uuid.UUID) -> None:
    room, entity = uuid.uuid4(), uuid.uuid4()
    assert (await store.usage_totals(agent_id=agent_id)).calls == 0
    await store.record_model_usage([
        ModelUsage(agent_id=agent_id, provider="openai", model_type="TEXT_SMALL", model="mini",
                   prompt_tokens=10, completion_tokens=5, room_id=room, entity_id=entity),
        ModelUsage(agent_id=agent_id, provider="anthropic", model_type="TEXT_LARGE", model="big",
                   prompt_tokens=100, completion_tokens=50, room_id=room),
    ])
    await store.record_model_usage([ModelUsage(agent_id=agent_id, provider="openai", model_type="TEXT_EMBEDDING",
                                               model="e", prompt_tokens=7, completion_tokens=0)])
    totals = await store.usage_totals(agent_id=agent_id)
    assert (totals.calls, totals.prompt_tokens, totals.completion_tokens) == (3, 117, 55)
    in_room = await store.usage_totals(agent_id=agent_id, room_id=room)
    assert (in_room.calls, in_room.prompt_tokens, in_room.completion_tokens) == (2, 110, 55)
    assert (await store.usage_totals(agent_id=agent_id, entity_id=entity)).prompt_tokens == 10


async def test_concurrent_writes(store: SqlStore, agent_id: uuid.UUID) -> None:
    room, entity_id = uuid.uuid4(), uuid.uuid4()
    await asyncio.gather(
        *(store.create_memory(memory(agent_id, room, f"m{i}", embedding=[1.0, float(i)])) for i in range(40)),
        *(store.upsert_entity(Entity(id=entity_id, agent_id=agent_id, names=[f"n{i}"])) for i in range(10)),
        store.search_memories_by_embedding([1.0, 0.0], agent_id=agent_id),
    )
    assert await store.count_memories(agent_id=agent_id, room_id=room) == 40
    assert (await store.get_entity(entity_id)).names == [f"n{i}" for i in range(10)]
    assert len(await store.search_memories_by_embedding([1.0, 0.0], agent_id=agent_id, count=100)) == 40


async def test_postgresql_connections_per_process_are_bounded_by_database_pool_size(tmp_path: Path) -> None:
    """DATABASE_POOL_SIZE connections for queries plus one for the room coordinator, never more:
    the call that needs one more waits for a free one instead of opening it."""
    import os

    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("set TEST_DATABASE_URL to run the PostgreSQL store tests")
    store = create_store(Settings(_env_file=None, data_dir=tmp_path, database_url=url, database_pool_size=2))
    try:
        pool = store.engine.pool
        assert (pool.size(), pool._max_overflow) == (3, 0)
        held = [await store.engine.connect() for _ in range(3)]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await store.engine.connect()  # the fourth waits for one of the three
        for conn in held:
            await conn.close()
    finally:
        await store.close()


async def test_a_fast_write_after_close_opens_no_connection(tmp_path: Path) -> None:
    """An SQLite connection's worker thread keeps a process from exiting: once the store is closed,
    the fast writer refuses instead of opening one that no one would close."""
    store = create_store(Settings(_env_file=None, data_dir=tmp_path, database_url=None))
    await store.init()
    agent = uuid.uuid4()
    await store.create_memory(memory(agent, uuid.uuid4(), "before"))
    await store.close()
    workers = {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}
    assert store._fast is not None
    with pytest.raises(sa.exc.InvalidRequestError, match="the store is closed"):
        await store._fast.run(store._fast.prepare(memories.insert()), {})
    assert {t for t in threading.enumerate() if "_connection_worker_thread" in t.name} <= workers
