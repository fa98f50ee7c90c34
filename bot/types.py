"""Core types shared by the runtime, the store, plugins and connectors (the elizaOS data model).

Ids are UUIDs; platform ids are mapped to them with `bot.ids.create_unique_uuid`. Times are
milliseconds since the epoch, as in elizaOS, so rows sort and compare without time-zone surprises.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


def now_ms() -> int:
    return int(time.time() * 1000)


class ChannelType(StrEnum):
    DM = "DM"
    GROUP = "GROUP"
    THREAD = "THREAD"
    VOICE_DM = "VOICE_DM"
    VOICE_GROUP = "VOICE_GROUP"
    API = "API"
    SELF = "SELF"
    FEED = "FEED"


# Rooms where every message is addressed to the agent, so no should-respond decision is needed.
DIRECT_CHANNELS = frozenset({ChannelType.DM, ChannelType.VOICE_DM, ChannelType.API, ChannelType.SELF})


class RoomState(StrEnum):
    FOLLOWED = "FOLLOWED"
    MUTED = "MUTED"


class MemoryType(StrEnum):
    MESSAGE = "messages"
    FACT = "facts"
    DOCUMENT = "documents"
    FRAGMENT = "fragments"
    DESCRIPTION = "descriptions"
    CUSTOM = "custom"


class ModelType(StrEnum):
    TEXT_SMALL = "TEXT_SMALL"
    TEXT_LARGE = "TEXT_LARGE"
    OBJECT_SMALL = "OBJECT_SMALL"
    OBJECT_LARGE = "OBJECT_LARGE"
    TEXT_EMBEDDING = "TEXT_EMBEDDING"
    TRANSCRIPTION = "TRANSCRIPTION"
    TEXT_TO_SPEECH = "TEXT_TO_SPEECH"
    IMAGE = "IMAGE"
    IMAGE_DESCRIPTION = "IMAGE_DESCRIPTION"


class EventType(StrEnum):
    MESSAGE_RECEIVED = "MESSAGE_RECEIVED"
    MESSAGE_SENT = "MESSAGE_SENT"
    RUN_STARTED = "RUN_STARTED"
    RUN_ENDED = "RUN_ENDED"
    ACTION_STARTED = "ACTION_STARTED"
    ACTION_COMPLETED = "ACTION_COMPLETED"
    EVALUATOR_COMPLETED = "EVALUATOR_COMPLETED"
    MODEL_USED = "MODEL_USED"
    ENTITY_JOINED = "ENTITY_JOINED"
    WORLD_JOINED = "WORLD_JOINED"


class _Model(BaseModel):
    model_config = ConfigDict(use_enum_values=False, populate_by_name=True)


class Button(_Model):
    """One button: `value` comes back as a message when pressed; `url` opens a link instead."""

    label: str = Field(min_length=1, max_length=80)
    value: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Button:
        if (self.value is None) == (self.url is None):
            raise ValueError("a button needs exactly one of value or url")
        return self


class Attachment(_Model):
    """A file that came with or goes out with a message.

    `url` is only ever a public URL; platform files are referenced by `file_id` because their
    download URLs can embed the bot token (Telegram). `data` carries bytes for outgoing files.
    """

    model_config = ConfigDict(extra="allow")
    id: str
    kind: str = "file"  # image | audio | voice | video | file
    title: str | None = None
    source: str | None = None
    content_type: str | None = None
    url: str | None = None
    file_id: str | None = None
    description: str | None = None
    text: str | None = None
    data: bytes | None = Field(default=None, exclude=True)


class MentionContext(_Model):
    is_mention: bool = False
    is_reply: bool = False
    is_thread: bool = False


class Content(_Model):
    model_config = ConfigDict(extra="allow")
    text: str = ""
    thought: str | None = None
    actions: list[str] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=list)
    source: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    buttons: list[list[Button]] = Field(default_factory=list)
    in_reply_to: uuid.UUID | None = None
    channel_type: ChannelType | None = None
    mention_context: MentionContext | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Memory(_Model):
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    entity_id: uuid.UUID
    agent_id: uuid.UUID
    room_id: uuid.UUID
    world_id: uuid.UUID | None = None
    content: Content
    type: MemoryType = MemoryType.MESSAGE
    created_at: int = Field(default_factory=now_ms)
    embedding: list[float] | None = None
    unique: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


class Entity(_Model):
    id: uuid.UUID
    agent_id: uuid.UUID
    names: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class World(_Model):
    id: uuid.UUID
    agent_id: uuid.UUID
    name: str | None = None
    server_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Room(_Model):
    id: uuid.UUID
    agent_id: uuid.UUID
    name: str | None = None
    source: str
    type: ChannelType
    channel_id: str | None = None
    server_id: str | None = None
    world_id: uuid.UUID | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Participant(_Model):
    entity_id: uuid.UUID
    room_id: uuid.UUID
    state: RoomState | None = None


class Relationship(_Model):
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    agent_id: uuid.UUID
    source_entity_id: uuid.UUID
    target_entity_id: uuid.UUID
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: int = Field(default_factory=now_ms)


class Task(_Model):
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    agent_id: uuid.UUID
    name: str
    description: str | None = None
    room_id: uuid.UUID | None = None
    world_id: uuid.UUID | None = None
    entity_id: uuid.UUID | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    updated_at: int = Field(default_factory=now_ms)


class Agent(_Model):
    id: uuid.UUID
    name: str
    username: str | None = None
    character: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    created_at: int = Field(default_factory=now_ms)
