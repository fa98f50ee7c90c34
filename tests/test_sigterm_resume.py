"""SIGTERM mid-burst loses nothing and doubles nothing (issue #12's fault case): `python -m bot`
with the real python-telegram-bot against the fake Bot API is stopped right after it fetched a
burst of DMs (so Telegram considers them delivered); every message is answered exactly once
across that run and the next one on the same data directory."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from tests.cluster_helpers import TOKEN, BotProcess
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.server_helpers import env_for, xml_reply

BURST = 10


async def _fetched(telegram: FakeTelegram, timeout: float = 30.0) -> None:
    """Until a getUpdates call has handed the bot some updates (it confirms them by its next offset)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not telegram.fetches:
        assert asyncio.get_running_loop().time() < deadline, "the bot never fetched the burst"
        await asyncio.sleep(0.005)


async def test_sigterm_right_after_a_burst_is_fetched_loses_and_doubles_nothing(tmp_path: Path) -> None:
    async with FakeTelegram(TOKEN) as telegram, FakeOpenAI(reply=xml_reply("Got it.")) as model:
        env = env_for(tmp_path, model.base_url, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_ROOT=telegram.root,
                      RATE_LIMIT_PER_MINUTE="0")
        users = [FakeTelegram.user(1000 + i, f"User{i}", f"user{i}") for i in range(BURST)]
        first = await BotProcess.start("first", env, tmp_path / "first.log")
        try:
            await telegram.wait_for("setMyCommands", timeout=30)
            for user in users:
                telegram.push({"message": telegram.message(user, FakeTelegram.private_chat(user), "hello")})
            await _fetched(telegram)
            await asyncio.sleep(0.05)  # the fault case: SIGTERM 50 ms after the fetch
        finally:
            first_exit = await first.stop()
        assert first_exit == 0, first.log_tail()
        answered_first = len(telegram.calls_to("sendMessage"))

        second = await BotProcess.start("second", env, tmp_path / "second.log")  # the same data directory
        try:
            await telegram.wait_for("sendMessage", count=BURST, timeout=60)
        finally:
            second_exit = await second.stop()  # after a clean stop no run is left to reply later
        assert second_exit == 0, second.log_tail()
        replies = Counter(call.params["chat_id"] for call in telegram.calls_to("sendMessage"))
        assert replies == Counter({str(user["id"]): 1 for user in users}), (answered_first, replies)
