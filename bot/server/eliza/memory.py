"""elizaOS 1.7's memory routes (`/api/memory/{agent_id}/...`): the agent's memories and rooms, in
elizaOS's envelope with its camelCase names and epoch-millisecond times.

elizaOS clients name conversations by *channel* (a UUID); parley names them by room. A path that
takes a room also takes a channel: a room id of the agent is used as is; otherwise the id is a
channel, whose room is the one `conversation.channel_room_key` names (a session's channel is its
session's room, also after the session ended), as the Socket.IO endpoint uses it.

What a client writes never poses as the platform's: PATCH changes a memory's text, thought,
actions and embedding, and its metadata only under `metadata["client"]`; a room a client creates
keeps the client's metadata there too.

Deleting never reaches the knowledge index (the knowledge plugin's documents and every fragment,
which /api/knowledge manages and the knowledge files rebuild): removing part of it would leave
fragments that answer from a document that is gone. Deletes go through the runtime, so a deleted
message also leaves the recent history its prompts are built from.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from bot.types import Entity, Memory, MemoryType, Room, World, now_ms

from ..app import check_metadata, json_response, parse_body, parse_query
from ..conversation import channel_room_key, room_id_for
from ..errors import ApiError
from ..models import is_uuid
from ..openapi import Operation
from ..sessions import SessionManager
from .wire import (
    ElizaCleared,
    ElizaClearedResponse,
    ElizaCreatedRoom,
    ElizaCreatedRoomResponse,
    ElizaMemoriesQuery,
    ElizaMemory,
    ElizaMemoryList,
    ElizaMemoryListResponse,
    ElizaMemoryPatch,
    ElizaMemoryUpdated,
    ElizaMemoryUpdatedResponse,
    ElizaMessage,
    ElizaMessageResponse,
    ElizaRoom,
    ElizaRoomIn,
    ElizaRoomList,
    ElizaRoomListResponse,
    ElizaRoomMemoriesQuery,
    ElizaRoomResponse,
)

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

PREFIX = "/api/memory/{agent_id}"
AGENT_PARAM = {"agent_id": "The agent's id, its name, or 'default'."}
UUID_SCHEMA = {"format": "uuid"}  # anything else is 400 INVALID_ID
Links = dict[str, tuple[str, dict[str, str]]]
Q = TypeVar("Q", bound=BaseModel)
_TARGETS = ("agent_memories", "room_memories", "update_memory", "delete_memory", "clear_room_memories",
            "list_rooms", "create_room", "get_room")
CLEAR_BATCH = 500  # memories read per round while deleting many


def agent_schema(names: list[str]) -> dict[str, Any]:
    """What names an agent (anything else is 400 INVALID_ID, another UUID 404); "default" always
    names the primary one, so a tester (schemathesis) can reach the operation."""
    return {"anyOf": [{"format": "uuid"}, {"enum": ["default", *names]}], "examples": ["default"]}


def parse_id(raw: str, what: str) -> uuid.UUID:
    if not is_uuid(raw):
        raise ApiError(400, "INVALID_ID", f"Invalid {what} ID format: a UUID is expected")
    return uuid.UUID(raw)


def _is_knowledge(memory: Memory) -> bool:
    """A row of the knowledge index (see the module's docstring)."""
    return memory.type is MemoryType.FRAGMENT or isinstance(memory.metadata.get("knowledge"), dict)


def _query(request: web.Request, model: type[Q]) -> Q:
    """The query; a channelId or roomId that is no UUID is INVALID_ID, as elizaOS names it."""
    try:
        return parse_query(request, model)
    except ApiError as error:
        if error.details and {d["field"] for d in error.details} <= {"channelId", "roomId"}:
            raise ApiError(400, "INVALID_ID", error.message, details=error.details) from None
        raise


class ElizaMemoryApi:
    def __init__(self, runtime: AgentRuntime, sessions: SessionManager,
                 agent: Callable[[web.Request], uuid.UUID], *, names: Callable[[], list[str]]) -> None:
        """`agent` gives the agent the request addresses (the server resolved it: this one); `names` all
        agents' names, for the document."""
        self.runtime, self.sessions, self.agent, self.names = runtime, sessions, agent, names

    # Rooms and channels ------------------------------------------------------------------------------
    async def _own_room(self, room_id: uuid.UUID) -> Room | None:
        room = await self.runtime.get_room(room_id)
        return room if room is not None and room.agent_id == self.runtime.agent_id else None

    async def channel_room(self, channel_id: uuid.UUID) -> uuid.UUID:
        """The room of an elizaOS channel: its live session's, or else the free channel's."""
        session = await self.sessions.by_channel(channel_id)
        return room_id_for(self.runtime, session.room_key if session else channel_room_key(channel_id))

    async def room_of(self, raw: str) -> uuid.UUID:
        """A path id that names a room of this agent, or else a channel (see the module's docstring)."""
        ident = parse_id(raw, "room or channel")
        room = await self._own_room(ident)
        return room.id if room is not None else await self.channel_room(ident)

    async def _channels(self) -> dict[str, str]:
        """Room key → elizaOS channel id, for the rooms of live sessions."""
        return {s.room_key: str(s.channel) for s in await self.sessions.live()}

    @staticmethod
    def _channel_of(room: Room, sessions: dict[str, str]) -> str | None:
        """The elizaOS channel of a session's or a free channel's room; else the room's own channel id."""
        key = room.channel_id
        if key is None or key in sessions:
            return None if key is None else sessions[key]
        tail = key.rsplit(":", 1)[-1]
        if is_uuid(tail) and channel_room_key(uuid.UUID(tail)) == key:
            return tail
        return key

    async def _room_out(self, room: Room, sessions: dict[str, str]) -> ElizaRoom:
        world = await self.runtime.store.get_world(room.world_id) if room.world_id else None
        return ElizaRoom.of(room, self._channel_of(room, sessions), world.name if world else None)

    async def list_rooms(self, request: web.Request) -> web.Response:
        self.agent(request)
        sessions = await self._channels()
        rooms = await self.runtime.store.get_rooms(self.runtime.agent_id)
        out = [ElizaRoom.of(room, self._channel_of(room, sessions)) for room in rooms]
        return json_response(ElizaRoomListResponse(data=ElizaRoomList(rooms=out)))

    async def get_room(self, request: web.Request) -> web.Response:
        self.agent(request)
        room = await self._own_room(await self.room_of(request.match_info["room_id"]))
        if room is None:
            raise ApiError(404, "NOT_FOUND", "Room not found")
        return json_response(ElizaRoomResponse(data=await self._room_out(room, await self._channels())))

    async def create_room(self, request: web.Request) -> web.Response:
        agent_id = self.agent(request)
        body = await parse_body(request, ElizaRoomIn)
        check_metadata(body.metadata, self.runtime.settings.session_max_metadata_bytes)
        world = None
        if body.world_id is not None:
            await self._check_world(body.world_id)
        else:
            world = World(id=uuid.uuid4(), agent_id=agent_id, name=f"World for {body.name}",
                          server_id=body.message_server_id)
        room_id = uuid.uuid4()
        room = Room(id=room_id, agent_id=agent_id, name=body.name, source=body.source, type=body.type,
                    channel_id=str(room_id), server_id=body.message_server_id,
                    world_id=world.id if world else body.world_id,
                    metadata={"client": body.metadata} if body.metadata else {})
        character = self.runtime.character
        me = Entity(id=agent_id, agent_id=agent_id, names=[n for n in (character.name, character.username) if n])
        await self.runtime.ensure_connection(me, room, world)
        out = ElizaRoom.of(room, str(room_id), world.name if world else None)
        created = ElizaCreatedRoom(**out.model_dump(), created_at=now_ms())
        return json_response(ElizaCreatedRoomResponse(data=created), status=201)

    async def _check_world(self, world_id: uuid.UUID) -> None:
        """A room joins only a world of this agent: never a dangling or another agent's world."""
        world = await self.runtime.store.get_world(world_id)
        if world is None or world.agent_id != self.runtime.agent_id:
            message = "this agent has no world with this id; leave worldId out to make a new world for the room"
            raise ApiError(400, "INVALID_BODY", f"invalid body: worldId: {message}",
                           details=[{"field": "worldId", "message": message}])

    # Memories ----------------------------------------------------------------------------------------
    async def agent_memories(self, request: web.Request) -> web.Response:
        self.agent(request)
        query = _query(request, ElizaMemoriesQuery)
        room_id = await self.channel_room(query.channel_id) if query.channel_id else query.room_id
        found = await self.runtime.store.get_memories(agent_id=self.runtime.agent_id, room_id=room_id,
                                                      type=query.table_name, count=query.limit)
        return self._memories(found, query.include_embedding == "true")

    async def room_memories(self, request: web.Request) -> web.Response:
        self.agent(request)
        room_id = await self.room_of(request.match_info["channel_id"])
        query = _query(request, ElizaRoomMemoriesQuery)
        found = await self.runtime.store.get_memories(agent_id=self.runtime.agent_id, room_id=room_id,
                                                      type=query.table_name, count=query.limit, before=query.before)
        return self._memories(found, query.include_embedding == "true")

    @staticmethod
    def _memories(found: list[Memory], embedding: bool) -> web.Response:
        ordered = sorted(found, key=lambda m: (m.created_at, str(m.id)), reverse=True)
        out = [ElizaMemory.of(m, embedding=embedding) for m in ordered]
        return json_response(ElizaMemoryListResponse(data=ElizaMemoryList(memories=out)))

    async def _own_memory(self, request: web.Request) -> Memory:
        memory_id = parse_id(request.match_info["memory_id"], "memory")
        memory = await self.runtime.store.get_memory(memory_id)
        if memory is None or memory.agent_id != self.runtime.agent_id:
            raise ApiError(404, "NOT_FOUND", "Memory not found")
        return memory

    async def update_memory(self, request: web.Request) -> web.Response:
        self.agent(request)
        memory = await self._own_memory(request)
        body = await parse_body(request, ElizaMemoryPatch)
        content = memory.content
        if body.content is not None:
            content = content.model_copy(update=body.content.model_dump(exclude_none=True))
        metadata = memory.metadata
        if body.metadata is not None:
            check_metadata(body.metadata, self.runtime.settings.session_max_metadata_bytes)
            metadata = {k: v for k, v in memory.metadata.items() if k != "client"}
            if body.metadata:
                metadata["client"] = body.metadata  # never platform context
        updated = memory.model_copy(update={"content": content, "metadata": metadata, "embedding": body.embedding})
        if not await self.runtime.update_memory(updated):
            raise ApiError(404, "NOT_FOUND", "Memory not found")
        done = ElizaMemoryUpdated(id=memory.id, message="Memory updated successfully")
        return json_response(ElizaMemoryUpdatedResponse(data=done))

    async def delete_memory(self, request: web.Request) -> web.Response:
        self.agent(request)
        memory = await self._own_memory(request)
        if not await self.runtime.delete_memory(memory):
            raise ApiError(404, "NOT_FOUND", "Memory not found")
        return json_response(ElizaMessageResponse(data=ElizaMessage(message="Memory deleted successfully")))

    async def _delete_all(self, table: MemoryType, room_id: uuid.UUID | None = None) -> int:
        """Delete this agent's memories of one table (in one room, if given), a batch at a time, all but
        the knowledge index's; how many went."""
        runtime, deleted, kept = self.runtime, 0, 0
        while True:
            page = await runtime.store.get_memories(agent_id=runtime.agent_id, room_id=room_id, type=table,
                                            count=kept + CLEAR_BATCH)  # the kept ones, then a batch more
            doomed = [memory for memory in page if not _is_knowledge(memory)]
            for memory in doomed:
                deleted += await runtime.delete_memory(memory)
            if len(page) < kept + CLEAR_BATCH:
                return deleted
            kept = len(page) - len(doomed)

    async def clear_agent_memories(self, request: web.Request) -> web.Response:
        """Every memory of this agent, of every table (messages, facts, ...), as elizaOS's
        clearAllAgentMemories; the knowledge index stays, and other agents' memories are never read."""
        self.agent(request)
        deleted = 0
        for table in MemoryType:
            if table is not MemoryType.FRAGMENT:
                deleted += await self._delete_all(table)
        done = ElizaCleared(deleted=deleted, message="All agent memories cleared successfully")
        return json_response(ElizaClearedResponse(data=done))

    async def clear_room_memories(self, request: web.Request) -> web.Response:
        """A room's messages and documents go, as in elizaOS; its facts (and the knowledge index) stay."""
        self.agent(request)
        room_id = await self.room_of(request.match_info["room_id"])  # the agent's own room or channel room
        await self.runtime.delete_room_memories(room_id, MemoryType.MESSAGE)
        await self._delete_all(MemoryType.DOCUMENT, room_id)
        return web.Response(status=204)

    @staticmethod
    def links(agent: str, ids: dict[str, str] | None = None) -> Links:
        """OpenAPI links to every memory route: the agent id from the runtime expression `agent`, and a
        room or memory id from `ids` (room, memory) where the response has one."""
        ids = ids or {}
        extra = {"get_room": {"room_id": ids.get("room")}, "clear_room_memories": {"room_id": ids.get("room")},
                 "room_memories": {"channel_id": ids.get("room")}, "update_memory": {"memory_id": ids.get("memory")},
                 "delete_memory": {"memory_id": ids.get("memory")}}
        return {"".join(part.title() for part in target.split("_")): (target, {
            "agent_id": agent, **{k: v for k, v in extra.get(target, {}).items() if v}}) for target in _TARGETS}

    def operations(self) -> list[Operation]:
        agent = AGENT_PARAM
        room = {**agent, "room_id": "A room id of the agent, or an elizaOS channel id (UUID)."}
        memory = {**agent, "memory_id": "The memory's id (UUID)."}
        rooms = PREFIX + "/rooms"
        operations = [
            Operation("GET", PREFIX + "/memories", self.agent_memories, "The agent's memories of one table, newest "
                      "first (elizaOS)", "memory", {200: ElizaMemoryListResponse}, query=ElizaMemoriesQuery,
                      errors=[400, 404], path_params=agent),
            Operation("DELETE", PREFIX + "/memories", self.clear_agent_memories, "Delete all the agent's memories "
                      "(elizaOS)", "memory", {200: ElizaClearedResponse}, errors=[400, 404], path_params=agent,
                      description="Every table (messages, facts, ...); the knowledge index stays, as /api/knowledge "
                      "manages it."),
            Operation("PATCH", PREFIX + "/memories/{memory_id}", self.update_memory, "Change a memory's text, "
                      "thought, actions, client metadata or embedding (elizaOS)", "memory",
                      {200: ElizaMemoryUpdatedResponse}, body=ElizaMemoryPatch, errors=[400, 404],
                      path_params=memory),
            Operation("DELETE", PREFIX + "/memories/{memory_id}", self.delete_memory, "Delete a memory (elizaOS)",
                      "memory", {200: ElizaMessageResponse}, errors=[400, 404], path_params=memory),
            Operation("DELETE", PREFIX + "/memories/all/{room_id}", self.clear_room_memories, "Delete a room's "
                      "messages and documents, not its facts (elizaOS)", "memory", {204: None}, errors=[400, 404],
                      path_params=room),
            Operation("GET", rooms, self.list_rooms, "The agent's rooms (elizaOS)", "memory",
                      {200: ElizaRoomListResponse}, errors=[400, 404], path_params=agent),
            Operation("POST", rooms, self.create_room, "Create a room (elizaOS)", "memory",
                      {201: ElizaCreatedRoomResponse}, body=ElizaRoomIn, errors=[400, 404], path_params=agent),
            Operation("GET", rooms + "/{room_id}", self.get_room, "A room, with its world's name (elizaOS)",
                      "memory", {200: ElizaRoomResponse}, errors=[400, 404], path_params=room),
            Operation("GET", rooms + "/{channel_id}/memories", self.room_memories, "A room's or channel's memories, "
                      "newest first (elizaOS)", "memory", {200: ElizaMemoryListResponse},
                      query=ElizaRoomMemoriesQuery, errors=[400, 404],
                      path_params={**agent, "channel_id": room["room_id"]}),
        ]
        first_memory, first_room, this_room = ("$response.body#/data/memories/0/id",
                                               "$response.body#/data/rooms/0/id", "$response.body#/data/id")
        ids = {"agent_memories": {"memory": first_memory}, "room_memories": {"memory": first_memory},
               "list_rooms": {"room": first_room}, "create_room": {"room": this_room}, "get_room": {"room": this_room}}
        for op in operations:  # every route leads to the others: the agent's id is in its path
            op.links = self.links("$request.path.agent_id", ids.get(op.operation_id))
            op.path_schemas = {"agent_id": agent_schema(self.names()), "room_id": UUID_SCHEMA,
                               "channel_id": UUID_SCHEMA, "memory_id": UUID_SCHEMA}
        return operations
