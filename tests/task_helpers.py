"""Helpers for the scheduled-task tests: a driven clock, a connector that records what reaches a
room, and a runtime with the tasks plugin on a SQLite file that outlives the runtime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from bot.plugin import Connector, Plugin, Priority
from bot.runtime import AgentRuntime
from bot.store.base import Store
from bot.store.factory import create_store
from bot.types import Content, Room
from plugins.bootstrap import bootstrap_plugin
from plugins.tasks import create_plugin
from plugins.tasks.service import TaskService
from tests.runtime_helpers import ScriptedModel, make_character, make_settings


class FakeClock:
    """Epoch seconds that move only when told; the task service subscribes and wakes on each move."""

    def __init__(self, start: float) -> None:
        self.now = start
        self._subscribers: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self.now

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def advance(self, seconds: float) -> None:
        self.set(self.now + seconds)

    def set(self, instant: float) -> None:
        self.now = instant
        for callback in self._subscribers:
            callback()


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


class RoomConnector(Connector):
    """Owns the "test" rooms: what reaches a room is recorded with the fake time it arrived."""

    source = "test"
    delivered: ClassVar[list[tuple[str, str, float]]] = []
    owners: ClassVar[set[str]] = set()  # entity names the platform vouches for as owners
    failures: ClassVar[int] = 0  # the next this-many sends raise
    arrived: ClassVar[asyncio.Event] = asyncio.Event()  # set on every delivery

    def sender_id(self, message: Any) -> str | None:
        return next((e.names[0] for e in self.runtime.room_entities(message.room_id)
                     if e.id == message.entity_id), None)

    async def is_owner(self, message: Any) -> bool:
        return self.sender_id(message) in self.owners

    @property
    def connected(self) -> bool:
        return True

    async def send_to_room(self, room: Room, content: Content) -> list[str]:
        if RoomConnector.failures:
            RoomConnector.failures -= 1
            raise ConnectionError("platform said no")
        RoomConnector.delivered.append((room.name or "", content.text, self.runtime.clock()))
        RoomConnector.arrived.set()
        return ["sent"]

    @classmethod
    def reset(cls) -> None:
        cls.delivered, cls.owners, cls.failures, cls.arrived = [], set(), 0, asyncio.Event()


def connector_plugin() -> Plugin:
    return Plugin(name="test-connector", priority=Priority.PLATFORM, services=[RoomConnector])


async def task_runtime(tmp_path: Path, model: ScriptedModel, clock: Callable[[], float], *,
                       connector: bool = True, store: Store | None = None, **settings: Any) -> AgentRuntime:
    """A runtime with bootstrap, tasks and (optionally) the recording connector; its store is a
    SQLite file in tmp_path unless given, so a second runtime there is a restart."""
    config = make_settings(tmp_path, **settings)
    plugins = [bootstrap_plugin(), model.plugin(), create_plugin(config, make_character())]
    if connector:
        plugins.append(connector_plugin())
    runtime = AgentRuntime(make_character(), config, store or create_store(config), plugins, clock=clock)
    await runtime.initialize()
    return runtime


async def shutdown(runtime: AgentRuntime) -> None:
    await runtime.stop()
    await runtime.store.close()


def service(runtime: AgentRuntime) -> TaskService:
    found = runtime.get_service(TaskService)
    assert found is not None
    return found


def tool_reply(name: str, arguments: dict[str, Any], text: str = "") -> str:
    """A model answer that calls one tool through XML <params>."""
    return (f"<response><thought>ok</thought><actions>{name}</actions><providers></providers>"
            f"<text>{text}</text><params>{json.dumps({name: arguments})}</params></response>")
