"""Done-when of issue #11 part 3 through the real Telegram connector: `python -m bot` against the
fake Bot API and a fake OpenAI that calls SCHEDULE_MESSAGE natively; the process is stopped
after the reminder is scheduled and a new one on the same data directory delivers it to the chat."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from tests.fakes.openai_server import FakeOpenAI, ToolCalls
from tests.fakes.telegram_api import FakeTelegram
from tests.server_helpers import env_for, xml_reply
from tests.test_telegram_e2e import TOKEN, start_bot, telegram  # noqa: F401 - the fixture


async def stop_bot(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), 30)


async def test_remind_me_in_3_seconds_reaches_the_telegram_chat_across_a_restart(
    tmp_path: Path, telegram: FakeTelegram  # noqa: F811 - the fixture
) -> None:
    async with FakeOpenAI(reply=xml_reply("Hi.")) as model:
        model.script(ToolCalls([("SCHEDULE_MESSAGE", {"text": "stretch", "in_seconds": 3})]),
                     "Sure, I'll remind you in 3 seconds.")
        env = env_for(tmp_path, model.base_url, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_ROOT=telegram.root,
                      SHUTDOWN_TIMEOUT="5")
        user = FakeTelegram.user()
        chat = FakeTelegram.private_chat(user)
        process, log_path = await start_bot(tmp_path, env)
        try:
            await telegram.wait_for("setMyCommands", timeout=30)
            asked = time.monotonic()  # the clock the fake stamps its calls with
            telegram.push({"message": telegram.message(user, chat, "remind me in 3 seconds to stretch")})
            (reply,) = await telegram.wait_for("sendMessage", timeout=20)
            assert reply.params["text"] == "Sure, I'll remind you in 3 seconds."
        finally:
            assert await stop_bot(process) == 0
        assert len(telegram.calls_to("sendMessage")) == 1  # stopped before the reminder was due
        process, _ = await start_bot(tmp_path, env)
        try:
            _, reminder = await telegram.wait_for("sendMessage", count=2, timeout=30)
        finally:
            assert await stop_bot(process) == 0
    assert str(reminder.params["chat_id"]) == str(chat["id"])
    assert reminder.params["text"] == "Reminder for Ada Lovelace: stretch"
    assert reminder.at - asked >= 3
    assert len(telegram.calls_to("sendMessage")) == 2
