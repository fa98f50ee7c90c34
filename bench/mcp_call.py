"""MCP tool-call benchmark: one round trip to a stdio MCP server through the action (goal ≤ 5 ms p50).

A real runtime (SQLite in a temporary directory) loads the MCP plugin with the SDK-built test server
(tests/fakes/mcp_server.py) over stdio. After a warm-up, the tool `get_forecast` is called N times
(a) through its Action handler directly and (b) through runtime.run_action (role, validate, schema
check, timeout, events), one call at a time.

    python bench/mcp_call.py [--calls 500] [--warmup 50] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.character import parse_character  # noqa: E402
from bot.permissions import Role  # noqa: E402
from bot.plugin import ActionContext, State  # noqa: E402
from bot.runtime import AgentRuntime  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.store.factory import create_store  # noqa: E402
from bot.types import Content, Memory  # noqa: E402
from plugins.mcp import create_plugin  # noqa: E402

SERVER = ROOT / "tests" / "fakes" / "mcp_server.py"
ARGUMENTS = {"city": "Oslo", "days": 2}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def timed(calls: int, once: Any) -> list[float]:
    durations = []
    for _ in range(calls):
        started = time.perf_counter()
        await once()
        durations.append((time.perf_counter() - started) * 1000)
    return durations


async def run(calls: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        character = parse_character({"name": "Bench", "bio": ["A benchmark."], "settings": {"mcp": {"servers": {
            "weather": {"type": "stdio", "command": sys.executable, "args": [str(SERVER), "stdio"]}}}}}).character
        settings = Settings(_env_file=None, data_dir=Path(directory), port=0)
        plugin = create_plugin(settings, character)
        assert plugin is not None
        store = create_store(settings)
        runtime = AgentRuntime(character, settings, store, [plugin])
        started = time.perf_counter()
        await runtime.initialize()
        connect_ms = (time.perf_counter() - started) * 1000
        try:
            action = runtime.find_action("weather__get_forecast")
            if action is None:
                raise SystemExit("the MCP server did not connect")
            message = Memory(entity_id=runtime.agent_id, agent_id=runtime.agent_id, room_id=runtime.agent_id,
                             content=Content(text="bench"))
            context = ActionContext(runtime, message, State(), dict(ARGUMENTS), role=Role.MEMBER)

            async def direct() -> None:
                result = await action.handler(context)
                assert result.success, result.error

            async def checked() -> None:
                _, result = await runtime.run_action(action.name, message, State(), parameters=dict(ARGUMENTS),
                                                     role=Role.MEMBER)
                assert result.success, result.error

            await timed(warmup, direct)
            handler = await timed(calls, direct)
            run_action = await timed(calls, checked)
        finally:
            await runtime.stop()
            await store.close()
    summary = {"calls": calls, "connect_ms": round(connect_ms, 1)}
    for name, values in (("handler", handler), ("run_action", run_action)):
        summary[name] = {"p50_ms": round(statistics.median(values), 3), "p95_ms": round(percentile(values, 0.95), 3),
                         "max_ms": round(max(values), 3)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    summary = asyncio.run(run(args.calls, args.warmup))
    if args.json:
        print(json.dumps(summary))
        return
    print(f"MCP stdio tool call, {summary['calls']} calls after warm-up (connect {summary['connect_ms']} ms):")
    for name in ("handler", "run_action"):
        figures = summary[name]
        print(f"  {name:<11} p50 {figures['p50_ms']:.3f} ms  p95 {figures['p95_ms']:.3f} ms  "
              f"max {figures['max_ms']:.3f} ms")


if __name__ == "__main__":
    main()
