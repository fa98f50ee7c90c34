"""HTTP handlers of the Sessions API (`/api/sessions`), with elizaOS's camelCase field names."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ConfigDict, Field, model_validator

from bot.types import Memory

from .access import CALLER, Access, AccessPolicy
from .api import reply_timeout
from .app import check_metadata, json_response, parse_body, parse_query
from .conversation import Exchange, Pending, accept_message, memory_page, room_id_for
from .models import (
    TRANSPORT_DESCRIPTION,
    Camel,
    IsoTime,
    Key,
    Limit,
    ReplyOut,
    StreamChunk,
    Text,
    ToolCallOut,
    Transport,
    from_seconds,
)
from .openapi import Operation
from .sessions import MINUTE, EffectiveConfig, Session, SessionManager, TimeoutConfig
from .sse import stream_reply, wants_stream

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime


class SessionCreate(Camel):
    agent_id: Key | None = Field(None, alias="agentId", description="The agent to chat with: its id or name; "
                                 "omitted or 'default': the first character. The session stays with it.")
    user_id: Key = Field(alias="userId")
    timeout_config: TimeoutConfig | None = Field(None, alias="timeoutConfig")
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionOut(Camel):
    session_id: str = Field(alias="sessionId")
    agent_id: uuid.UUID = Field(alias="agentId")
    user_id: str = Field(alias="userId")
    created_at: IsoTime = Field(alias="createdAt")
    last_activity: IsoTime = Field(alias="lastActivity")
    expires_at: IsoTime = Field(alias="expiresAt")
    time_remaining: int = Field(alias="timeRemaining", description="Milliseconds until expiry.")
    is_near_expiration: bool = Field(alias="isNearExpiration")
    renewal_count: int = Field(alias="renewalCount")
    timeout_config: EffectiveConfig = Field(alias="timeoutConfig")
    metadata: dict[str, Any]


class SessionMessageIn(Camel):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["content"]}, {"required": ["text"]}]})

    # Optional but never null, as the schema says: exactly one of the two is given.
    content: Text = Field(None, validate_default=False)
    text: Text = Field(None, description="Accepted instead of content.", validate_default=False)
    metadata: dict[str, Any] = Field(default_factory=dict)
    transport: Transport | None = Field(None, description=TRANSPORT_DESCRIPTION)

    @model_validator(mode="after")
    def _one_text(self) -> SessionMessageIn:
        if (self.content is None) == (self.text is None):
            raise ValueError("give the message text as 'content' (or as 'text'): exactly one of the two")
        return self


class SessionStatus(Camel):
    expires_at: IsoTime = Field(alias="expiresAt")
    time_remaining: int = Field(alias="timeRemaining")
    renewal_count: int = Field(alias="renewalCount")
    was_renewed: bool = Field(alias="wasRenewed")
    is_near_expiration: bool = Field(alias="isNearExpiration")


class ExpiryWarning(Camel):
    message: str
    expires_in: int = Field(alias="expiresIn", description="Milliseconds until expiry.")


class SessionMessageResult(Camel):
    id: uuid.UUID
    content: str
    author_id: uuid.UUID = Field(alias="authorId")
    created_at: int = Field(alias="createdAt")
    status: str
    reply: ReplyOut | None
    replies: list[ReplyOut]
    session_status: SessionStatus = Field(alias="sessionStatus")
    expires_at: IsoTime = Field(alias="expiresAt")
    warning: ExpiryWarning | None = None


class SessionMessage(Camel):
    id: uuid.UUID
    content: str
    author_id: uuid.UUID = Field(alias="authorId")
    is_agent: bool = Field(alias="isAgent")
    actions: list[str]
    in_reply_to: uuid.UUID | None = Field(None, alias="inReplyTo")
    created_at: int = Field(alias="createdAt")
    tool_call: ToolCallOut | None = Field(None, alias="toolCall")

    @classmethod
    def of(cls, m: Memory, agent_id: uuid.UUID) -> SessionMessage:
        return cls(id=m.id, content=m.content.text, author_id=m.entity_id, is_agent=m.entity_id == agent_id,
                   actions=m.content.actions, in_reply_to=m.content.in_reply_to, created_at=m.created_at,
                   tool_call=ToolCallOut.of(m))


class SessionMessagesQuery(Camel):
    cursor: Key | None = None
    limit: Limit = 50


class SessionMessagePage(Camel):
    messages: list[SessionMessage]
    next_cursor: str | None = Field(alias="nextCursor")
    has_more: bool = Field(alias="hasMore")


class SessionEnded(Camel):
    success: bool
    message: str


def session_status(session: Session, renewed: bool, now: float) -> SessionStatus:
    return SessionStatus(expires_at=from_seconds(session.expires_at), time_remaining=int(session.remaining(now) * 1000),
                         renewal_count=session.renewal_count, was_renewed=renewed,
                         is_near_expiration=session.near_expiry(now))


async def accept_in_session(runtime: AgentRuntime, manager: SessionManager, session_id: str, *,
                            viewer: str | None, text: str, metadata: dict[str, Any],
                            stream: bool) -> tuple[Session, bool, Pending]:
    """A message from the session's user into its room (activity renews it): the session, whether
    it was renewed, and the accepted message. The user's own id is kept with the message, so the
    history can name the author as the client knows it."""
    session, renewed = await manager.touch(session_id, viewer)
    pending = await accept_message(
        runtime, user=session.user_id, user_name=None, room_key=session.room_key, room_name=f"session {session.id}",
        text=text, context={"session_id": session.id, "author": session.user_id}, client_metadata=metadata,
        stream=stream)
    return session, renewed, pending


class SessionApi:
    """Admins may use every session; a web chat visitor only the sessions it created."""

    def __init__(self, runtime: AgentRuntime, manager: SessionManager, policy: AccessPolicy) -> None:
        self.runtime, self.manager, self.policy = runtime, manager, policy

    def _metadata_cap(self) -> int:
        return self.runtime.settings.session_max_metadata_bytes

    def _out(self, session: Session) -> SessionOut:
        now = self.manager.clock()
        return SessionOut(
            session_id=session.id, agent_id=session.agent_id, user_id=session.user_id,
            created_at=from_seconds(session.created_at), last_activity=from_seconds(session.last_activity),
            expires_at=from_seconds(session.expires_at), time_remaining=int(session.remaining(now) * 1000),
            is_near_expiration=session.near_expiry(now), renewal_count=session.renewal_count,
            timeout_config=session.config, metadata=session.metadata,
        )

    async def create_session(self, request: web.Request) -> web.Response:
        caller = request[CALLER]
        body = await parse_body(request, SessionCreate)  # its agentId chose this agent (`directory.Agents`)
        check_metadata(body.metadata, self._metadata_cap())
        session = await self.manager.create(caller.user_id or body.user_id, body.timeout_config, body.metadata,
                                            owner=caller.owner, client=None if caller.admin else caller.client)
        return json_response(self._out(session), status=201)

    async def get_session(self, request: web.Request) -> web.Response:
        return json_response(self._out(await self.manager.get(request.match_info["session_id"],
                                                              request[CALLER].owner)))

    async def send_session_message(self, request: web.Request) -> web.StreamResponse:
        session_id, caller = request.match_info["session_id"], request[CALLER]
        await self.manager.get(session_id, caller.owner)  # 404 before reading the body
        body = await parse_body(request, SessionMessageIn)
        check_metadata(body.metadata, self._metadata_cap())
        await self.policy.check_message(caller, session_id)
        streaming = wants_stream(request, body.transport)
        session, renewed, pending = await accept_in_session(
            self.runtime, self.manager, session_id, viewer=caller.owner, text=body.content or body.text or "",
            metadata=body.metadata, stream=streaming)

        def result(exchange: Exchange) -> SessionMessageResult:
            return self._result(session, renewed, exchange)

        timeout = reply_timeout(self.runtime)
        if streaming:
            return await stream_reply(request, pending, timeout=timeout, result=result,
                                      user_message=SessionMessage.of(pending.message, self.runtime.agent_id))
        return json_response(result(await pending.reply(timeout)))

    def _result(self, session: Session, renewed: bool, exchange: Exchange) -> SessionMessageResult:
        now = self.manager.clock()
        remaining_ms = int(session.remaining(now) * 1000)
        warning = None
        if session.near_expiry(now):
            warning = ExpiryWarning(message=f"This session expires in {session.remaining(now) / MINUTE:.0f} "
                                    "minute(s).", expires_in=remaining_ms)
        replies = [ReplyOut.of(reply_id, content) for reply_id, content in exchange.replies]
        message = exchange.message
        return SessionMessageResult(
            id=message.id, content=message.content.text, author_id=message.entity_id,
            created_at=message.created_at, status=exchange.status, reply=replies[0] if replies else None,
            replies=replies, expires_at=from_seconds(session.expires_at), warning=warning,
            session_status=session_status(session, renewed, now),
        )

    async def list_session_messages(self, request: web.Request) -> web.Response:
        session = await self.manager.get(request.match_info["session_id"], request[CALLER].owner)
        query = parse_query(request, SessionMessagesQuery)
        page, cursor = await memory_page(self.runtime, room_id=room_id_for(self.runtime, session.room_key),
                                         limit=query.limit, cursor=query.cursor)
        agent_id = self.runtime.agent_id
        return json_response(SessionMessagePage(messages=[SessionMessage.of(m, agent_id) for m in page],
                                                next_cursor=cursor, has_more=cursor is not None))

    async def renew_session(self, request: web.Request) -> web.Response:
        return json_response(self._out(await self.manager.renew(request.match_info["session_id"],
                                                                request[CALLER].owner)))

    async def heartbeat(self, request: web.Request) -> web.Response:
        session, _ = await self.manager.touch(request.match_info["session_id"], request[CALLER].owner)
        return json_response(self._out(session))

    async def end_session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        await self.manager.delete(session_id, request[CALLER].owner)
        return json_response(SessionEnded(success=True, message=f"session {session_id} ended"))

    def _links(self) -> dict[str, tuple[str, dict[str, str]]]:
        """What a client can do with the session it created (also guides schemathesis' stateful phase)."""
        handlers = (self.get_session, self.send_session_message, self.list_session_messages, self.renew_session,
                    self.heartbeat, self.end_session)
        return {h.__name__: (h.__name__, {"session_id": "$response.body#/sessionId"}) for h in handlers}

    def operations(self) -> list[Operation]:
        sid = {"session_id": "the id POST /api/sessions returned"}
        operations = [
            Operation("POST", "/api/sessions", self.create_session, "Start a chat session", "sessions",
                      {201: SessionOut}, body=SessionCreate, errors=[404, 429], links=self._links(),
                      description="timeoutConfig overrides the agent's settings, which override the "
                                  "SESSION_* defaults. A web chat visitor (WEB_CHAT=public, no key) gets a "
                                  "session cookie, a userId of the server's choosing and at most the default "
                                  "timeouts."),
            Operation("GET", "/api/sessions/{session_id}", self.get_session, "A session's status", "sessions",
                      {200: SessionOut}, errors=[404], path_params=sid),
            Operation("POST", "/api/sessions/{session_id}/messages", self.send_session_message,
                      "Send a message in a session and get the reply", "sessions", {200: SessionMessageResult},
                      body=SessionMessageIn, errors=[404, 429, 504], path_params=sid,
                      events={"user_message": SessionMessage, "chunk": StreamChunk, "done": SessionMessageResult}),
            Operation("GET", "/api/sessions/{session_id}/messages", self.list_session_messages,
                      "A session's messages, newest first", "sessions", {200: SessionMessagePage},
                      query=SessionMessagesQuery, errors=[404], path_params=sid),
            Operation("POST", "/api/sessions/{session_id}/renew", self.renew_session, "Extend a session",
                      "sessions", {200: SessionOut}, errors=[404, 422], path_params=sid),
            Operation("POST", "/api/sessions/{session_id}/heartbeat", self.heartbeat,
                      "Keep a session alive (renews it when autoRenew is on)", "sessions", {200: SessionOut},
                      errors=[404], path_params=sid),
            Operation("DELETE", "/api/sessions/{session_id}", self.end_session, "End a session", "sessions",
                      {200: SessionEnded}, errors=[404], path_params=sid),
        ]
        for operation in operations:
            operation.access = Access.VISITOR_START if operation.handler == self.create_session else Access.VISITOR
        return operations
