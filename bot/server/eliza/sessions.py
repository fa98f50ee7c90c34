"""elizaOS 1.7's messaging sessions (`/api/messaging/sessions`), as its official client calls them.

The same sessions as parley's own `/api/sessions` (one `SessionManager`), in elizaOS's shapes:
bare JSON bodies, ISO times, and a channel per session. A message sent with the `websocket`
transport (elizaOS's default) is answered at once; its reply reaches the Socket.IO sockets that
joined the session's channel (`Realtime`). `http` waits for the reply and `sse` streams it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from bot.types import Memory, MemoryType

from ..access import AccessPolicy
from ..api import RestApi, reply_timeout
from ..app import check_metadata, json_response, parse_body, parse_query
from ..conversation import Exchange, accept_message, room_id_for
from ..models import StreamChunk
from ..openapi import Operation
from ..sessions import Session, SessionManager, TimeoutConfig
from ..sse import stream_reply
from .channels import session_channel_id
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
    SessionStatusInfo,
    UserMessage,
    from_ms,
    from_seconds,
    session_info,
)

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

PREFIX = "/api/messaging/sessions"
SESSION_ID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_STARTED = time.monotonic()


class ElizaSessionApi:
    """Admin only: elizaOS's clients hold the API key (web chat visitors use `/api/sessions`)."""

    def __init__(self, runtime: AgentRuntime, manager: SessionManager, rest: RestApi, policy: AccessPolicy,
                 realtime: Realtime) -> None:
        self.runtime, self.manager, self.rest, self.policy, self.realtime = runtime, manager, rest, policy, realtime

    def _info(self, session: Session) -> SessionInfo:
        return session_info(session, session_channel_id(self.runtime, session), self.manager.clock())

    async def create_messaging_session(self, request: web.Request) -> web.Response:
        body = await parse_body(request, CreateSession)
        self.rest.resolve_agent(body.agent_id)
        check_metadata(body.metadata, self.runtime.settings.session_max_metadata_bytes)
        session = await self.manager.create(body.user_id, body.timeout_config, body.metadata)
        return json_response(self._info(session), status=201)

    async def get_messaging_session(self, request: web.Request) -> web.Response:
        return json_response(self._info(await self.manager.get(request.match_info["session_id"])))

    async def list_messaging_sessions(self, request: web.Request) -> web.Response:
        sessions = [self._info(s) for s in await self.manager.live()]
        stats = SessionStats(total_sessions=len(sessions), active_sessions=len(sessions), expired_sessions=0)
        return json_response(SessionList(sessions=sessions, total=len(sessions), stats=stats))

    async def messaging_sessions_health(self, request: web.Request) -> web.Response:
        live = [self._info(s) for s in await self.manager.live()]
        return json_response(SessionsHealth(
            status="healthy", active_sessions=len(live), expiring_soon=sum(s.is_near_expiration for s in live),
            timestamp=from_seconds(time.time()), uptime=round(time.monotonic() - _STARTED, 3)))

    async def send_messaging_session_message(self, request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["session_id"]
        await self.manager.get(session_id)  # 404 before reading the body
        body = await parse_body(request, SendMessage)
        check_metadata(body.metadata, self.runtime.settings.session_max_metadata_bytes)
        session, renewed = await self.manager.touch(session_id)
        transport = body.chosen_transport
        pending = await accept_message(
            self.runtime, user=session.user_id, user_name=None, room_key=session.room_key,
            room_name=f"session {session.id}", text=body.content, context={"session_id": session.id},
            client_metadata=body.metadata, stream=transport != "http",
        )
        channel_id = session_channel_id(self.runtime, session)
        user_message = UserMessage(id=pending.message.id, content=body.content, author_id=pending.message.entity_id,
                                   channel_id=channel_id, created_at=from_ms(pending.message.created_at),
                                   metadata={**body.metadata, "sessionId": session.id})
        status = self._status(session, renewed)
        if transport == "sse":
            return await stream_reply(
                request, pending, timeout=reply_timeout(self.runtime), user_message=user_message,
                result=lambda exchange: SendResult(user_message=user_message, session_status=status,
                                                   agent_response=_agent_response(exchange)))
        if transport == "websocket":
            self.realtime.relay(pending, channel_id)
            return self._answer(SendResult(user_message=user_message, session_status=status))
        exchange = await pending.reply(reply_timeout(self.runtime))
        return self._answer(SendResult(user_message=user_message, agent_response=_agent_response(exchange),
                                       session_status=status))

    @staticmethod
    def _answer(result: SendResult) -> web.Response:
        fields = result.model_dump(by_alias=True)
        return json_response(SendAnswer.model_validate({**fields, "data": fields}), status=201)

    def _status(self, session: Session, renewed: bool) -> SessionStatusInfo:
        now = self.manager.clock()
        return SessionStatusInfo(expires_at=from_seconds(session.expires_at),
                                 time_remaining=int(session.remaining(now) * 1000),
                                 renewal_count=session.renewal_count, was_renewed=renewed,
                                 is_near_expiration=session.near_expiry(now))

    async def list_messaging_session_messages(self, request: web.Request) -> web.Response:
        session = await self.manager.get(request.match_info["session_id"])
        query = parse_query(request, HistoryQuery)
        page, has_more = await self._history(session, query)
        agent_id = self.runtime.agent_id
        cursors = Cursors(before=page[-1].created_at, after=page[0].created_at) if page else None
        return json_response(History(messages=[HistoryMessage.of(m, agent_id) for m in page], has_more=has_more,
                                     cursors=cursors))

    async def _history(self, session: Session, query: HistoryQuery) -> tuple[list[Memory], bool]:
        """Newest first. With `after`, the oldest `limit` messages after it (the page next to the
        cursor), so paging forward from a cursor skips nothing."""
        store, agent_id = self.runtime.store, self.runtime.agent_id
        room_id = room_id_for(self.runtime, session.room_key)
        if query.after is None:
            found = await store.get_memories(agent_id=agent_id, room_id=room_id, type=MemoryType.MESSAGE,
                                             count=query.limit + 1, before=query.before)
            return found[:query.limit], len(found) > query.limit
        found = await store.get_memories(agent_id=agent_id, room_id=room_id, type=MemoryType.MESSAGE, count=None,
                                         before=query.before, after=query.after)
        return found[-query.limit:], len(found) > query.limit

    async def renew_messaging_session(self, request: web.Request) -> web.Response:
        return json_response(self._info(await self.manager.renew(request.match_info["session_id"])))

    async def messaging_session_heartbeat(self, request: web.Request) -> web.Response:
        session, _ = await self.manager.touch(request.match_info["session_id"])
        return json_response(self._info(session))

    async def update_messaging_session_timeout(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        await self.manager.get(session_id)
        body = await parse_body(request, TimeoutConfig)
        return json_response(self._info(await self.manager.reconfigure(session_id, body)))

    async def end_messaging_session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
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
            operation.path_schemas = {"session_id": {"pattern": SESSION_ID}}
        return operations


def _agent_response(exchange: Exchange) -> AgentResponse | None:
    if not exchange.replies:
        return None
    reply_id, content = exchange.replies[0]
    return AgentResponse.of(reply_id, content, exchange.message.id)

