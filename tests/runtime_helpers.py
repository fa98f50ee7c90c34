"""Helpers to run the real runtime and pipeline with a scripted in-process model.

The model is the process boundary here: a `ScriptedModel` stands in for an LLM API and records
every call, so tests can assert what the pipeline asked and how often.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.character import Character, parse_character
from bot.ids import create_unique_uuid
from bot.plugin import ModelOutput, ModelRegistration, Plugin, Priority
from bot.runtime import AgentRuntime
from bot.settings import Settings
from bot.store.base import Store
from bot.types import ChannelType, Content, Entity, Memory, MentionContext, ModelType, Room, World


@dataclass
class Streamed:
    """A reply the scripted model writes in `chunks` pieces over `seconds`, to `params["stream"]`
    when the pipeline gave it one (as a streaming API would), returning the whole text after."""

    text: str
    chunks: int = 10
    seconds: float = 0.5

    def pieces(self) -> list[str]:
        size = max(1, -(-len(self.text) // self.chunks))
        return [self.text[i:i + size] for i in range(0, len(self.text), size)]


Reply = str | Streamed | Exception | Callable[[dict[str, Any]], Awaitable[Any] | Any]


def xml_reply(text: str, actions: str = "REPLY", providers: str = "", options: str = "") -> str:
    extra = f"<options>{options}</options>" if options else ""
    return (f"<response><thought>ok</thought><actions>{actions}</actions><providers>{providers}</providers>"
            f"<text>{text}</text>{extra}</response>")


@dataclass
class ScriptedModel:
    """Answers model calls from per-type scripts (FIFO), else from a default per type."""

    scripts: dict[ModelType, list[Reply]] = field(default_factory=dict)
    defaults: dict[ModelType, Reply] = field(default_factory=dict)
    calls: list[tuple[ModelType, dict[str, Any]]] = field(default_factory=list)

    def script(self, model_type: ModelType, *replies: Reply) -> None:
        self.scripts.setdefault(model_type, []).extend(replies)

    def count(self, model_type: ModelType) -> int:
        return sum(1 for t, _ in self.calls if t == model_type)

    def prompts(self, model_type: ModelType) -> list[str]:
        return [p.get("prompt", "") for t, p in self.calls if t == model_type]

    def handler(self, model_type: ModelType):
        async def handle(runtime: AgentRuntime, params: dict[str, Any]) -> Any:
            self.calls.append((model_type, params))
            queue = self.scripts.get(model_type)
            reply = queue.pop(0) if queue else self.defaults.get(model_type)
            if reply is None:
                raise RuntimeError(f"no scripted reply for {model_type}")
            if isinstance(reply, Exception):
                raise reply
            if callable(reply):
                reply = reply(params)
                if asyncio.iscoroutine(reply):
                    reply = await reply
            if isinstance(reply, Streamed):
                on_text = params.get("stream")
                pieces = reply.pieces()
                for piece in pieces:
                    await asyncio.sleep(reply.seconds / len(pieces))
                    if on_text is not None:
                        await on_text(piece)
                reply = reply.text
            if isinstance(reply, str):
                return ModelOutput(reply, model="scripted", prompt_tokens=len(params.get("prompt", "")) // 4,
                                   completion_tokens=len(reply) // 4)
            return reply

        return handle

    def plugin(self, *types: ModelType, name: str = "scripted", structured: bool = True,
               native_tools: bool = False) -> Plugin:
        types = types or (ModelType.TEXT_SMALL, ModelType.TEXT_LARGE)
        return Plugin(name=name, priority=Priority.MODEL, models=[
            ModelRegistration(t, self.handler(t), provider=name, structured=structured, native_tools=native_tools)
            for t in types])


def make_character(**fields: Any) -> Character:
    data = {"name": "Ava", "bio": ["Ava is a helpful test character."], **fields}
    return parse_character(data).character


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values = {"data_dir": tmp_path, "port": 0, "rate_limit_per_minute": 0, **overrides}
    return Settings(_env_file=None, **values)


@dataclass
class Chat:
    """A room and a user in it, with helpers to send messages through the real pipeline."""

    runtime: AgentRuntime
    room: Room
    user: Entity
    world: World | None = None
    sent: list[Content] = field(default_factory=list)

    async def callback(self, content: Content) -> list[str]:
        self.sent.append(content)
        return [f"test:sent:{uuid.uuid4()}"]

    def message(self, text: str, *, mention: bool = False, reply: bool = False, **memory: Any) -> Memory:
        return Memory(
            entity_id=self.user.id, agent_id=self.runtime.agent_id, room_id=self.room.id,
            world_id=self.world.id if self.world else None,
            content=Content(text=text, source="test", channel_type=self.room.type,
                            mention_context=MentionContext(is_mention=mention, is_reply=reply)),
            **memory,
        )

    async def send(self, text: str, **kwargs: Any):
        await self.runtime.ensure_connection(self.user, self.room, self.world)
        ticket = await self.runtime.receive_message(self.message(text, **kwargs), self.callback)
        return await ticket.outcome


def make_chat(runtime: AgentRuntime, key: str = "room1", channel: ChannelType = ChannelType.DM,
              user: str = "Sam") -> Chat:
    agent = runtime.agent_id
    world = World(id=create_unique_uuid(agent, f"test:world:{key}"), agent_id=agent, name=f"world {key}")
    room = Room(id=create_unique_uuid(agent, f"test:room:{key}"), agent_id=agent, name=key, source="test",
                type=channel, channel_id=key, world_id=world.id)
    entity = Entity(id=create_unique_uuid(agent, f"test:user:{user}"), agent_id=agent, names=[user])
    return Chat(runtime, room, entity, world)


async def start_runtime(store: Store, settings: Settings, model: ScriptedModel, *extra: Plugin,
                        character: Character | None = None, model_types: tuple[ModelType, ...] = ()) -> AgentRuntime:
    from plugins.bootstrap import bootstrap_plugin

    runtime = AgentRuntime(character or make_character(), settings, store,
                           [bootstrap_plugin(), model.plugin(*model_types), *extra])
    await runtime.initialize()
    STARTED.append(runtime)
    return runtime


STARTED: list[AgentRuntime] = []  # stopped by the store fixtures before they close their store


async def stop_started(store: Store) -> None:
    """Stop the runtimes `start_runtime` made on `store`, so no run or background task outlives it."""
    for runtime in [r for r in STARTED if r.store is store]:
        STARTED.remove(runtime)
        await runtime.stop()
