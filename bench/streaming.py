"""Streaming benchmark (issue #14): how soon a streamed reply shows, and what it costs the platform.

The whole bot (App: runtime, the real OpenAI provider, SQLite, HTTP server, real python-telegram-bot
and discord.py) runs in this process against fakes on 127.0.0.1: FakeOpenAI streams each reply in
`--chunks` pieces over `--seconds` (40 over 4 s), and the fake Telegram and Discord APIs enforce
their flood limits (edits count as messages). For each surface, `--replies` messages are answered,
each in its own chat, one after another:

- telegram_dm: a private chat (drafts, then the message);
- telegram_group: a group mention (one message, edited);
- discord: a guild channel mention (one message, edited);
- sse: POST /api/messages with Accept: text/event-stream.

`first_visible_ms` is the time from the model writing its first piece (the fake records it) to the
first request that shows reply text arriving at the platform fake (for SSE: the first `chunk` event
read by the client). The goal is ≤ 300 ms on every surface. `calls_per_reply` counts the platform
requests that show or change the reply (sends, edits, drafts); `rate_limited` the 429s the fakes
answered (goal: 0). Both clocks are this process's time.monotonic().

    python bench/streaming.py [--chunks 40] [--seconds 4] [--replies 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import print_figures  # noqa: E402
from bot.app import App  # noqa: E402
from connectors.discord_connector import DiscordConnector  # noqa: E402
from tests.fakes.discord_api import TOKEN as DISCORD_TOKEN  # noqa: E402
from tests.fakes.discord_api import FakeDiscord, Limits  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram  # noqa: E402
from tests.server_helpers import character, settings_for  # noqa: E402

GOAL_MS = 300
TOKEN = "123456789:AAHbenchTOKENabcdefghijklmnopqrstuvw"
REPLY = ("Streaming makes a slow model feel fast: the first words show while the rest is still being "
         "written, and the final message replaces the preview exactly once. ") * 3
TELEGRAM_SHOWING = {"sendMessage", "editMessageText", "sendMessageDraft"}


async def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError("the reply never finished")
        await asyncio.sleep(0.005)
    return result


def summary(latencies: list[float], calls: list[int], limited: int) -> dict[str, Any]:
    return {"first_visible_ms_median": round(statistics.median(latencies) * 1000, 1),
            "first_visible_ms_max": round(max(latencies) * 1000, 1),
            "calls_per_reply": f"{min(calls)}-{max(calls)}", "rate_limited": limited}


async def telegram_surface(tmp: Path, model: FakeOpenAI, replies: int, *, group: bool) -> dict[str, Any]:
    async with FakeTelegram(TOKEN, enforce_limits=True) as telegram:
        settings = settings_for(tmp, model.base_url, telegram_bot_token=TOKEN, telegram_api_root=telegram.root,
                                streaming="all")
        app = App(settings, character())
        await app.start()
        latencies, calls = [], []
        try:
            for i in range(replies):
                user = FakeTelegram.user(1000 + i, f"User{i}")
                chat = FakeTelegram.group_chat(-100_900 - i, f"Group {i}") if group else FakeTelegram.private_chat(user)
                streamed_before = len(model.chunk_times)
                telegram.push({"message": telegram.message(user, chat, "tell me about streaming", mention=group)})
                await wait_until(lambda chat=chat: telegram.chat_messages(chat["id"]) and not any(
                    "▌" in m["text"] for m in telegram.chat_messages(chat["id"])))
                await wait_until(lambda before=streamed_before: len(model.chunk_times) > before)
                first_piece = model.chunk_times[streamed_before][0]
                showing = [c for c in telegram.calls if c.method in TELEGRAM_SHOWING
                           and int(c["chat_id"]) == chat["id"] and c.get("text")]
                latencies.append(showing[0].at - first_piece)
                calls.append(len(showing))
            return summary(latencies, calls, len(telegram.limited))
        finally:
            await app.stop()


async def discord_surface(tmp: Path, model: FakeOpenAI, replies: int) -> dict[str, Any]:
    fake = FakeDiscord()
    channels = [900 + i for i in range(replies)]
    for channel in channels:
        fake.add_channel(channel, f"bench-{channel}")
    author = FakeDiscord.user(160_000_000_000_000_042, "alice")
    fake.members.append(fake.member(author))
    fake.enforce(Limits())  # Discord's own limits: 5 a channel, then 1/s; 50 requests/s overall
    await fake.start()
    DiscordConnector.guild_ready_timeout = 0.05
    settings = settings_for(tmp, model.base_url, discord_api_token=DISCORD_TOKEN, discord_api_base=fake.api_base,
                            discord_gateway_url=fake.gateway_url, should_respond_mode="mentions", streaming="all")
    app = App(settings, character())
    await app.start()
    latencies, calls = [], []
    try:
        await fake.wait_connected()
        for channel in channels:
            streamed_before = len(model.chunk_times)
            await fake.dispatch("MESSAGE_CREATE", fake.message(channel, author, "tell me", mentions=[fake.bot]))
            path = f"/channels/{channel}/messages"
            await wait_until(lambda path=path: [m for m in fake.messages if str(m["channel_id"]) == path.split("/")[2]
                                                and "▌" not in m["content"]])
            showing = [r for r in fake.requests if r.method in ("POST", "PATCH") and path in r.path]
            latencies.append(showing[0].at - model.chunk_times[streamed_before][0])
            calls.append(len(showing))
        return summary(latencies, calls, len(fake.rate_limited))
    finally:
        await app.stop()
        await fake.stop()


async def sse_surface(tmp: Path, model: FakeOpenAI, replies: int) -> dict[str, Any]:
    settings = settings_for(tmp, model.base_url, streaming="all", api_key="bench-admin-key-0123456789")
    app = App(settings, character())
    await app.start()
    latencies, calls = [], []
    headers = {"Authorization": "Bearer bench-admin-key-0123456789", "Accept": "text/event-stream"}
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(replies):
                streamed_before = len(model.chunk_times)
                first_chunk_at, chunks = None, 0
                async with http.post(f"http://127.0.0.1:{app.server.port}/api/messages", headers=headers,
                                     json={"user_id": f"bench{i}", "room_id": f"bench{i}", "text": "tell me"}) as response:
                    event = ""
                    async for raw in response.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:") and event == "chunk":
                            chunks += 1
                            first_chunk_at = first_chunk_at or time.monotonic()
                        elif line.startswith("data:") and event in ("done", "error"):
                            break
                await wait_until(lambda before=streamed_before: len(model.chunk_times) > before)
                if first_chunk_at is None:
                    raise RuntimeError("the SSE answer had no chunk events")
                latencies.append(first_chunk_at - model.chunk_times[streamed_before][0])
                calls.append(chunks)
        return summary(latencies, calls, 0)
    finally:
        await app.stop()


async def run(chunks: int, seconds: float, replies: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"model": f"{chunks} chunks over {seconds} s", "replies_per_surface": replies}
    surfaces: dict[str, Callable[[Path, FakeOpenAI], Awaitable[dict[str, Any]]]] = {
        "telegram_dm": lambda tmp, model: telegram_surface(tmp, model, replies, group=False),
        "telegram_group": lambda tmp, model: telegram_surface(tmp, model, replies, group=True),
        "discord": lambda tmp, model: discord_surface(tmp, model, replies),
        "sse": lambda tmp, model: sse_surface(tmp, model, replies),
    }
    for name, surface in surfaces.items():
        with tempfile.TemporaryDirectory() as tmp:
            async with FakeOpenAI(reply=REPLY, stream_chunks=chunks, stream_seconds=seconds) as model:
                for key, value in (await surface(Path(tmp), model)).items():
                    figures[f"{name}_{key}"] = value
    worst = max(v for k, v in figures.items() if k.endswith("first_visible_ms_max"))
    limited = sum(v for k, v in figures.items() if k.endswith("rate_limited"))
    figures["goal"] = (f"first visible ≤ {GOAL_MS} ms everywhere and no 429: "
                       f"{'met' if worst <= GOAL_MS and not limited else 'NOT met'}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--replies", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print_figures(asyncio.run(run(args.chunks, args.seconds, args.replies)), args.json)


if __name__ == "__main__":
    main()
