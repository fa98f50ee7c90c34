"""Bodies of elizaOS 1.7's messaging sessions (`/api/messaging/sessions`), with its field names.

Times are ISO-8601 strings with milliseconds, except the paging bounds `before`/`after`, which are
epoch milliseconds as the official client sends them: a history message's `createdAt` names the
same millisecond, so a page boundary splits the history exactly.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field, field_validator

from bot.types import Content, Memory

from ..models import MAX_TIME_MS, Camel, IsoTime, Key, Text, ToolCallOut, from_ms, from_seconds
from ..session_api import SessionStatus
from ..sessions import EffectiveConfig, Session, TimeoutConfig


class CreateSession(Camel):
    agent_id: Key = Field(alias="agentId", description="The agent's id (or its name, or 'default').")
    user_id: Key = Field(alias="userId")
    metadata: dict[str, Any] = Field(default_factory=dict)
    timeout_config: TimeoutConfig | None = Field(None, alias="timeoutConfig")


class SessionInfo(Camel):
    session_id: str = Field(alias="sessionId")
    channel_id: uuid.UUID = Field(alias="channelId", description="Join it over Socket.IO to get the replies of "
                                                                 "`websocket` sends.")
    agent_id: uuid.UUID = Field(alias="agentId")
    user_id: str = Field(alias="userId")
    created_at: IsoTime = Field(alias="createdAt")
    last_activity: IsoTime = Field(alias="lastActivity")
    metadata: dict[str, Any]
    expires_at: IsoTime = Field(alias="expiresAt")
    timeout_config: EffectiveConfig = Field(alias="timeoutConfig")
    renewal_count: int = Field(alias="renewalCount")
    time_remaining: int = Field(alias="timeRemaining", description="Milliseconds until expiry.")
    is_near_expiration: bool = Field(alias="isNearExpiration")


class SessionsHealth(Camel):
    status: Literal["healthy"]
    active_sessions: int = Field(alias="activeSessions")
    expiring_soon: int = Field(alias="expiringSoon")
    timestamp: IsoTime
    uptime: float = Field(description="Seconds since the server started.")


class SessionStats(Camel):
    total_sessions: int = Field(alias="totalSessions")
    active_sessions: int = Field(alias="activeSessions")
    expired_sessions: int = Field(alias="expiredSessions")


class SessionList(Camel):
    sessions: list[SessionInfo]
    total: int
    stats: SessionStats


Transport = Literal["http", "sse", "websocket", "sync", "stream"]
_TRANSPORTS = {"sync": "http", "stream": "sse"}


class SendMessage(Camel):
    content: Text
    metadata: dict[str, Any] = Field(default_factory=dict)
    attachments: list[dict[str, Any]] = Field(default_factory=list, max_length=0,
                                              description="Not supported yet: send none.")
    transport: Transport | None = Field(None, description="websocket (default): answer at once, the reply goes "
                                        "to the session's Socket.IO channel; http: wait for the reply; sse: "
                                        "Server-Sent Events as the reply is written.")
    mode: Transport | None = Field(None, description="elizaOS's older name for transport.")

    @property
    def chosen_transport(self) -> str:
        chosen = self.transport or self.mode or "websocket"
        return _TRANSPORTS.get(chosen, chosen)


class UserMessage(Camel):
    id: uuid.UUID
    content: str
    author_id: str = Field(alias="authorId", description="The session's userId.")
    channel_id: uuid.UUID = Field(alias="channelId")
    created_at: IsoTime = Field(alias="createdAt")
    metadata: dict[str, Any]


class AgentResponse(Camel):
    id: uuid.UUID
    text: str
    thought: str | None = None
    actions: list[str] = Field(default_factory=list)
    in_reply_to: uuid.UUID | None = Field(None, alias="inReplyTo")

    @classmethod
    def of(cls, reply_id: uuid.UUID, content: Content, message_id: uuid.UUID) -> AgentResponse:
        return cls(id=reply_id, text=content.text, thought=content.thought, actions=content.actions,
                   in_reply_to=message_id)


class SendResult(Camel):
    user_message: UserMessage = Field(alias="userMessage")
    agent_response: AgentResponse | None = Field(None, alias="agentResponse",
                                                 description="http transport: the first reply (none when the "
                                                             "agent chose not to answer).")
    session_status: SessionStatus = Field(alias="sessionStatus")


class SendAnswer(SendResult):
    """elizaOS's own fields at top level, and the same under `data`, which the official client returns."""

    success: Literal[True] = True
    data: SendResult


class HistoryQuery(Camel):
    limit: int = Field(50, description="1 to 100; others are clamped, as elizaOS does.")
    before: int | None = Field(None, ge=0, le=MAX_TIME_MS, description="Epoch ms: only older messages.")
    after: int | None = Field(None, ge=0, le=MAX_TIME_MS, description="Epoch ms: only newer messages.")

    @field_validator("limit")
    @classmethod
    def _clamp(cls, limit: int) -> int:
        return min(max(limit, 1), 100)


class HistoryMessage(Camel):
    id: uuid.UUID
    content: str
    author_id: str = Field(alias="authorId", description="The session's userId for the user's messages.")
    is_agent: bool = Field(alias="isAgent")
    created_at: IsoTime = Field(alias="createdAt")
    metadata: dict[str, Any]

    @classmethod
    def of(cls, memory: Memory, agent_id: uuid.UUID) -> HistoryMessage:
        is_agent = memory.entity_id == agent_id
        if is_agent:
            metadata: dict[str, Any] = {"actions": memory.content.actions}
            if memory.content.thought:
                metadata["thought"] = memory.content.thought
        else:  # what the client sent with it, never the server's own context
            metadata = dict(memory.metadata.get("client") or {})
        if session_id := memory.metadata.get("session_id"):
            metadata["sessionId"] = session_id
        if tool_call := ToolCallOut.of(memory):  # a tool's call and result, not something said
            metadata["toolCall"] = tool_call.model_dump(mode="json", by_alias=True)
        author = memory.metadata.get("author") if not is_agent else None
        return cls(id=memory.id, content=memory.content.text, author_id=str(author or memory.entity_id),
                   is_agent=is_agent, created_at=from_ms(memory.created_at), metadata=metadata)


class Cursors(Camel):
    before: int = Field(description="Pass as `before` for the older page.")
    after: int = Field(description="Pass as `after` for newer messages.")


class History(Camel):
    messages: list[HistoryMessage]
    has_more: bool = Field(alias="hasMore", description="More messages lie beyond this page in its direction.")
    cursors: Cursors | None = None


class Ended(Camel):
    success: Literal[True] = True
    message: str
    data: dict[str, Any] = Field(description="The same fields, for the official client.")


def session_info(session: Session, now: float) -> SessionInfo:
    return SessionInfo(
        session_id=session.id, channel_id=session.channel, agent_id=session.agent_id, user_id=session.user_id,
        created_at=from_seconds(session.created_at), last_activity=from_seconds(session.last_activity),
        metadata=session.metadata, expires_at=from_seconds(session.expires_at), timeout_config=session.config,
        renewal_count=session.renewal_count, time_remaining=int(session.remaining(now) * 1000),
        is_near_expiration=session.near_expiry(now),
    )
