"""Tool-step benchmark: what one tool round costs beyond the model calls (goal: ≤ 2 ms p50).

DMs go through the whole pipeline on SQLite (a temporary directory) with bootstrap and an instant
in-process model that takes tools natively. Messages alternate between (a) one the model answers
at once and (b) one where it first calls a trivial parameterised tool (ADD {"a", "b"}), reads the
result and then answers: (b) makes one more model call, runs the tool through runtime.run_action
(role, validate, schema check, timeout), stores the call as a memory and loops once more.

    overhead = p50(b) - p50(a) - the extra model call's own time (the instant handler's, ~µs)

    python bench/tools.py [--messages 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sqlalchemy import event  # noqa: E402

from bench.pipeline import Rooms, percentile, sentence  # noqa: E402
from bench.report import print_figures  # noqa: E402
from bot.character import load_character  # noqa: E402
from bot.plugin import Action, ActionContext, ModelOutput, ModelRegistration, Plugin, Priority, ToolCall  # noqa: E402
from bot.runtime import AgentRuntime  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.store.factory import create_store  # noqa: E402
from bot.types import ModelType  # noqa: E402
from plugins.bootstrap import bootstrap_plugin  # noqa: E402

ADD_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "required": ["a", "b"]}


class InstantToolModel:
    """Answers at once. With `want_tool` set, its first round of a message calls ADD and its
    second answers with the result; otherwise it answers in the first round."""

    def __init__(self) -> None:
        self.want_tool = False
        self.calls: Counter[str] = Counter()
        self.handler_seconds = 0.0  # the model's own time, summed over TEXT_LARGE calls

    async def large(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        started = time.perf_counter()
        self.calls["TEXT_LARGE"] += 1
        steps = params.get("tool_steps") or []
        if self.want_tool and not steps and any(t.name == "ADD" for t in params.get("tools") or ()):
            output = ModelOutput("", model="instant", prompt_tokens=len(params["prompt"]) // 4, completion_tokens=12,
                                 tool_calls=[ToolCall(id=f"call-{self.calls['TEXT_LARGE']}", name="ADD",
                                                      arguments={"a": 2, "b": 3})])
        else:
            if steps and steps[-1].results != ["5"]:
                raise RuntimeError(f"the tool step went wrong: {steps[-1].results}")
            text = f"That makes {steps[-1].results[0]}." if steps else "Sounds good to me!"
            output = ModelOutput(text, model="instant", prompt_tokens=len(params["prompt"]) // 4,
                                 completion_tokens=len(text) // 4)
        self.handler_seconds += time.perf_counter() - started
        return output

    async def other(self, runtime: AgentRuntime, params: dict[str, Any]) -> Any:
        if "texts" in params:
            self.calls["TEXT_EMBEDDING"] += 1
            return np.random.default_rng().random((len(params["texts"]), 384), dtype=np.float32)
        self.calls["TEXT_SMALL"] += 1
        return ModelOutput("<response><thought>ok</thought><text>fine</text></response>", model="instant")

    def plugin(self) -> Plugin:
        return Plugin("instant", priority=Priority.MODEL, models=[
            ModelRegistration(ModelType.TEXT_LARGE, self.large, "instant", native_tools=True),
            ModelRegistration(ModelType.TEXT_SMALL, self.other, "instant"),
            ModelRegistration(ModelType.TEXT_EMBEDDING, self.other, "instant"),
        ])


async def add(ctx: ActionContext) -> str:
    return str(ctx.parameters["a"] + ctx.parameters["b"])


def tools_plugin() -> Plugin:
    return Plugin("calc", actions=[Action("ADD", "Add two integers.", add, parameters=ADD_SCHEMA)])


async def run(messages: int, data_dir: Path) -> dict[str, Any]:
    settings = Settings(_env_file=None, data_dir=data_dir, rate_limit_per_minute=0, port=0)
    character = load_character(ROOT / "characters" / "default.json").character
    store = create_store(settings)
    model = InstantToolModel()
    runtime = AgentRuntime(character, settings, store, [bootstrap_plugin(), model.plugin(), tools_plugin()])
    await runtime.initialize()
    statements: Counter[str] = Counter()
    event.listen(store.engine.sync_engine, "before_cursor_execute",
                 lambda *args, **kwargs: statements.update(["sql"]))
    rooms = Rooms(runtime)
    rng = random.Random(7)
    gc.freeze()  # as App.start does once the runtime is up

    user, room = await rooms.connect(0)
    for index in range(40):  # warm-up: a full history, both kinds of message
        model.want_tool = index % 2 == 1
        await rooms.send(user, room, sentence(rng))

    latencies: dict[str, list[float]] = {"plain": [], "tool": []}
    sql = {"plain": 0, "tool": 0}
    calls = {"plain": 0, "tool": 0}
    model_seconds = {"plain": 0.0, "tool": 0.0}
    for index in range(2 * messages):  # interleaved, so drift (history, caches, GC) hits both alike
        kind = "tool" if index % 2 else "plain"
        model.want_tool = kind == "tool"
        before_sql, before_calls, before_model = statements["sql"] + store.direct_statements, \
            model.calls["TEXT_LARGE"], model.handler_seconds
        latencies[kind].append(await rooms.send(user, room, sentence(rng)))
        sql[kind] += statements["sql"] + store.direct_statements - before_sql
        calls[kind] += model.calls["TEXT_LARGE"] - before_calls
        model_seconds[kind] += model.handler_seconds - before_model
    await runtime.message_handler.drain(5)
    await runtime.stop()
    await store.close()

    ms = {kind: [v * 1000 for v in values] for kind, values in latencies.items()}
    p50 = {kind: statistics.median(values) for kind, values in ms.items()}
    extra_model_ms = (model_seconds["tool"] - model_seconds["plain"]) / messages * 1000
    return {
        "messages_each": messages,
        "no_tool_p50_ms": round(p50["plain"], 3),
        "no_tool_p95_ms": round(percentile(ms["plain"], 95), 3),
        "one_tool_p50_ms": round(p50["tool"], 3),
        "one_tool_p95_ms": round(percentile(ms["tool"], 95), 3),
        "extra_model_call_ms": round(extra_model_ms, 4),
        "tool_step_overhead_p50_ms": round(p50["tool"] - p50["plain"] - extra_model_ms, 3),
        "model_calls_per_msg": {kind: round(n / messages, 2) for kind, n in calls.items()},
        "sql_per_msg": {kind: round(n / messages, 2) for kind, n in sql.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="messages of each kind")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(run(args.messages, Path(tmp)))
    print_figures(figures, args.json)


if __name__ == "__main__":
    main()
