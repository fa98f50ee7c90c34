"""Several characters in one process (issue #16): memory and per-message cost.

1. RSS: `python -m bot` as a real process with N characters (default 10), each with its own Telegram
   bot (one fake Bot API per token) and the first also on Discord (the fake gateway), the real OpenAI
   provider against the fake model API; RSS is read from /proc once every bot is up and the process
   has idled. The same with one character gives the baseline. Goal: <= 150 MB with 10. Then each
   bot gets one DM and answers it, and RSS is read again after as long an idle: what the first
   message imports and builds (numpy for its embedding, the vector index...) shows there. Which modules
   load depends on what is installed (httpx imports rich and pygments for its command line when they
   are there; httpcore imports trio), so `--python` runs the bot with another interpreter, e.g. a venv
   with only parley's dependencies (`pip install -r` of pyproject's list), as a dyno has.
2. Per-message overhead: bench/pipeline.py's DMs through the primary runtime (its instant model, its
   rooms) with N agents loaded in the App versus one.

    python bench/characters.py [--characters 10] [--messages 500] [--idle 5] [--python PATH] [--json]
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import InstantModel, Rooms, percentile, sentence  # noqa: E402
from bench.report import print_figures  # noqa: E402
from bot.agents import configure_agents, load_characters  # noqa: E402
from bot.app import App  # noqa: E402
from bot.settings import Settings  # noqa: E402
from tests.fakes.discord_api import TOKEN as DISCORD_TOKEN  # noqa: E402
from tests.fakes.discord_api import FakeDiscord  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram  # noqa: E402

REPLY = "<response><thought>ok</thought><actions>REPLY</actions><text>Hello.</text></response>"


def token(index: int) -> str:
    return f"{100000000 + index}:AA{'x' * 31}{index:02d}"


def write_characters(directory: Path, count: int, secrets: list[dict[str, str]] | None = None) -> list[Path]:
    """`count` character files, each its own name (so its own agent id) and its own secrets."""
    paths = []
    for index in range(count):
        path = directory / f"character{index}.json"
        path.write_text(json.dumps({
            "name": f"Character{index}", "system": f"You are Character{index}.",
            "bio": [f"Character{index} is one of several characters in a benchmark."],
            "settings": {"secrets": secrets[index] if secrets else {}},
        }))
        paths.append(path)
    return paths


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS in /proc")


async def idle_process(count: int, idle: float, directory: Path,
                       python: str = sys.executable) -> tuple[float, float, float]:
    """RSS (MB) of `python -m bot` running `count` characters once every bot is up and it idled for
    `idle` seconds, the share of one core it used while idle (%), and RSS once every bot answered one
    DM and the process idled as long again."""
    telegrams = [FakeTelegram(token(i), username=f"bench{i}_bot", bot_id=7_100_000 + i) for i in range(count)]
    discord = FakeDiscord()
    model = FakeOpenAI(reply=REPLY)
    for fake in (*telegrams, discord, model):
        await fake.start()
    try:
        secrets = [{"TELEGRAM_BOT_TOKEN": token(i), "TELEGRAM_API_ROOT": fake.root} for i, fake in enumerate(telegrams)]
        secrets[0].update(DISCORD_API_TOKEN=DISCORD_TOKEN, DISCORD_API_BASE=discord.api_base,
                          DISCORD_GATEWAY_URL=discord.gateway_url)
        paths = write_characters(directory, count, secrets)
        env = {**os.environ, "CHARACTERS": ",".join(map(str, paths)), "DATA_DIR": str(directory / "data"),
               "PORT": "0", "HOST": "127.0.0.1", "OPENAI_API_KEY": "sk-bench-0123456789abcdef",
               "OPENAI_BASE_URL": model.base_url, "MODEL_PROVIDERS": "openai", "LOG_LEVEL": "WARNING",
               "TELEGRAM_BOT_TOKEN": "", "DISCORD_API_TOKEN": ""}
        process = await asyncio.create_subprocess_exec(
            python, "-m", "bot", cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            for fake in telegrams:
                await fake.wait_for("setMyCommands", timeout=60)
            await discord.wait_connected(timeout=60)
            cpu_before = cpu_seconds(process.pid)
            await asyncio.sleep(idle)
            if process.returncode is not None:
                raise RuntimeError((await process.stderr.read()).decode()[-2000:])
            idle_rss, cpu = rss_mb(process.pid), round(100 * (cpu_seconds(process.pid) - cpu_before) / idle, 1)
            user = FakeTelegram.user()
            for fake in telegrams:
                fake.push({"message": fake.message(user, FakeTelegram.private_chat(user), "hello there")})
            for fake in telegrams:
                await fake.wait_for("sendMessage", timeout=60)
            await asyncio.sleep(idle)
            if process.returncode is not None:
                raise RuntimeError((await process.stderr.read()).decode()[-2000:])
            return idle_rss, cpu, rss_mb(process.pid)
        finally:
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), 30)
    finally:
        for fake in (*telegrams, discord, model):
            await fake.stop()


async def message_cost(count: int, messages: int, directory: Path) -> dict[str, float]:
    """Sequential DMs to the primary agent with `count` agents loaded (pipeline.py's instant model)."""
    data = directory / f"pipeline-{count}"
    paths = write_characters(directory, count)
    settings = Settings(_env_file=None, characters=paths, data_dir=data, port=0, host="127.0.0.1",
                        rate_limit_per_minute=0, model_providers=[])
    app = App(settings, agents=configure_agents(settings, load_characters(settings)),
              model_plugins=[InstantModel().plugin()])
    await app.start()
    try:
        rooms, rng = Rooms(app.runtime), random.Random(7)
        user, room = await rooms.connect(0)
        for _ in range(20):  # a full conversation in the prompt, as pipeline.py warms up
            await rooms.send(user, room, sentence(rng))
        started = time.perf_counter()
        latencies = [await rooms.send(user, room, sentence(rng)) * 1000 for _ in range(messages)]
        elapsed = time.perf_counter() - started
    finally:
        await app.stop()
    return {"p50_ms": round(statistics.median(latencies), 3), "p95_ms": round(percentile(latencies, 95), 3),
            "msgs_per_s": round(messages / elapsed, 1)}


async def run(count: int, messages: int, idle: float, python: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"characters": count, "messages": messages, "python": python}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for n in (1, count):
            (base / f"rss{n}").mkdir()
            plural = "s" if n > 1 else ""
            rss, cpu, after = await idle_process(n, idle, base / f"rss{n}", python)
            figures[f"idle_rss_mb_{n}_character{plural}"], figures[f"idle_cpu_pct_{n}_character{plural}"] = rss, cpu
            figures[f"rss_mb_after_one_dm_each_{n}_character{plural}"] = after
        for n in (1, count):
            (base / f"msg{n}").mkdir()
            for key, value in (await message_cost(n, messages, base / f"msg{n}")).items():
                figures[f"{key}_{n}_agent{'s' if n > 1 else ''}"] = value
    figures["rss_mb_per_added_character"] = round(
        (figures[f"idle_rss_mb_{count}_characters"] - figures["idle_rss_mb_1_character"]) / (count - 1), 1)
    figures["rss_goal_met"] = figures[f"idle_rss_mb_{count}_characters"] <= 150
    figures["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--characters", type=int, default=10)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to idle before reading RSS")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter that runs the bot for the RSS figures (default: this one)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = parser.parse_args()
    print_figures(asyncio.run(run(max(2, args.characters), args.messages, args.idle, args.python)), args.json)


if __name__ == "__main__":
    main()
