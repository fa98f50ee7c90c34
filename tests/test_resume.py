"""Durable processing (#12): messages stored but not answered before a stop are answered on the
next start, at most once; messages older than RESUME_WINDOW are expired, not answered."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import ClassVar

import pytest

from bot.plugin import Connector, Plugin
from bot.runtime import ShuttingDown
from bot.types import Content, EventType, ModelType, Room, now_ms
from tests.runtime_helpers import ScriptedModel, make_chat, make_settings, start_runtime, xml_reply


class RoomSender(Connector):
    """Owns the "test" rooms: the only way a resumed message's reply can go out."""

    source = "test"
    sent: ClassVar[list[Content]] = []

    async def send_to_room(self, room: Room, content: Content) -> list[str]:
        self.sent.append(content)
        return [f"test:{len(self.sent)}"]


@pytest.fixture
def model() -> ScriptedModel:
    m = ScriptedModel()
    m.defaults[ModelType.TEXT_LARGE] = xml_reply("Back now!")
    return m


def _states(db: Path) -> dict[str, str | None]:
    with sqlite3.connect(db) as conn:
        return {text: state for text, state in conn.execute(
            "SELECT json_extract(content, '$.text'), run_state FROM memories")}


async def test_messages_refused_at_shutdown_are_answered_once_on_the_next_start(
    sqlite_store, tmp_path: Path, model: ScriptedModel
) -> None:
    RoomSender.sent = []
    plugin = Plugin(name="room-sender", description="test", services=[RoomSender])
    first = await start_runtime(sqlite_store, make_settings(tmp_path), model, plugin)
    chat = make_chat(first)
    await first.ensure_connection(chat.user, chat.room, chat.world)
    answered = await first.receive_message(chat.message("answered before the stop"), chat.callback)
    await answered.outcome
    await first.message_handler.drain(1)
    late = [chat.message(f"late {n}") for n in range(3)]
    stale = chat.message("from long ago", created_at=now_ms() - 3_600_000)
    for message in [stale, *late]:
        with pytest.raises(ShuttingDown):
            await first.receive_message(message, chat.callback)
    await first.stop()
    db = make_settings(tmp_path).sqlite_path
    assert {_states(db)[m.content.text] for m in [stale, *late]} == {"queued"}

    for _ in range(2):  # a second restart must not answer anything again
        runtime = await start_runtime(sqlite_store, make_settings(tmp_path, resume_window=300), model, plugin)
        await runtime.message_handler.resume(runtime.settings.resume_window)
        await runtime.message_handler.drain(5)
        await runtime.stop()
    # Stored in the same millisecond, resumed in the order they arrived.
    assert [c.in_reply_to for c in RoomSender.sent] == [m.id for m in late]
    assert len(chat.sent) == 1
    states = _states(db)
    assert [states[m.content.text] for m in late] == ["done"] * 3
    assert states["from long ago"] == "expired" and states["answered before the stop"] == "done"


async def test_a_message_arriving_while_resume_runs_is_answered_once(
    sqlite_store, tmp_path: Path, model: ScriptedModel
) -> None:
    """Connectors receive before `resume` runs at start-up: a message stored by this process but
    not yet queued when resume reads the store is not resumed as well (it would be answered twice)."""
    RoomSender.sent = []
    plugin = Plugin(name="room-sender", description="test", services=[RoomSender])
    runtime = await start_runtime(sqlite_store, make_settings(tmp_path), model, plugin)
    chat = make_chat(runtime)
    await runtime.ensure_connection(chat.user, chat.room, chat.world)

    async def resume_now(payload: dict) -> None:  # resume runs between storing and queueing
        await runtime.message_handler.resume(300)

    runtime.on(EventType.MESSAGE_RECEIVED, resume_now)
    outcome = await (await runtime.receive_message(chat.message("hello during start-up"), chat.callback)).outcome
    await runtime.message_handler.drain(5)
    await runtime.stop()
    assert outcome.status == "completed" and len(chat.sent) == 1 and RoomSender.sent == []
