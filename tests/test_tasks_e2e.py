"""Done-when of issue #11 part 3, in real time: "remind me in 3 seconds to stretch" reaches the
same chat, also when the process is restarted between asking and the reminder being due."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.types import ModelType
from tests.runtime_helpers import ScriptedModel, make_chat, xml_reply
from tests.task_helpers import RoomConnector, shutdown, task_runtime, tool_reply


@pytest.mark.parametrize("restart", [False, True])
async def test_remind_me_in_3_seconds_to_stretch(tmp_path, restart):
    RoomConnector.reset()
    model = ScriptedModel()
    model.defaults[ModelType.TEXT_SMALL] = "IGNORE"
    model.script(ModelType.TEXT_LARGE, tool_reply("SCHEDULE_MESSAGE", {"text": "stretch", "in_seconds": 3}),
                 xml_reply("Sure, I'll remind you in 3 seconds."))
    runtime = await task_runtime(tmp_path, model, time.time)
    chat = make_chat(runtime, "sams-chat")
    asked = time.time()
    await chat.send("remind me in 3 seconds to stretch")
    assert [c.text for c in chat.sent] == ["Sure, I'll remind you in 3 seconds."]
    if restart:
        await shutdown(runtime)  # the process goes away before the reminder is due ...
        assert RoomConnector.delivered == []
        runtime = await task_runtime(tmp_path, model, time.time)  # ... and a new one starts on the same file
    async with asyncio.timeout(10):
        await RoomConnector.arrived.wait()
    [(room, text, at)] = RoomConnector.delivered
    assert (room, text) == ("sams-chat", "Reminder for Sam: stretch")
    assert 3 <= at - asked < 4.5  # on time: not before it is due, and within the timer's slack
    await shutdown(runtime)
    assert len(RoomConnector.delivered) == 1
