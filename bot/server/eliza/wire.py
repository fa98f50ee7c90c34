"""The wire shapes of elizaOS 1.7's agents and memory routes: its envelope, `{"success": true, "data":
...}`, camelCase names, and the memory routes' bodies (memories, rooms, their queries and changes)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from pydantic.alias_generators import to_camel

from bot.types import ChannelType, Content, Memory, MemoryType, Room

from ..models import MAX_TIME_MS, Key, Vector

PatchText = Annotated[str, Field(max_length=8000, pattern=r"^[^\x00]*$")]
IncludeEmbedding = Literal["true", "false"]


class CamelModel(BaseModel):
    """camelCase on the wire; `omit_none` fields are left out when None, as elizaOS leaves them undefined."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    omit_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.omit_none:
            for key in (name, to_camel(name)):
                if key in data and data[key] is None:
                    del data[key]
        return data


class Envelope(BaseModel):
    """A success in elizaOS's envelope: the client returns `data`."""

    success: Literal[True] = True


# Responses -------------------------------------------------------------------------------------------
_CONTENT_NAMES = {"in_reply_to": "inReplyTo", "channel_type": "channelType", "mention_context": "mentionContext"}


def _camel_keys(value: Any) -> Any:
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return {to_camel(k): v for k, v in value.items()} if isinstance(value, dict) else value


def content_json(content: Content) -> dict[str, Any]:
    """A message's content as elizaOS stores it: camelCase names, only the parts that are set."""
    out: dict[str, Any] = {}
    for key, value in content.model_dump(mode="json", exclude_none=True).items():
        if key == "text" or value not in ([], {}):
            out[_CONTENT_NAMES.get(key, key)] = _camel_keys(value) if key in ("attachments", "mention_context") \
                else value
    return out


class ElizaContent(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class ElizaMemory(CamelModel):
    omit_none: ClassVar[frozenset[str]] = frozenset({"world_id", "embedding"})

    id: uuid.UUID
    type: MemoryType = Field(description="Its table: messages, facts, documents…")
    created_at: int
    content: ElizaContent
    entity_id: uuid.UUID
    agent_id: uuid.UUID
    room_id: uuid.UUID
    world_id: uuid.UUID | None = None
    unique: bool
    metadata: dict[str, Any]
    embedding: list[float] | None = Field(None, description="Only with includeEmbedding=true.")

    @classmethod
    def of(cls, memory: Memory, *, embedding: bool) -> ElizaMemory:
        return cls(id=memory.id, type=memory.type, created_at=memory.created_at,
                   content=ElizaContent.model_validate(content_json(memory.content)), entity_id=memory.entity_id,
                   agent_id=memory.agent_id, room_id=memory.room_id, world_id=memory.world_id,
                   unique=memory.unique, metadata=memory.metadata, embedding=memory.embedding if embedding else None)


class ElizaMemoryList(CamelModel):
    memories: list[ElizaMemory]


class ElizaRoom(CamelModel):
    omit_none: ClassVar[frozenset[str]] = frozenset({"world_name"})

    id: uuid.UUID
    name: str | None
    channel_id: str | None = Field(description="The room's elizaOS channel when it has one, else the "
                                               "platform's own channel id.")
    agent_id: uuid.UUID
    world_id: uuid.UUID | None
    type: ChannelType
    source: str
    metadata: dict[str, Any]
    server_id: str | None
    message_server_id: str | None
    world_name: str | None = None

    @classmethod
    def of(cls, room: Room, channel_id: str | None, world_name: str | None = None) -> ElizaRoom:
        return cls(id=room.id, name=room.name, channel_id=channel_id, agent_id=room.agent_id,
                   world_id=room.world_id, type=room.type, source=room.source, metadata=room.metadata,
                   server_id=room.server_id, message_server_id=room.server_id, world_name=world_name)


class ElizaRoomList(CamelModel):
    rooms: list[ElizaRoom]


class ElizaCreatedRoom(ElizaRoom):
    created_at: int


class ElizaMemoryUpdated(CamelModel):
    id: uuid.UUID
    message: str


class ElizaMessage(CamelModel):
    message: str


class ElizaCleared(CamelModel):
    deleted: int = Field(description="How many memories were deleted.")
    message: str


class ElizaMemoryListResponse(Envelope):
    data: ElizaMemoryList


class ElizaRoomListResponse(Envelope):
    data: ElizaRoomList


class ElizaRoomResponse(Envelope):
    data: ElizaRoom


class ElizaCreatedRoomResponse(Envelope):
    data: ElizaCreatedRoom


class ElizaMemoryUpdatedResponse(Envelope):
    data: ElizaMemoryUpdated


class ElizaMessageResponse(Envelope):
    data: ElizaMessage


class ElizaClearedResponse(Envelope):
    data: ElizaCleared


# Requests --------------------------------------------------------------------------------------------
class _Query(CamelModel):
    """elizaOS clients send more than a route reads (page, offset, search…): the rest is ignored."""

    model_config = ConfigDict(extra="ignore")


class ElizaMemoriesQuery(_Query):
    table_name: MemoryType = MemoryType.MESSAGE
    channel_id: uuid.UUID | None = Field(None, description="An elizaOS channel: its room's memories.")
    room_id: uuid.UUID | None = Field(None, description="A room's memories (ignored with channelId).")
    include_embedding: IncludeEmbedding = "false"
    limit: int = Field(100, ge=1, le=1000)


class ElizaRoomMemoriesQuery(_Query):
    table_name: MemoryType = MemoryType.MESSAGE
    include_embedding: IncludeEmbedding = "false"
    limit: int = Field(20, ge=1, le=1000)
    before: int | None = Field(None, ge=0, le=MAX_TIME_MS, description="Only memories created before this (ms).")


class ElizaRoomIn(CamelModel):
    model_config = ConfigDict(extra="forbid")

    name: Key
    type: ChannelType = ChannelType.DM
    source: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]*$")] = "client"
    world_id: uuid.UUID | None = Field(None, description="Default: a new world for this room.")
    message_server_id: Key | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, description="Kept as the room's metadata.client.")


class ElizaContentPatch(BaseModel):
    """What a client may change in a memory's content (null: unchanged); the rest (source, channel,
    the message it answers) is the platform's record."""

    model_config = ConfigDict(extra="ignore")

    text: PatchText | None = None
    thought: PatchText | None = None
    actions: list[Key] | None = Field(None, max_length=50)


class ElizaMemoryPatch(CamelModel):
    """Other fields of a memory (id, roomId, entityId…) are ignored: a memory never moves."""

    model_config = ConfigDict(extra="ignore")

    content: ElizaContentPatch | None = None
    metadata: dict[str, Any] | None = Field(None, description="Replaces the memory's metadata.client; the "
                                                              "platform's metadata stays.")
    embedding: Vector | None = Field(None, description="Replaces the stored embedding.")
