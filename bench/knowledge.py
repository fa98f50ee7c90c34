"""Knowledge benchmark: indexing speed, retrieval latency at 100k fragments, retrieval quality.

    python bench/knowledge.py [--pages 1000] [--questions 100] [--fragments 100000] [--json]

1. Indexing: a generated corpus of `--pages` Markdown pages (bench/knowledge_corpus.py: fictional
   products, about 3 KB and 8 sections each) written to a folder and indexed by the knowledge
   plugin with the offline embedder, from nothing to every fragment stored with its vector.
2. Latency: `--fragments` fragments (generated pages cut by the chunker, with their offline
   embeddings) bulk-inserted into SQLite (or PostgreSQL: `--postgres URL`), then the KNOWLEDGE
   provider's whole search (query embedding, full-text and vector search, fusion, budget) timed for
   200 questions; goal p95 ≤ 20 ms. Other processes on a 2-core machine stretch those times, so the
   process's CPU time per search is shown too (`search_cpu_ms`; PostgreSQL's own work is not in
   it): it hardly depends on the machine's load.
3. Quality: recall@5 over `--questions` questions whose answer sentence is in exactly one fragment
   of the indexed corpus (a question counts when one of the provider's passages holds it); goal ≥ 0.9
   with the offline embedder. The same with OpenAI-style embeddings from the fake server
   (tests/fakes/openai_server.py), whose vectors are hashes of the text: they carry no meaning, so
   that figure is what full-text search and fusion achieve when the vectors are noise — a floor,
   not a prediction for real OpenAI embeddings. Full-text alone and vectors alone are shown too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.knowledge_corpus import Page, Question, corpus, question_set  # noqa: E402
from bench.report import print_figures  # noqa: E402
from bot.character import parse_character  # noqa: E402
from bot.plugin import Plugin  # noqa: E402
from bot.runtime import AgentRuntime  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.store.factory import create_store  # noqa: E402
from bot.store.schema import embeddings, memories  # noqa: E402
from bot.store.sql import SqlStore  # noqa: E402
from bot.types import Content, Memory, MemoryType, ModelType  # noqa: E402
from plugins.knowledge.retrieval import (  # noqa: E402
    CANDIDATES,
    KNOWLEDGE_PROVIDER,
    STATS,
    Limits,
    content_words,
    knowledge_changed,
    search_knowledge,
    text_query,
)

GOALS = {"search_p95_ms": 20.0, "recall_at_5_offline": 0.9}
BATCH = 5_000
LATENCY_QUESTIONS = 200


def percentile(values: list[float], pct: float) -> float:
    return float(np.percentile(values, pct))


def bench_character():
    return parse_character({"name": "Bench", "bio": ["Bench answers questions about products."]}).character


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, port=0, model_providers=[], **overrides)


async def start(settings: Settings, *models: Plugin, store: SqlStore | None = None) -> AgentRuntime:
    runtime = AgentRuntime(bench_character(), settings, store or create_store(settings),
                           [*models, Plugin("knowledge-bench", providers=[KNOWLEDGE_PROVIDER])])
    await runtime.initialize()
    return runtime


async def stop(runtime: AgentRuntime) -> None:
    await runtime.stop()
    await runtime.store.close()


def asking(runtime: AgentRuntime, text: str) -> Memory:
    return Memory(entity_id=uuid.uuid4(), agent_id=runtime.agent_id, room_id=uuid.uuid4(),
                  content=Content(text=text, source="bench"))


async def settle(runtime: AgentRuntime) -> None:
    """What the first search after a change does once: load the vector index, count the fragments
    and sample their common words (in the background, awaited here so the figures are steady state)."""
    await search_knowledge(runtime, asking(runtime, "warm up"))
    await STATS.settled(runtime)


# 1. Indexing ----------------------------------------------------------------------------------------
def write_pages(pages: list[Page], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for page in pages:
        (folder / page.name).write_text(page.markdown, encoding="utf-8")


async def index_folder(runtime: AgentRuntime, settings: Settings) -> dict[str, Any]:
    """The knowledge plugin's start-up pass over the folder, from an empty store to every vector stored."""
    from plugins.knowledge import KnowledgeBase

    base = KnowledgeBase(settings, runtime.character)
    base.attach(runtime)
    started = time.perf_counter()
    progress = await base.index_all()
    elapsed = time.perf_counter() - started
    knowledge_changed(runtime)
    if progress.state != "ready":
        raise RuntimeError(f"indexing ended {progress.state}")
    await settle(runtime)
    fragments = await runtime.store.count_memories(agent_id=runtime.agent_id, room_id=runtime.agent_id,
                                                   type=MemoryType.FRAGMENT)
    return {"seconds": round(elapsed, 2), "pages_per_s": round(progress.documents / elapsed, 1),
            "fragments": fragments}


# 3. Quality -----------------------------------------------------------------------------------------
def holds(texts: list[str], question: Question) -> bool:
    return any(question.needle in text for text in texts)


async def recall_at_5(runtime: AgentRuntime, questions: list[Question]) -> float:
    """Share of questions one of the provider's passages answers (its default top-k, budget, threshold)."""
    limits = Limits.of(runtime)
    found = 0
    for question in questions:
        chosen = await search_knowledge(runtime, asking(runtime, question.text), limits)
        found += holds([p.memory.content.text for p, _ in chosen[:5]], question)
    return round(found / len(questions), 3)


async def vector_recall_at_5(runtime: AgentRuntime, questions: list[Question]) -> float:
    """The vector search alone, no threshold: what the embeddings find by themselves."""
    found = 0
    for question in questions:
        vector = await runtime.use_model(ModelType.TEXT_EMBEDDING, {"text": question.text})
        hits = await runtime.store.search_memories_by_embedding(vector, agent_id=runtime.agent_id, count=5,
                                                                type=MemoryType.FRAGMENT)
        found += holds([h.memory.content.text for h in hits], question)
    return round(found / len(questions), 3)


async def quality(runtime: AgentRuntime, questions: list[Question], prefix: str) -> dict[str, Any]:
    return {f"recall_at_5_{prefix}": await recall_at_5(runtime, questions),
            f"recall_at_5_{prefix}_vector_only": await vector_recall_at_5(runtime, questions)}


async def text_only_recall(settings: Settings, questions: list[Question]) -> float:
    """The same store searched with no embedding model: full text and the word-coverage bar alone."""
    runtime = await start(settings)
    try:
        return await recall_at_5(runtime, questions)
    finally:
        await stop(runtime)


async def offline_corpus(pages: list[Page], questions: list[Question], tmp: Path) -> dict[str, Any]:
    from plugins.offline_embedding import offline_embedding_plugin

    write_pages(pages, tmp / "pages")
    settings = settings_for(tmp / "offline", knowledge_path=tmp / "pages")
    runtime = await start(settings, offline_embedding_plugin())
    try:
        indexed = await index_folder(runtime, settings)
        figures = {"pages": len(pages), "fragments": indexed["fragments"], "index_seconds": indexed["seconds"],
                   "index_pages_per_s": indexed["pages_per_s"], **await quality(runtime, questions, "offline")}
    finally:
        await stop(runtime)
    figures["recall_at_5_full_text_only"] = await text_only_recall(settings, questions)
    return figures


async def fake_openai_corpus(questions: list[Question], tmp: Path) -> dict[str, Any]:
    from plugins.openai_provider import openai_plugin
    from tests.fakes.openai_server import FakeOpenAI

    fake = FakeOpenAI(embedding_dimensions=1536)
    await fake.start()
    settings = settings_for(tmp / "fake-openai", knowledge_path=tmp / "pages", openai_base_url=fake.base_url,
                            openai_api_key="sk-bench-0123456789", model_max_retries=0)
    runtime = await start(settings, openai_plugin(settings, "sk-bench-0123456789"))
    try:
        indexed = await index_folder(runtime, settings)
        return {"index_pages_per_s_fake_openai": indexed["pages_per_s"],
                **await quality(runtime, questions, "fake_openai")}
    finally:
        await stop(runtime)
        await fake.stop()


# 2. Latency at 100k fragments -----------------------------------------------------------------------
def document_rows(agent_id: uuid.UUID, pages: list[Page], count: int) -> list[dict[str, Any]]:
    """Documents and their fragments (the pages cut by the chunker) as the indexer stores them."""
    from plugins.knowledge.chunking import chunk_text
    from plugins.knowledge.indexer import fragment_id
    from plugins.knowledge.sources import document_id

    agent, now = str(agent_id), int(time.time() * 1000)
    rows: list[dict[str, Any]] = []
    fragments = 0
    for page in pages:
        chunks = chunk_text(page.markdown)[:count - fragments]
        if not chunks:
            break
        doc = document_id(agent_id, "folder", page.name)
        digest = hashlib.sha256(page.markdown.encode()).hexdigest()
        base = {"agent_id": agent, "room_id": agent, "entity_id": agent, "world_id": None, "created_at": now,
                "is_unique": False}
        rows.append({**base, "id": str(doc), "type": MemoryType.DOCUMENT.value,
                     "content": {"text": page.name, "source": "knowledge"},
                     "meta": {"knowledge": {"source": page.name, "origin": "folder", "path": None, "hash": digest,
                                            "size": len(page.markdown), "fragments": len(chunks), "shared": False,
                                            "complete": True, "embedding_dim": None}}})
        rows.extend({**base, "id": str(fragment_id(agent_id, doc, position, digest)), "type": MemoryType.FRAGMENT.value,
                     "content": {"text": chunk.text, "source": "knowledge"},
                     "meta": {"knowledge": {"document_id": str(doc), "source": page.name, "position": position,
                                            "heading": chunk.heading, "shared": False}}}
                    for position, chunk in enumerate(chunks))
        fragments += len(chunks)
    return rows


async def populate(runtime: AgentRuntime, pages: list[Page], count: int) -> None:
    """`count` fragments with their documents and offline vectors, inserted in bulk (setup, not timed)."""
    rows = document_rows(runtime.agent_id, pages, count)
    for start in range(0, len(rows), BATCH):
        batch = rows[start:start + BATCH]
        fragments = [r for r in batch if r["type"] == MemoryType.FRAGMENT.value]
        vectors = await runtime.use_model(ModelType.TEXT_EMBEDDING, {"texts": [
            f"{r['meta']['knowledge']['heading']}\n{r['content']['text']}" for r in fragments]})
        async with runtime.store.engine.begin() as conn:
            await conn.execute(memories.insert(), batch)
            await conn.execute(embeddings.insert(), [
                {"memory_id": r["id"], "dim": len(v), "vector": np.asarray(v, dtype=np.float32).tobytes()}
                for r, v in zip(fragments, vectors, strict=True)])
    # Settle the bulk load as the database would on its own in time (PostgreSQL's autovacuum), so
    # the planner uses the full-text index rather than scanning a table it has no statistics for.
    async with runtime.store.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.exec_driver_sql("ANALYZE" if runtime.store.engine.dialect.name == "postgresql"
                                         else "PRAGMA optimize")


async def timed(calls: list[Callable[[], Awaitable[Any]]]) -> list[float]:
    times = []
    for call in calls:
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def leg_latency(runtime: AgentRuntime, messages: list[Memory]) -> dict[str, float]:
    """Each search alone, as the provider calls it: where the time goes."""
    store, agent, count = runtime.store, runtime.agent_id, Limits.of(runtime).top_k * CANDIDATES
    common = STATS.common_words(runtime)
    vectors = [await runtime.use_model(ModelType.TEXT_EMBEDDING, {"text": m.content.text}) for m in messages]
    queries = [text_query(content_words(m.content.text), common) for m in messages]
    vector_ms = await timed([partial(store.search_memories_by_embedding, v, agent_id=agent, count=count,
                                     type=MemoryType.FRAGMENT, min_score=runtime.settings.knowledge_min_score)
                             for v in vectors])
    text_ms = await timed([partial(store.search_memories_by_text, q, agent_id=agent, count=count,
                                   type=MemoryType.FRAGMENT) for q in queries])
    return {"vector_search_p95_ms": round(percentile(vector_ms, 95), 2),
            "text_search_p95_ms": round(percentile(text_ms, 95), 2)}


@asynccontextmanager
async def latency_store(settings: Settings, postgres: str | None) -> AsyncIterator[SqlStore]:
    """SQLite in the temporary folder, or a throw-away schema of the PostgreSQL database."""
    if postgres is None:
        store = create_store(settings)
        try:
            yield store
        finally:
            await store.close()
        return
    from bench.storage import postgres_store

    async with postgres_store(postgres) as store:
        yield store


async def latency(fragments: int, tmp: Path, postgres: str | None) -> dict[str, Any]:
    from plugins.offline_embedding import offline_embedding_plugin

    pages = corpus(fragments // 7 + 1, seed=71)
    questions = question_set(pages, LATENCY_QUESTIONS, seed=5)
    settings = settings_for(tmp / "latency")
    async with latency_store(settings, postgres) as store:
        runtime = await start(settings, offline_embedding_plugin(), store=store)
        try:
            return await time_searches(runtime, pages, questions, fragments)
        finally:
            await runtime.stop()


async def time_searches(runtime: AgentRuntime, pages: list[Page], questions: list[Question],
                        fragments: int) -> dict[str, Any]:
    started = time.perf_counter()
    await populate(runtime, pages, fragments)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    await settle(runtime)
    first = time.perf_counter() - started
    for question in question_set(pages, 5, seed=99):
        await search_knowledge(runtime, asking(runtime, question.text))
    messages = [asking(runtime, q.text) for q in questions]
    chosen: list[list[str]] = []

    def search(message: Memory) -> Callable[[], Awaitable[Any]]:
        async def call() -> None:
            chosen.append([p.memory.content.text for p, _ in await search_knowledge(runtime, message)])
        return call

    load_before, cpu_before = os.getloadavg()[0], time.process_time()
    ms = await timed([search(m) for m in messages])
    cpu_ms = (time.process_time() - cpu_before) * 1000 / len(messages)
    load = max(load_before, os.getloadavg()[0])
    found = sum(holds(texts, q) for texts, q in zip(chosen, questions, strict=True))
    count = await runtime.store.count_memories(agent_id=runtime.agent_id, room_id=runtime.agent_id,
                                               type=MemoryType.FRAGMENT)
    legs = await leg_latency(runtime, messages)
    return {"latency_fragments": count, "latency_setup_s": round(setup, 1), "first_search_s": round(first, 2),
            # Other processes on the machine slow numpy and SQLite alike: the figures mean little above 1.
            "load_average_while_timing": round(load, 2), **legs,
            "search_p50_ms": round(statistics.median(ms), 2), "search_p95_ms": round(percentile(ms, 95), 2),
            "search_p99_ms": round(percentile(ms, 99), 2), "search_cpu_ms": round(cpu_ms, 2),
            "latency_recall_at_5_offline": round(found / len(questions), 3)}


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pages = corpus(args.pages)
    questions = question_set(pages, args.questions)
    figures: dict[str, Any] = {"questions": len(questions)}
    figures.update(await offline_corpus(pages, questions, tmp))
    if not args.skip_fake_openai:
        figures.update(await fake_openai_corpus(questions, tmp))
    if args.fragments:
        figures.update(await latency(args.fragments, tmp, args.postgres))
        figures["latency_backend"] = "postgresql" if args.postgres else "sqlite"
    figures["goals"] = GOALS
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--questions", type=int, default=105, help="at least 50; 105 asks every wording 7 times")
    parser.add_argument("--fragments", type=int, default=100_000, help="0 skips the latency part")
    parser.add_argument("--skip-fake-openai", action="store_true")
    parser.add_argument("--postgres", metavar="URL", help="time the searches on PostgreSQL (a throw-away schema)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    print_figures(figures, args.json)


if __name__ == "__main__":
    main()
