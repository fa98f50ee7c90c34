"""The payloads of elizaOS's Socket.IO protocol, with its field names: what a client sends (validated
here, as the REST API validates its bodies) and what parley emits (`Event.dump()` gives the JSON)."""

from __future__ import annotations

import uuid
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..app import checked_json, validation_error
from ..models import Key, Text

In = TypeVar("In", bound="_In")


class _In(BaseModel):
    """A client's payload: fields parley does not read are ignored, as elizaOS ignores them."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @classmethod
    def parse(cls: type[In], payload: Any, where: str) -> In:
        """The payload held to the HTTP bodies' intake rules (`checked_json`) and validated; an
        `ApiError` naming every bad field otherwise."""
        try:
            return cls.model_validate(checked_json(payload if isinstance(payload, dict) else {}, where))
        except ValidationError as error:
            raise validation_error(error, where) from None


class Handshake(_In):
    """The `auth` object of the Socket.IO handshake (its `apiKey` is checked apart and never echoed)."""

    entity_id: uuid.UUID = Field(alias="entityId")


class JoinIn(_In):
    """ROOM_JOINING (type 1): `roomId` is the legacy name of `channelId`."""

    channel_id: uuid.UUID | None = Field(None, alias="channelId")
    room_id: uuid.UUID | None = Field(None, alias="roomId")
    agent_id: Key | None = Field(None, alias="agentId")

    @property
    def channel(self) -> uuid.UUID | None:
        return self.channel_id or self.room_id


class SendIn(_In):
    """SEND_MESSAGE (type 2). `message` has the REST API's limits (at most 8000 characters, no NUL)."""

    channel_id: uuid.UUID = Field(alias="channelId")
    sender_id: uuid.UUID = Field(alias="senderId")
    sender_name: Key | None = Field(None, alias="senderName")
    message: Text
    message_server_id: uuid.UUID | None = Field(None, alias="messageServerId")
    message_id: Key | None = Field(None, alias="messageId")
    source: Key | None = None
    metadata: dict[str, Any] | None = None


class Event(BaseModel):
    """A server→client payload; absent optional fields are left out, as elizaOS leaves them out."""

    model_config = ConfigDict(populate_by_name=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Authenticated(Event):
    entity_id: uuid.UUID = Field(alias="entityId")
    timestamp: int


class ConnectionEstablished(Event):
    message: str = "Connected to Eliza Socket.IO server"
    socket_id: str = Field(alias="socketId")


class Joined(Event):
    """`channel_joined` and `room_joined` (the same payload)."""

    message: str
    channel_id: uuid.UUID = Field(alias="channelId")
    room_id: uuid.UUID = Field(alias="roomId")
    agent_id: str | None = Field(None, alias="agentId")


class Said(Event):
    """What a broadcast message carries, from the user or the agent."""

    id: uuid.UUID
    sender_id: uuid.UUID = Field(alias="senderId")
    sender_name: str = Field(alias="senderName")
    text: str
    channel_id: uuid.UUID = Field(alias="channelId")
    room_id: uuid.UUID = Field(alias="roomId")
    created_at: int = Field(alias="createdAt")


class UserBroadcast(Said):
    """A user's message, to the channel's sockets; the sender's copy also has `clientMessageId`."""

    message_server_id: uuid.UUID = Field(alias="messageServerId")
    source: str
    client_message_id: str | None = Field(None, alias="clientMessageId")


class MessageAck(Event):
    client_message_id: str | None = Field(None, alias="clientMessageId")
    message_id: uuid.UUID = Field(alias="messageId")
    status: Literal["received_by_server_and_processing"] = "received_by_server_and_processing"
    channel_id: uuid.UUID = Field(alias="channelId")
    room_id: uuid.UUID = Field(alias="roomId")


class StreamChunkEvent(Event):
    """`messageStreamChunk`: text the reply `messageId` gained. `reset` is parley's addition (elizaOS
    has none): true means to clear what this reply showed so far, then append `chunk`."""

    message_id: uuid.UUID = Field(alias="messageId")
    chunk: str
    index: int
    agent_id: uuid.UUID = Field(alias="agentId")
    channel_id: uuid.UUID = Field(alias="channelId")
    room_id: uuid.UUID = Field(alias="roomId")
    reset: Literal[True] | None = None


class AgentBroadcast(Said):
    """The agent's reply; its `id` is the `messageId` of the chunks that showed it."""

    server_id: uuid.UUID = Field(alias="serverId")
    source: Literal["agent_response"] = "agent_response"
    thought: str | None = None
    actions: list[str] | None = None


class MessageComplete(Event):
    channel_id: uuid.UUID = Field(alias="channelId")
    room_id: uuid.UUID = Field(alias="roomId")


class MessageError(Event):
    error: str
    channel_id: uuid.UUID | None = Field(None, alias="channelId")
