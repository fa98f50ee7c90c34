"""Storage benchmark: the hot paths of the memory store at 100k memories, on SQLite and PostgreSQL.

    python bench/storage.py [--backend sqlite|postgres|both] [--n 100000] [--rooms 1000] [--json]

Setup bulk-inserts `n` messages spread over `rooms` rooms, each with a random `dim`-dimensional
embedding. Then it times single `create_memory` calls, "last 32 messages of a room" reads and
top-10 embedding searches (after the index load, which is reported on its own). PostgreSQL runs in
a throw-away schema of `--pg-url` (default TEST_DATABASE_URL or the local test database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.store.schema import embeddings, memories  # noqa: E402
from bot.store.sql import SqlStore  # noqa: E402
from bot.types import Content, Memory  # noqa: E402

GOALS_MS = {"create_p50": 1.0, "last32_p50": 2.0, "search_p95": 50.0}
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar".split()
BATCH = 5_000


@asynccontextmanager
async def sqlite_store() -> AsyncIterator[SqlStore]:
    with tempfile.TemporaryDirectory() as directory:
        store = SqlStore.from_url(f"sqlite:///{directory}/bench.db")
        try:
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def postgres_store(url: str) -> AsyncIterator[SqlStore]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        store = SqlStore.from_url(url, connect_args={"server_settings": {"search_path": schema}})
        try:
            yield store
        finally:
            await store.close()
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


async def populate(store: SqlStore, agent_id: uuid.UUID, room_ids: list[uuid.UUID], n: int, dim: int) -> float:
    """Bulk insert (executemany per batch) — setup speed only, not what the bot does per message."""
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    base = int(time.time() * 1000) - n
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        vectors = rng.standard_normal((count, dim), dtype=np.float32)
        rows, vector_rows = [], []
        for offset in range(count):
            i = start + offset
            memory_id = str(uuid.uuid4())
            rows.append({
                "id": memory_id, "agent_id": str(agent_id), "room_id": str(room_ids[i % len(room_ids)]),
                "entity_id": str(uuid.UUID(int=i % 5000)), "world_id": None, "type": "messages",
                "content": {"text": " ".join(random.choices(WORDS, k=8))}, "meta": {}, "created_at": base + i,
                "is_unique": False,
            })
            vector_rows.append({"memory_id": memory_id, "dim": dim, "vector": vectors[offset].tobytes()})
        async with store.engine.begin() as conn:
            await conn.execute(memories.insert(), rows)
            await conn.execute(embeddings.insert(), vector_rows)
    # Settle the bulk load (statistics, vacuum, checkpoint) so background maintenance doesn't
    # compete with the timed steady-state calls.
    async with store.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if store.engine.dialect.name == "postgresql":
            await autocommit.exec_driver_sql("VACUUM ANALYZE")
            await autocommit.exec_driver_sql("CHECKPOINT")
        else:
            await autocommit.exec_driver_sql("PRAGMA optimize")
            await autocommit.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


async def timed(samples: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    """Milliseconds per call, after a few untimed warm-up calls."""
    for i in range(5):
        await call(i)
    times = []
    for i in range(samples):
        started = time.perf_counter()
        await call(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def run(backend: str, store: SqlStore, n: int, room_count: int, dim: int) -> dict[str, Any]:
    await store.init()
    agent_id = uuid.uuid4()
    room_ids = [uuid.uuid4() for _ in range(room_count)]
    setup_s = await populate(store, agent_id, room_ids, n, dim)

    statements: list[str] = []
    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    def message(i: int) -> Memory:
        return Memory(agent_id=agent_id, room_id=room_ids[i % room_count], entity_id=uuid.uuid4(),
                      content=Content(text=f"benchmark message {i} " + " ".join(random.choices(WORDS, k=6))))

    creates = [message(i) for i in range(1005)]
    create_ms = await timed(1000, lambda i: store.create_memory(creates[i]))
    statements.clear()
    direct = store.direct_statements
    await store.create_memory(message(10_000))
    create_statements = len(statements) + store.direct_statements - direct  # SQLite fast path included

    last32_ms = await timed(1000, lambda i: store.get_memories(agent_id=agent_id, room_id=room_ids[i % room_count],
                                                                count=32))
    statements.clear()
    await store.get_memories(agent_id=agent_id, room_id=room_ids[0], count=32)
    last32_statements = len(statements)

    rng = np.random.default_rng(2)
    queries = rng.standard_normal((205, dim), dtype=np.float32).tolist()
    started = time.perf_counter()
    await store.search_memories_by_embedding(queries[0], agent_id=agent_id, count=10)
    load_ms = (time.perf_counter() - started) * 1000
    search_ms = await timed(200, lambda i: store.search_memories_by_embedding(queries[i], agent_id=agent_id, count=10))
    room_search_ms = await timed(
        200, lambda i: store.search_memories_by_embedding(queries[i], agent_id=agent_id, count=10,
                                                          room_id=room_ids[i % room_count])
    )
    text_ms = await timed(200, lambda i: store.search_memories_by_text(
        f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}", agent_id=agent_id, count=10,
        room_id=room_ids[i % room_count]))

    return {
        "backend": backend,
        "n": n,
        "rooms": room_count,
        "dim": dim,
        "setup_s": round(setup_s, 1),
        "create_p50_ms": round(statistics.median(create_ms), 3),
        "create_p95_ms": round(percentile(create_ms, 95), 3),
        "create_statements": create_statements,
        "last32_p50_ms": round(statistics.median(last32_ms), 3),
        "last32_p95_ms": round(percentile(last32_ms, 95), 3),
        "last32_statements": last32_statements,
        "index_load_ms": round(load_ms, 1),
        "search_p50_ms": round(statistics.median(search_ms), 3),
        "search_p95_ms": round(percentile(search_ms, 95), 3),
        "room_search_p95_ms": round(percentile(room_search_ms, 95), 3),
        "text_search_room_p95_ms": round(percentile(text_ms, 95), 3),
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        ("setup (bulk insert)", "setup_s", "s", None),
        ("create_memory p50", "create_p50_ms", "ms", "create_p50"),
        ("create_memory p95", "create_p95_ms", "ms", None),
        ("statements per create", "create_statements", "", None),
        ("last 32 of a room p50", "last32_p50_ms", "ms", "last32_p50"),
        ("last 32 of a room p95", "last32_p95_ms", "ms", None),
        ("statements per last-32", "last32_statements", "", None),
        ("embedding index load", "index_load_ms", "ms", None),
        ("top-10 search p50", "search_p50_ms", "ms", None),
        ("top-10 search p95", "search_p95_ms", "ms", "search_p95"),
        ("top-10 in one room p95", "room_search_p95_ms", "ms", None),
        ("text search in room p95", "text_search_room_p95_ms", "ms", None),
    ]
    header = f"{'metric':<26}" + "".join(f"{r['backend']:>14}" for r in results) + f"{'goal':>10}"
    lines = [header, "-" * len(header)]
    for label, key, unit, goal in rows:
        cells = "".join(f"{r[key]:>12}{unit:<2}" for r in results)
        goal_text = f"<= {GOALS_MS[goal]:g}ms" if goal else ""
        lines.append(f"{label:<26}{cells}{goal_text:>10}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rooms", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--pg-url", default=os.environ.get("TEST_DATABASE_URL",
                                                           "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    args = parser.parse_args()

    results = []
    if args.backend in ("sqlite", "both"):
        async with sqlite_store() as store:
            results.append(await run("sqlite", store, args.n, args.rooms, args.dim))
    if args.backend in ("postgres", "both"):
        async with postgres_store(args.pg_url) as store:
            results.append(await run("postgres", store, args.n, args.rooms, args.dim))
    print(table(results))
    if args.json:
        print(json.dumps({r["backend"]: r for r in results}))


if __name__ == "__main__":
    asyncio.run(main())
