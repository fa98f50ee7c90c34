"""AgentRuntime: one character, its plugins, its store, and the public API plugins build on."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, KeysView, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bot.character import Character
from bot.events import EventBus
from bot.history import MessageHistory
from bot.lru import LRU
from bot.permissions import Role
from bot.plugin import (
    Action,
    Connector,
    Evaluator,
    EventHandler,
    HandlerCallback,
    MessagePreparer,
    ModelRegistration,
    Plugin,
    PluginError,
    Provider,
    ProviderResult,
    Route,
    Service,
    State,
    check_unique_components,
    resolve_plugin_order,
)
from bot.runtime_actions import ActionsMixin
from bot.runtime_models import EMBEDDING_CACHE_SIZE, ModelError, ModelsMixin
from bot.settings import Settings
from bot.store.base import Store
from bot.types import (
    DIRECT_CHANNELS,
    Agent,
    Content,
    Entity,
    EventType,
    Memory,
    MemoryType,
    ModelType,
    Room,
    RoomState,
    World,
)

log = logging.getLogger(__name__)
S = TypeVar("S", bound=Service)

STATE_CACHE_SIZE = 512
CACHE_SIZE = 10_000
MEDIA_SLOTS = 2


# What a user over RATE_LIMIT_PER_MINUTE is told, on every platform and the API.
SLOW_DOWN = "You're sending messages faster than I can keep up with. Please slow down a little."


class ShuttingDown(RuntimeError):
    """Raised by `receive_message` once shutdown has begun: the message was stored, not answered."""


@dataclass
class RunOutcome:
    """How the pipeline ended for one message (`status`: completed, ignored, muted, error, duplicate)."""

    status: str
    run_id: uuid.UUID | None = None
    responses: list[Content] = field(default_factory=list)
    error: str | None = None


@dataclass
class MessageTicket:
    """Returned when a message is accepted: it is stored already; `outcome` resolves after the run."""

    message: Memory
    duplicate: bool
    outcome: asyncio.Future[RunOutcome]


class MessageHandler:
    """Implemented by the bootstrap plugin: stores a message, then schedules its processing."""

    async def receive(self, message: Memory, callback: HandlerCallback | None,
                      prepare: MessagePreparer | None = None) -> MessageTicket:
        raise NotImplementedError

    async def drain(self, timeout: float) -> None:
        """Stop taking new work and wait for runs in flight."""

    async def resume(self, window: float) -> None:
        """At start: answer messages an earlier process stored but did not answer (at most
        `window` seconds old)."""


class AgentRuntime(ModelsMixin, ActionsMixin):
    """The public API plugins build on. Models (bot/runtime_models.py) and actions
    (bot/runtime_actions.py) live in their own files; this one holds the rest."""

    def __init__(
        self,
        character: Character,
        settings: Settings,
        store: Store,
        plugins: Sequence[Plugin] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.character = character
        self.settings = settings
        self.store = store
        self.agent_id: uuid.UUID = character.agent_id
        self.clock = clock
        self.events = EventBus()
        self.plugins: list[Plugin] = resolve_plugin_order(plugins)
        check_unique_components(self.plugins)
        self.actions: list[Action] = []
        self.providers: list[Provider] = []
        self.evaluators: list[Evaluator] = []
        self.routes: list[Route] = []
        self.services: list[Service] = []
        self.message_handler: MessageHandler | None = None
        self._models: dict[ModelType, list[ModelRegistration]] = {}
        self._state_cache: OrderedDict[uuid.UUID, dict[str, ProviderResult]] = OrderedDict()
        # Connection caches: what is known to be stored already, so repeats cost no query.
        self._known_rooms: LRU[uuid.UUID, bool] = LRU(CACHE_SIZE)
        self._known_entities: LRU[tuple[uuid.UUID, uuid.UUID], tuple[str, ...]] = LRU(CACHE_SIZE)
        self._entities: LRU[uuid.UUID, Entity] = LRU(CACHE_SIZE)
        self._room_members: LRU[uuid.UUID, set[uuid.UUID]] = LRU(CACHE_SIZE)
        self._room_cache: LRU[uuid.UUID, Room] = LRU(CACHE_SIZE)
        self._states: LRU[tuple[uuid.UUID, uuid.UUID], RoomState | None] = LRU(CACHE_SIZE)
        self._background: set[asyncio.Task[Any]] = set()
        self.history = MessageHistory(store, self.agent_id, settings.conversation_length)
        self._usage: list[dict[str, Any]] = []
        self._usage_task: asyncio.Task[None] | None = None
        self._vectors = LRU(EMBEDDING_CACHE_SIZE)
        self._embedding = {}
        self._embedding_size = None
        # Audio read back for transcription is held in memory during the call (up to VOICE_MAX_MB):
        # connectors take a slot first, so a burst of voice notes cannot multiply that.
        self.media_slots = asyncio.Semaphore(MEDIA_SLOTS)
        names = [re.escape(n) for n in (character.name, character.username) if n]
        self._name_pattern = re.compile(rf"(?<!\w)@?(?:{'|'.join(names)})(?!\w)", re.IGNORECASE)

    # Lifecycle -----------------------------------------------------------------------------
    async def initialize(self) -> None:
        """Open the store, register plugins in order, then start their services."""
        await self.store.init()
        await self.store.upsert_agent(
            Agent(id=self.agent_id, name=self.character.name, username=self.character.username,
                  character=self.character.public_dict())
        )
        await self.store.upsert_entity(
            Entity(id=self.agent_id, agent_id=self.agent_id,
                   names=[n for n in (self.character.name, self.character.username) if n])
        )
        for plugin in self.plugins:
            await self._register_plugin(plugin)
        log.debug("plugins: %s", ", ".join(p.name for p in self.plugins))
        log.debug("actions: %s; tools: %s; providers: %s", ", ".join(a.name for a in self.actions if not a.is_tool),
                  ", ".join(a.name for a in self.actions if a.is_tool), ", ".join(p.name for p in self.providers))
        for plugin in self.plugins:
            for service_cls in plugin.services:
                service = service_cls(self)
                await service.start()
                self.services.append(service)

    async def _register_plugin(self, plugin: Plugin) -> None:
        if plugin.init is not None:
            await plugin.init(plugin.config, self)
        self.actions.extend(plugin.actions)
        self.providers.extend(plugin.providers)
        self.providers.sort(key=lambda p: p.position)
        self.evaluators.extend(plugin.evaluators)
        self.routes.extend(plugin.routes)
        for registration in plugin.models:
            self.register_model(registration)
        for event, handlers in plugin.events.items():
            for handler in handlers:
                self.events.on(event, handler)

    async def stop(self) -> None:
        """Stop services in reverse start order; one failing stop does not block the others.

        Runs still in progress are cut short (`App.stop` drains first, with SHUTDOWN_TIMEOUT), so
        nothing writes to the store after this returns and the store can be closed.
        """
        if self.message_handler is not None:
            await self.message_handler.drain(0)
        try:
            await self.flush_usage()
        except Exception as error:  # a lost usage batch must not keep the services and the store open
            log.error("shutdown: token usage could not be stored: %s", getattr(error, "orig", None) or error)
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping service %s failed", type(service).__name__)
        self.services.clear()

    # Settings -----------------------------------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        """Character secrets, then character settings, then settings.secrets; then this runtime's
        Settings for a setting parley knows (the environment with the character's secrets on top:
        with several characters, one never gets another's or the process's bot token), else the
        environment.

        Unlike elizaOS, falsy values such as "false" or 0 are returned as real values.
        """
        character_settings = self.character.settings
        nested = character_settings.get("secrets") if isinstance(character_settings.get("secrets"), dict) else {}
        for source in (self.character.secrets, character_settings, nested):
            if key in source and source[key] is not None:
                return source[key]
        field_name = key.lower()
        if field_name in Settings.model_fields:
            value = getattr(self.settings, field_name)
            value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            return default if value is None else value
        return os.environ.get(key, default)

    # Services -----------------------------------------------------------------------------------
    def get_service(self, service_type: type[S] | str) -> S | None:
        for service in self.services:
            if (isinstance(service_type, str) and service.service_type == service_type) or (
                isinstance(service_type, type) and isinstance(service, service_type)
            ):
                return service  # type: ignore[return-value]
        return None

    @property
    def connectors(self) -> list[Connector]:
        return [s for s in self.services if isinstance(s, Connector)]

    def connector_for(self, source: str) -> Connector | None:
        return next((c for c in self.connectors if c.source == source), None)

    # Events -------------------------------------------------------------------------------------
    def on(self, event: EventType | str, handler: EventHandler) -> None:
        self.events.on(event, handler)

    async def emit(self, event: EventType | str, payload: dict[str, Any]) -> None:
        await self.events.emit(event, payload)

    # Connections: entities, rooms, worlds -------------------------------------------------------
    async def ensure_connection(self, entity: Entity, room: Room, world: World | None = None) -> None:
        """Make sure the entity, room, world and participation exist; cached so repeats cost nothing."""
        entity_key = (entity.id, room.id)
        names = tuple(entity.names)
        if room.id not in self._known_rooms:
            if world is not None:
                await self.store.upsert_world(world)
            await self.store.upsert_room(room)
            await self.store.add_participant(self.agent_id, room.id)
            self._known_rooms[room.id] = True
            self._room_cache[room.id] = room
        if self._known_entities.get(entity_key) != names:
            await self.store.upsert_entity(entity)
            await self.store.add_participant(entity.id, room.id)
            self._known_entities[entity_key] = names
            self._entities.pop(entity.id, None)
        members = self._room_members.get(room.id)
        if members is None:
            members = self._room_members[room.id] = set()
        members.add(entity.id)
        if entity.id not in self._entities:
            self._entities[entity.id] = entity

    async def entity_names(self, entity_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Display names, from the cache when possible (one query for the ones not seen yet)."""
        missing = [i for i in entity_ids if i not in self._entities]
        if missing:
            for entity in await self.store.get_entities(missing):
                self._entities[entity.id] = entity
        names = {}
        for entity_id in entity_ids:
            entity = self._entities.get(entity_id)
            if entity is not None and entity.names:
                names[entity_id] = entity.metadata.get("preferred_name") or entity.names[0]
        if self.agent_id in entity_ids:
            names[self.agent_id] = self.character.name
        return names

    def room_entities(self, room_id: uuid.UUID) -> list[Entity]:
        """Entities seen in the room since start-up (cached; no query on the reply path)."""
        return [self._entities[i] for i in self._room_members.get(room_id, ()) if i in self._entities]

    def remember_entity(self, entity: Entity) -> None:
        self._entities[entity.id] = entity

    def known_room_ids(self) -> KeysView[uuid.UUID]:
        """Rooms seen since start-up (a live view: no copy per call)."""
        return self._known_rooms.keys()

    async def get_room(self, room_id: uuid.UUID) -> Room | None:
        room = self._room_cache.get(room_id)
        if room is None:
            room = await self.store.get_room(room_id)
            if room is not None:
                self._room_cache[room_id] = room
        return room

    async def get_room_state(self, room_id: uuid.UUID) -> RoomState | None:
        key = (room_id, self.agent_id)
        if key not in self._states:
            self._states[key] = await self.store.get_participant_state(room_id, self.agent_id)
        return self._states[key]

    async def set_room_state(self, room_id: uuid.UUID, state: RoomState | None) -> None:
        await self.store.set_participant_state(room_id, self.agent_id, state)
        self._states[(room_id, self.agent_id)] = state

    # Addressing ---------------------------------------------------------------------------------
    def names_agent(self, text: str) -> bool:
        """Whether the text names the character (by name or username, optionally with @)."""
        return self._name_pattern.search(text) is not None

    def is_addressed(self, message: Memory) -> bool:
        """The one answer to "is this message meant for the bot?": a direct chat, a mention or a
        reply to the bot (as the connector saw it), or the character's name in the text."""
        mention = message.content.mention_context
        return (
            message.content.channel_type in DIRECT_CHANNELS
            or bool(mention and (mention.is_mention or mention.is_reply))
            or self.names_agent(message.content.text)
        )

    async def role_of(self, message: Memory) -> Role:
        """Who is asking, as vouched for by the connector that received the message (never by
        anything the sender wrote); messages no platform connector owns come from visitors."""
        connector = self.connector_for(message.content.source)
        if connector is None:
            return Role.VISITOR
        if await connector.is_owner(message):
            return Role.OWNER
        if message.content.channel_type in DIRECT_CHANNELS or await connector.is_admin(message):
            return Role.ADMIN
        return Role.MEMBER

    # Messages -----------------------------------------------------------------------------------
    async def create_memory(self, memory: Memory) -> bool:
        """Store a memory (idempotent on id) and keep the room's recent history current."""
        created = await self.store.create_memory(memory)
        if created:
            self.history.add(memory)
        return created

    async def update_memory(self, memory: Memory) -> bool:
        """Replace a stored message (an edit on the platform); never triggers a reply."""
        updated = await self.store.update_memory(memory)
        if updated:
            self.history.replace(memory)
        return updated

    async def delete_memory(self, memory: Memory) -> bool:
        """Delete a stored memory; a message also leaves the room's recent history."""
        deleted = await self.store.delete_memory(memory.id)
        self.history.forget(memory)
        return deleted

    async def delete_room_memories(self, room_id: uuid.UUID, type: MemoryType | None = None) -> int:
        """Delete a room's memories (of one type); the room's recent history is reloaded."""
        deleted = await self.store.delete_room_memories(room_id, type)
        self.history.forget_room(room_id)
        return deleted

    async def replies_to(self, message: Memory) -> list[Memory]:
        """The agent's stored replies to `message`, oldest first, whichever process sent them."""
        stored = await self.store.get_memories(agent_id=self.agent_id, room_id=message.room_id,
                                               entity_id=self.agent_id, after=message.created_at - 1, count=None)
        return sorted((m for m in stored if m.content.in_reply_to == message.id), key=lambda m: m.created_at)

    async def receive_message(
        self, message: Memory, callback: HandlerCallback | None = None, *, prepare: MessagePreparer | None = None
    ) -> MessageTicket:
        """Entry point for connectors: the message is stored when this returns, then processed.

        `prepare` (optional) enriches the stored message before its run, e.g. a transcript for a
        voice note, so slow model calls never stand between receiving a message and storing it.
        """
        if self.message_handler is None:
            raise RuntimeError("no message handler: the bootstrap plugin is not loaded")
        return await self.message_handler.receive(message, callback, prepare)

    async def send_message_to_room(self, room_id: uuid.UUID, content: Content) -> list[str]:
        """Send content to any room the agent knows, through the connector that owns it."""
        room = await self.get_room(room_id)
        if room is None:
            raise LookupError(f"unknown room {room_id}")
        connector = self.connector_for(room.source)
        if connector is None:
            raise LookupError(f"no connector is running for {room.source!r}")
        return await connector.send_to_room(room, content)

    # State --------------------------------------------------------------------------------------
    def _select_providers(self, include: Sequence[str] | None, only: Sequence[str] | None) -> list[Provider]:
        if only is not None:
            wanted = {n.upper() for n in only}
            return [p for p in self.providers if p.name.upper() in wanted]
        extra = {n.upper() for n in include or ()}
        return [
            p for p in self.providers
            if p.name.upper() in extra or not (p.dynamic or p.private)
        ]

    async def compose_state(
        self,
        message: Memory,
        include: Sequence[str] | None = None,
        only: Sequence[str] | None = None,
        *,
        skip_cache: bool = False,
    ) -> State:
        """Run the selected providers concurrently and join their text in position order.

        Results are cached per message (bounded LRU) so asking for one more dynamic provider later
        in the same run does not recompute the others.
        """
        providers = self._select_providers(include, only)
        cached = {} if skip_cache else dict(self._state_cache.get(message.id, {}))
        missing = [p for p in providers if p.name not in cached]
        if missing:
            partial = State(data={"providers": cached})
            results = await asyncio.gather(
                *(p.get(self, message, partial) for p in missing), return_exceptions=True
            )
            for provider, result in zip(missing, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("provider %s failed: %s", provider.name, result,
                              exc_info=(type(result), result, result.__traceback__))
                    result = ProviderResult()
                cached[provider.name] = result
            self._state_cache[message.id] = cached
            self._state_cache.move_to_end(message.id)
            while len(self._state_cache) > STATE_CACHE_SIZE:
                self._state_cache.popitem(last=False)
        state = State(data={"providers": {}})
        texts: list[str] = []
        for provider in providers:
            result = cached[provider.name]
            state.data["providers"][provider.name] = result
            state.values.update(result.values)
            if result.text:
                texts.append(result.text)
        state.text = "\n\n".join(texts)
        return state

    def forget_state(self, message_id: uuid.UUID) -> None:
        self._state_cache.pop(message_id, None)

    def run_in_background(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Start a task that logs its failure instead of losing it."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_task_failure)
        return task


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        # A model outage is already one clear line; a traceback would only hide it.
        trace = None if isinstance(error, ModelError) else (type(error), error, error.__traceback__)
        log.error("background task %s failed: %s", task.get_name(), error, exc_info=trace)


__all__ = ["AgentRuntime", "MessageHandler", "MessageTicket", "ModelError", "PluginError", "RunOutcome",
           "ShuttingDown"]
