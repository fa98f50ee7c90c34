"""Request and response bodies of the REST API; the OpenAPI document is generated from these."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from bot.types import Content, Memory, MemoryType

# Free-form text a client sends. PostgreSQL cannot store NUL, so it is refused up front.
Text = Annotated[str, Field(min_length=1, max_length=8000, pattern=r"^[^\x00]*$")]
Key = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Limit = Annotated[int, Field(ge=1, le=100)]
Vector = Annotated[list[Annotated[float, Field(ge=-1e9, le=1e9)]], Field(min_length=1, max_length=8192)]


# The largest time in epoch milliseconds that JavaScript (elizaOS's clients) holds exactly.
MAX_TIME_MS = 2**53
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN.strip("^$"))


def is_uuid(raw: str) -> bool:
    """Whether `raw` is a UUID in its usual form, and nothing more (a `$` would let a final newline in)."""
    return _UUID.fullmatch(raw) is not None


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


AGENT_DESCRIPTION = ("The agent (character) addressed: its id or its name; the first character when omitted. "
                     "Also accepted as ?agent= in the query.")


def agent_field() -> Any:
    return Field(None, description=AGENT_DESCRIPTION)


class Camel(BaseModel):
    """A body with elizaOS's camelCase field names (`alias`), also built by field name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def iso(moment: datetime) -> str:
    """As JavaScript's toISOString writes it (milliseconds, Z), which elizaOS's clients parse."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


IsoTime = Annotated[datetime, PlainSerializer(iso, return_type=str)]


def from_seconds(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def from_ms(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    """Every error, in elizaOS's envelope: its client reads `error.code` and `error.message`."""

    success: Literal[False] = False
    error: ErrorInfo


TRANSPORT_DESCRIPTION = ("sse: answer with Server-Sent Events that carry the reply as it is written; http: one "
                         "JSON answer. Default: sse when the Accept header asks for text/event-stream, else http.")
Transport = Literal["http", "sse"]


class MessageIn(Body):
    agent: Key | None = agent_field()
    text: Text
    user_id: Key
    room_id: Key
    user_name: Key | None = None
    message_id: Key | None = Field(None, description="Optional client id; a repeat is refused with 409.")
    transport: Transport | None = Field(None, description=TRANSPORT_DESCRIPTION)


class ToolCallOut(BaseModel):
    """A tool the agent called while answering, and what it returned."""

    name: str
    arguments: dict[str, Any]
    result: str
    success: bool

    @classmethod
    def of(cls, memory: Memory) -> ToolCallOut | None:
        call = memory.content.metadata.get("tool_call")
        return None if not isinstance(call, dict) else cls(
            name=str(call.get("name", "")), arguments=dict(call.get("arguments") or {}),
            result=str(call.get("result", "")), success=bool(call.get("success")))


class MessageOut(BaseModel):
    id: uuid.UUID
    room_id: uuid.UUID
    entity_id: uuid.UUID
    role: Literal["user", "agent", "tool"]
    text: str
    actions: list[str]
    in_reply_to: uuid.UUID | None = None
    created_at: int
    tool_call: ToolCallOut | None = None

    @classmethod
    def of(cls, memory: Memory, agent_id: uuid.UUID) -> MessageOut:
        tool_call = ToolCallOut.of(memory)
        role = "tool" if tool_call else "agent" if memory.entity_id == agent_id else "user"
        return cls(id=memory.id, room_id=memory.room_id, entity_id=memory.entity_id, role=role,
                   text=memory.content.text, actions=memory.content.actions, in_reply_to=memory.content.in_reply_to,
                   created_at=memory.created_at, tool_call=tool_call)


class ReplyOut(BaseModel):
    id: uuid.UUID
    text: str
    actions: list[str]

    @classmethod
    def of(cls, reply_id: uuid.UUID, content: Content) -> ReplyOut:
        return cls(id=reply_id, text=content.text, actions=content.actions)


class StreamChunk(BaseModel):
    """A `chunk` event: text the reply `messageId` gained (elizaOS's field names). Appending the
    chunks of one reply gives its final text; `reset` says to drop what it showed before first."""

    model_config = ConfigDict(populate_by_name=True)

    message_id: uuid.UUID = Field(alias="messageId", description="The id the reply has in `done` and the history.")
    chunk: str = Field(description="The new text, to append.")
    index: int = Field(description="0, 1, 2… within this reply.")
    reset: bool = Field(False, description="Clear what this reply showed so far, then append `chunk`: the "
                                           "text shown was not the start of the reply after all.")


class MessageResult(BaseModel):
    message_id: uuid.UUID
    room_id: uuid.UUID
    status: str = Field(description="completed, ignored, muted or error")
    reply: ReplyOut | None = Field(None, description="The agent's first reply; null when it stayed silent.")
    replies: list[ReplyOut]


class MessagesQuery(Body):
    agent: Key | None = agent_field()
    room_id: Key
    cursor: Key | None = None
    limit: Limit = 20


class MessagePage(BaseModel):
    messages: list[MessageOut]
    next_cursor: str | None


class MemoryIn(Body):
    agent: Key | None = agent_field()
    text: Text
    type: MemoryType = MemoryType.FACT
    room_id: Key | None = Field(None, description="Defaults to the agent's own room.")
    user_id: Key | None = Field(None, description="Who the memory is about; defaults to the agent.")
    embedding: Vector | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class MemoryOut(BaseModel):
    id: uuid.UUID
    type: MemoryType
    room_id: uuid.UUID
    entity_id: uuid.UUID
    text: str
    metadata: dict[str, Any]
    created_at: int

    @classmethod
    def of(cls, memory: Memory) -> MemoryOut:
        return cls(id=memory.id, type=memory.type, room_id=memory.room_id, entity_id=memory.entity_id,
                   text=memory.content.text, metadata=memory.metadata, created_at=memory.created_at)


class MemoriesQuery(Body):
    agent: Key | None = agent_field()
    type: MemoryType = MemoryType.FACT
    room_id: Key | None = None
    cursor: Key | None = None
    limit: Limit = 20


class MemoryPage(BaseModel):
    memories: list[MemoryOut]
    next_cursor: str | None


class MemorySearch(Body):
    agent: Key | None = agent_field()
    text: Text | None = None
    embedding: Vector | None = None
    type: MemoryType | None = None
    room_id: Key | None = None
    limit: Limit = 10
    min_score: float | None = Field(None, ge=-1, le=1, description="Embedding search only.")


class MemoryHit(BaseModel):
    memory: MemoryOut
    score: float
    match: Literal["text", "embedding"]


class MemorySearchResult(BaseModel):
    results: list[MemoryHit]


class WebChatAgent(BaseModel):
    id: uuid.UUID
    name: str


class WebChatInfo(BaseModel):
    name: str = Field(description="The first character's name.")
    agents: list[WebChatAgent] = Field(description="The running agents a visitor may chat with, the first "
                                       "character first; pass the chosen one's id as agentId to POST /api/sessions.")
    access: Literal["admin", "public"] = Field(description="admin: the page needs API_KEY; public: visitors "
                                               "chat with no key.")
