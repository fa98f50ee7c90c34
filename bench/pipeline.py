"""Pipeline benchmark: N DMs through the whole pipeline with an instant in-process model on SQLite.

Measures what parley itself costs per message (store, state, template, parse, reply, store):
latency percentiles, throughput sequential and with 20 rooms at once, SQL statements and model
calls per message, prompt size, peak RSS and cold start to ready.

    python bench/pipeline.py [--messages 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sqlalchemy import event  # noqa: E402

from bench.report import print_figures  # noqa: E402
from bot.character import load_character  # noqa: E402
from bot.ids import create_unique_uuid  # noqa: E402
from bot.plugin import ModelOutput, ModelRegistration, Plugin, Priority  # noqa: E402
from bot.runtime import AgentRuntime  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.store.factory import create_store  # noqa: E402
from bot.types import ChannelType, Content, Entity, Memory, ModelType, Room  # noqa: E402
from plugins.bootstrap import bootstrap_plugin  # noqa: E402

REPLY = "<response><thought>easy</thought><actions>REPLY</actions><text>Sounds good to me!</text></response>"
WORDS = "the weekend plan is a picnic by the river with sandwiches games and music for everyone".split()


class InstantModel:
    """Answers at once; counts calls per type and keeps the last prompt."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.last_prompt = ""

    def plugin(self) -> Plugin:
        def handler(model_type: ModelType):
            async def handle(runtime: AgentRuntime, params: dict[str, Any]) -> Any:
                self.calls[model_type] += 1
                if model_type is ModelType.TEXT_EMBEDDING:
                    return np.random.default_rng().random((len(params["texts"]), 384), dtype=np.float32)
                self.last_prompt = params["prompt"]
                return ModelOutput(REPLY, model="instant", prompt_tokens=len(params["prompt"]) // 4,
                                   completion_tokens=len(REPLY) // 4)
            return handle

        types = (ModelType.TEXT_SMALL, ModelType.TEXT_LARGE, ModelType.TEXT_EMBEDDING)
        return Plugin("instant", priority=Priority.MODEL,
                      models=[ModelRegistration(t, handler(t), "instant") for t in types])


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14)))


class Rooms:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def connect(self, index: int) -> tuple[Entity, Room]:
        agent = self.runtime.agent_id
        user = Entity(id=create_unique_uuid(agent, f"bench:user:{index}"), agent_id=agent, names=[f"user{index}"])
        room = Room(id=create_unique_uuid(agent, f"bench:room:{index}"), agent_id=agent, source="bench",
                    type=ChannelType.DM, channel_id=str(index))
        await self.runtime.ensure_connection(user, room)
        return user, room

    async def send(self, user: Entity, room: Room, text: str) -> float:
        message = Memory(id=uuid.uuid4(), entity_id=user.id, agent_id=self.runtime.agent_id, room_id=room.id,
                         content=Content(text=text, source="bench", channel_type=ChannelType.DM))

        async def reply(content: Content) -> list[str]:
            return []

        started = time.perf_counter()
        ticket = await self.runtime.receive_message(message, reply)
        outcome = await ticket.outcome
        if outcome.status != "completed":
            raise RuntimeError(f"message not answered: {outcome}")
        return time.perf_counter() - started


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


async def run(messages: int, data_dir: Path) -> dict[str, Any]:
    settings = Settings(_env_file=None, data_dir=data_dir, rate_limit_per_minute=0, port=0)
    character = load_character(ROOT / "characters" / "default.json").character
    store = create_store(settings)
    model = InstantModel()
    runtime = AgentRuntime(character, settings, store, [bootstrap_plugin(), model.plugin()])
    await runtime.initialize()
    statements = Counter()
    event.listen(store.engine.sync_engine, "before_cursor_execute",
                 lambda *args, **kwargs: statements.update(["sql"]))
    rooms = Rooms(runtime)
    rng = random.Random(7)
    gc.freeze()  # as App.start does once the runtime is up

    # Warm-up fills history so prompts carry a full conversation (CONVERSATION_LENGTH messages).
    user, room = await rooms.connect(0)
    for _ in range(20):
        await rooms.send(user, room, sentence(rng))

    statements.clear()
    direct = store.direct_statements
    model.calls.clear()
    latencies = []
    started = time.perf_counter()
    for _ in range(messages):
        latencies.append(await rooms.send(user, room, sentence(rng)))
    seq_elapsed = time.perf_counter() - started
    await runtime.message_handler.embeddings.flush()
    sql_per_msg = (statements["sql"] + store.direct_statements - direct) / messages
    calls = {str(k): v / messages for k, v in model.calls.items()}
    prompt_chars = len(model.last_prompt)

    connected = [await rooms.connect(i) for i in range(1, 21)]
    per_room = max(1, messages // 20)

    async def room_burst(pair: tuple[Entity, Room]) -> None:
        for _ in range(per_room):
            await rooms.send(pair[0], pair[1], sentence(rng))

    started = time.perf_counter()
    await asyncio.gather(*(room_burst(pair) for pair in connected))
    conc_elapsed = time.perf_counter() - started

    await runtime.message_handler.drain(5)
    await runtime.stop()
    await store.close()
    ms = [v * 1000 for v in latencies]
    return {
        "messages": messages,
        "seq_msgs_per_s": round(messages / seq_elapsed, 1),
        "conc_msgs_per_s": round(per_room * 20 / conc_elapsed, 1),
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "sql_per_msg": round(sql_per_msg, 2),
        # DMs need no should-respond call, so the reply path makes TEXT_LARGE calls only; TEXT_SMALL
        # here is REFLECTION (every 8 messages) and TEXT_EMBEDDING the batched background embeddings.
        "model_calls_per_dm_reply": round(calls.get("TEXT_LARGE", 0), 3),
        "model_calls_by_type": calls,
        "prompt_chars": prompt_chars,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


COLD_START = """
import asyncio, sys, time
sys.path.insert(0, {root!r})
from bench.pipeline import cold_start_app
print(asyncio.run(cold_start_app({data!r})))
"""


async def cold_start_app(data_dir: str) -> float:
    """Runtime initialised and HTTP server listening (wall-clock time, read by the parent)."""
    from bot.app import App
    from bot.store.factory import create_store as factory

    settings = Settings(_env_file=None, data_dir=Path(data_dir), port=0, model_providers=[])
    character = load_character(ROOT / "characters" / "default.json").character
    app = App(settings, character, store_factory=factory, model_plugins=[InstantModel().plugin()])
    await app.start()
    ready = time.time()
    await app.stop()
    return ready


def cold_start(data_dir: Path) -> float:
    """From spawning a fresh interpreter to ready, on a new database (schema created too)."""
    script = COLD_START.format(root=str(ROOT), data=str(data_dir / f"cold-{uuid.uuid4().hex}"))
    spawned = time.time()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return round(float(result.stdout.strip().splitlines()[-1]) - spawned, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(args.messages, Path(tmp)))
        figures["cold_start_s"] = min(cold_start(Path(tmp)) for _ in range(3))
    print_figures(figures, args.json)


if __name__ == "__main__":
    main()
