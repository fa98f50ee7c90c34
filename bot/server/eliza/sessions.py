"""elizaOS 1.7's messaging sessions (`/api/messaging/sessions`), as its official client calls them.

The same sessions as parley's own `/api/sessions` (one `SessionManager`), in elizaOS's shapes:
bare JSON bodies, ISO times, and a channel per session. A message sent with the `websocket`
transport (elizaOS's default) is answered at once; its reply reaches the Socket.IO sockets that
joined the session's channel (`Realtime`). `http` waits for the reply and `sse` streams it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from bot.types import Memory, MemoryType

from ..api import reply_timeout
from ..app import check_metadata, json_response, parse_body, parse_query
from ..conversation import Exchange, room_id_for
from ..errors import ApiError
from ..models import UUID_PATTERN, StreamChunk, from_ms, from_seconds
from ..openapi import Operation
from ..session_api import accept_in_session, session_status
from ..sessions import Session, SessionExpired, SessionManager, SessionNotFound, TimeoutConfig
from ..sse import stream_reply
from .realtime import Realtime
from .session_models import (
    AgentResponse,
    CreateSession,
    Cursors,
    Ended,
    History,
    HistoryMessage,
    HistoryQuery,
    SendAnswer,
    SendMessage,
    SendResult,
    SessionInfo,
    SessionList,
    SessionsHealth,
    SessionStats,
    UserMessage,
    session_info,
)

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

PREFIX = "/api/messaging/sessions"


class ElizaSessionApi:
    """Admin only: elizaOS's clients hold the API key (web chat visitors use `/api/sessions`)."""

    def __init__(self, runtime: AgentRuntime, manager: SessionManager, realtime: Realtime, started_at: float, *,
                 managers: Callable[[], list[SessionManager]]) -> None:
        """`manager` holds this agent's sessions; `managers` every agent's, for the lists."""
        self.runtime, self.manager, self.realtime, self.managers = runtime, manager, realtime, managers
        self.started_at = started_at  # time.monotonic() when the server started, for `uptime`

    async def _live(self, request: web.Request) -> list[SessionInfo]:
        """The live sessions of the agent the query names, else of every agent."""
        managers = [self.manager] if "agent" in request.query else self.managers()
        return [self._info(s) for manager in managers for s in await manager.live()]

    def _info(self, session: Session) -> SessionInfo:
        return session_info(session, self.manager.clock())

    async def _session(self, session_id: str) -> Session:
        """The live session; an expired one is 410 Gone, as elizaOS answers."""
        try:
            return await self.manager.get(session_id)
        except SessionExpired:
            raise ApiError(410, "SESSION_EXPIRED", f"session {session_id!r} has expired; create a new one with "
                           f"POST {PREFIX}") from None
        except SessionNotFound:
            raise ApiError(404, "SESSION_NOT_FOUND", f"no session {session_id!r}; create one with POST "
                           f"{PREFIX}") from None

    async def create_messaging_session(self, request: web.Request) -> web.Response:
        body = await parse_body(request, CreateSession)  # its agentId chose this agent (`directory.Agents`)
        check_metadata(body.metadata, self.runtime.settings.session_max_metadata_bytes)
        session = await self.manager.create(body.user_id, body.timeout_config, body.metadata)
        return json_response(self._info(session), status=201)

    async def get_messaging_session(self, request: web.Request) -> web.Response:
        return json_response(self._info(await self._session(request.match_info["session_id"])))

    async def list_messaging_sessions(self, request: web.Request) -> web.Response:
        sessions = await self._live(request)
        stats = SessionStats(total_sessions=len(sessions), active_sessions=len(sessions), expired_sessions=0)
        return json_response(SessionList(sessions=sessions, total=len(sessions), stats=stats))

    async def messaging_sessions_health(self, request: web.Request) -> web.Response:
        live = await self._live(request)
        return json_response(SessionsHealth(
            status="healthy", active_sessions=len(live), expiring_soon=sum(s.is_near_expiration for s in live),
            timestamp=from_seconds(time.time()), uptime=round(time.monotonic() - self.started_at, 3)))

    async def send_messaging_session_message(self, request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["session_id"]
        await self._session(session_id)  # 404 before reading the body
        body = await parse_body(request, SendMessage)
        check_metadata(body.metadata, self.runtime.settings.session_max_metadata_bytes)
        transport = body.chosen_transport
        session, renewed, pending = await accept_in_session(
            self.runtime, self.manager, session_id, viewer=None, text=body.content, metadata=body.metadata,
            stream=transport != "http")
        user_message = UserMessage(id=pending.message.id, content=body.content, author_id=session.user_id,
                                   channel_id=session.channel, created_at=from_ms(pending.message.created_at),
                                   metadata={**body.metadata, "sessionId": session.id})
        status = session_status(session, renewed, self.manager.clock())
        if transport == "sse":
            return await stream_reply(
                request, pending, timeout=reply_timeout(self.runtime), user_message=user_message,
                result=lambda exchange: SendResult(user_message=user_message, session_status=status,
                                                   agent_response=_agent_response(exchange)))
        if transport == "websocket":
            self.realtime.relay(pending, session.channel)
            return self._answer(SendResult(user_message=user_message, session_status=status))
        exchange = await pending.reply(reply_timeout(self.runtime))
        return self._answer(SendResult(user_message=user_message, agent_response=_agent_response(exchange),
                                       session_status=status))

    @staticmethod
    def _answer(result: SendResult) -> web.Response:
        """elizaOS's fields at top level and under `data`; no agentResponse key when there is none."""
        fields = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return web.json_response({"success": True, **fields, "data": fields}, status=201)

    async def list_messaging_session_messages(self, request: web.Request) -> web.Response:
        session = await self._session(request.match_info["session_id"])
        query = parse_query(request, HistoryQuery)
        page, has_more = await self._history(session, query)
        agent_id = self.runtime.agent_id
        cursors = Cursors(before=page[-1].created_at, after=page[0].created_at) if page else None
        return json_response(History(messages=[HistoryMessage.of(m, agent_id) for m in page], has_more=has_more,
                                     cursors=cursors))

    async def _history(self, session: Session, query: HistoryQuery) -> tuple[list[Memory], bool]:
        """Newest first, `limit` at most. With `after`, the oldest messages after it (the page next to
        the cursor). A page never splits a millisecond, so the next page's `before`/`after` (this
        page's cursors) starts exactly where it ends."""
        store, agent_id = self.runtime.store, self.runtime.agent_id
        room_id = room_id_for(self.runtime, session.room_key)
        forward = query.after is not None
        found = await store.get_memories(agent_id=agent_id, room_id=room_id, type=MemoryType.MESSAGE,
                                         count=None if forward else query.limit + 1, before=query.before,
                                         after=query.after)
        found.sort(key=lambda m: (m.created_at, str(m.id)), reverse=True)
        if len(found) <= query.limit:
            return found, False
        page = found[-query.limit:] if forward else found[:query.limit]
        beyond = found[-query.limit - 1] if forward else found[query.limit]
        edge = beyond.created_at
        whole = [m for m in page if m.created_at != edge]
        if whole:
            return whole, True
        # Every message of the page shares the edge's millisecond: all of that millisecond, then.
        ties = await store.get_memories(agent_id=agent_id, room_id=room_id, type=MemoryType.MESSAGE, count=None,
                                        before=edge + 1, after=edge - 1)
        return sorted(ties, key=lambda m: str(m.id), reverse=True), True

    async def renew_messaging_session(self, request: web.Request) -> web.Response:
        await self._session(request.match_info["session_id"])
        return json_response(self._info(await self.manager.renew(request.match_info["session_id"])))

    async def messaging_session_heartbeat(self, request: web.Request) -> web.Response:
        await self._session(request.match_info["session_id"])
        session, _ = await self.manager.touch(request.match_info["session_id"])
        return json_response(self._info(session))

    async def update_messaging_session_timeout(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        await self._session(session_id)
        body = await parse_body(request, TimeoutConfig)
        return json_response(self._info(await self.manager.reconfigure(session_id, body)))

    async def end_messaging_session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        await self._session(session_id)
        await self.manager.delete(session_id)
        message = f"Session {session_id} deleted successfully"
        return json_response(Ended(message=message, data={"success": True, "message": message}))

    def operations(self) -> list[Operation]:
        sid = {"session_id": "the sessionId that creating the session returned"}
        one = PREFIX + "/{session_id}"
        operations = [
            Operation("POST", PREFIX, self.create_messaging_session, "Start a session (elizaOS)", "elizaOS sessions",
                      {201: SessionInfo}, body=CreateSession, errors=[404, 429],
                      description="timeoutConfig overrides the agent's settings, which override the SESSION_* "
                                  "defaults. The session's channelId is its Socket.IO channel."),
            Operation("GET", PREFIX, self.list_messaging_sessions, "List live sessions", "elizaOS sessions",
                      {200: SessionList}),
            Operation("GET", PREFIX + "/health", self.messaging_sessions_health, "Sessions health",
                      "elizaOS sessions", {200: SessionsHealth}),
            Operation("GET", one, self.get_messaging_session, "A session", "elizaOS sessions", {200: SessionInfo},
                      errors=[404], path_params=sid),
            Operation("POST", one + "/messages", self.send_messaging_session_message, "Send a message",
                      "elizaOS sessions", {201: SendAnswer}, body=SendMessage, errors=[404, 429, 504],
                      path_params=sid, events={"user_message": UserMessage, "chunk": StreamChunk,
                                               "done": SendResult},
                      description="transport websocket (default) answers at once and sends the reply to the "
                                  "session's Socket.IO channel; http waits for the reply (agentResponse); sse "
                                  "answers with Server-Sent Events."),
            Operation("GET", one + "/messages", self.list_messaging_session_messages, "A session's messages, "
                      "newest first", "elizaOS sessions", {200: History}, query=HistoryQuery, errors=[404],
                      path_params=sid),
            Operation("POST", one + "/renew", self.renew_messaging_session, "Extend a session", "elizaOS sessions",
                      {200: SessionInfo}, errors=[404, 422], path_params=sid),
            Operation("POST", one + "/heartbeat", self.messaging_session_heartbeat, "Keep a session alive",
                      "elizaOS sessions", {200: SessionInfo}, errors=[404], path_params=sid),
            Operation("PATCH", one + "/timeout", self.update_messaging_session_timeout, "Change a session's "
                      "timeouts", "elizaOS sessions", {200: SessionInfo}, body=TimeoutConfig, errors=[404],
                      path_params=sid),
            Operation("DELETE", one, self.end_messaging_session, "End a session", "elizaOS sessions",
                      {200: Ended}, errors=[404], path_params=sid),
        ]
        for operation in operations:  # a session id is a UUID, so `/health` is never taken for one
            operation.path_schemas = {"session_id": {"pattern": UUID_PATTERN}}
        return operations


def _agent_response(exchange: Exchange) -> AgentResponse | None:
    if not exchange.replies:
        return None
    reply_id, content = exchange.replies[0]
    return AgentResponse.of(reply_id, content, exchange.message.id)

