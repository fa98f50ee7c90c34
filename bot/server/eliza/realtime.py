"""Socket.IO at /socket.io/, speaking elizaOS 1.7's real-time protocol, so its clients (the web UI,
`socket.io-client` scripts) can chat with parley live.

A socket is the admin's only: the handshake's `auth.apiKey` (or an X-API-KEY header) must be
API_KEY, or without API_KEY the socket must come straight from this machine, as for the admin API.
Its `auth.entityId` (a UUID) is who it speaks as; it cannot send as anyone else.

A socket joins channels (UUIDs; each is a parley room, a session's channel is the session's room)
and sends messages into them. Everything about a message is sent to the channel's Socket.IO room:
the user's message, the reply's text while it is written (`messageStreamChunk`), the reply
(`messageBroadcast`) and `messageComplete`. `relay` does the reply part for the session API too.
Errors reach clients as `messageError {error}` with the REST API's messages.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import socketio
from aiohttp import web
from socketio.exceptions import ConnectionRefusedError as Refused

from bot.types import Content, now_ms

from ..access import AccessPolicy, is_direct_loopback
from ..api import reply_timeout
from ..app import STATE, Lifecycle, ServerState, check_metadata
from ..conversation import Exchange, Pending, StreamingCollector, accept_message
from ..errors import ApiError
from ..models import StreamChunk
from ..sessions import SessionManager
from .channels import DEFAULT_SERVER_ID, channel_room_key
from .realtime_events import (
    AgentBroadcast,
    Authenticated,
    ConnectionEstablished,
    Event,
    Handshake,
    Joined,
    JoinIn,
    MessageAck,
    MessageComplete,
    MessageError,
    SendIn,
    StreamChunkEvent,
    UserBroadcast,
)

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

BAD_KEY = "Invalid or missing API Key"
BAD_ENTITY = "Valid entityId required"
NO_CHANNEL = "channelId is required for joining."
INTERNAL = "internal error; the operator can find details in the logs"


def _settle(task: asyncio.Task[Any]) -> None:
    """Read a finished task's error, so one nobody awaited (its relay was stopped) is not logged as lost."""
    if not task.cancelled():
        task.exception()


def _report(task: asyncio.Task[None]) -> None:
    """A background task's unexpected error, logged (nobody awaits these tasks for their result)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("Socket.IO task %s failed", task.get_name(), exc_info=error)


class Realtime:
    """The Socket.IO server, its sockets' identities and the relays of replies in flight."""

    def __init__(self, runtime: AgentRuntime, policy: AccessPolicy, sessions: SessionManager) -> None:
        self.runtime, self.policy, self.sessions = runtime, policy, sessions
        # With API_KEY the key in the handshake (never ambient, like a cookie) admits a socket, so any
        # origin may connect, as in elizaOS. Without it a socket is admitted for coming from this
        # machine, and a page of another origin in the owner's browser comes from there too: then
        # only this server's own pages may connect.
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp", cors_allowed_origins="*" if policy.api_key else None, logger=False,
            engineio_logger=False, max_http_buffer_size=runtime.settings.max_body_bytes,
        )
        self._entities: dict[str, uuid.UUID] = {}  # socket id → the entity it authenticated as
        self._tasks: set[asyncio.Task[None]] = set()
        self._state: ServerState | None = None
        self._stopped = False
        for event, handler in (("connect", self._connect), ("disconnect", self._disconnect),
                               ("message", self._message), ("1", self._join), ("2", self._send)):
            self.sio.on(event, handler)

    def attach(self, app: web.Application) -> None:
        """Serve Socket.IO at /socket.io/ on `app`. Its requests are public to the HTTP middlewares:
        the socket's own handshake auth admits it."""
        self.sio.attach(app)
        self._state = app[STATE]

    # Connections -------------------------------------------------------------------------------
    def _is_admin(self, request: web.Request | None, auth: dict[str, Any]) -> bool:
        if not self.policy.api_key:
            return request is not None and is_direct_loopback(request)
        presented = [auth.get("apiKey")]
        if request is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            presented += [request.headers.get("X-API-KEY", ""), token if scheme.lower() == "bearer" else ""]
        key = self.policy.api_key.encode()
        # Every candidate is compared in full (constant time), wherever it came from.
        return any([hmac.compare_digest(given.strip().encode("utf-8", "replace"), key)
                    for given in presented if isinstance(given, str) and given.strip()])

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        if self._stopped:
            raise Refused("the server is shutting down")
        auth = auth if isinstance(auth, dict) else {}
        if not self._is_admin(environ.get("aiohttp.request"), auth):
            raise Refused(BAD_KEY)
        try:
            entity = Handshake.parse(auth, "auth").entity_id
        except ApiError:
            raise Refused(BAD_ENTITY) from None
        self._entities[sid] = entity
        # Socket.IO sends the connect packet after this handler returns: greeting from a task puts
        # the greetings after it, where a client takes them as events of an open socket.
        self._spawn(self._greet(sid, entity), f"socket-greet-{sid}")

    async def _greet(self, sid: str, entity: uuid.UUID) -> None:
        await self._emit("authenticated", Authenticated(entity_id=entity, timestamp=now_ms()), sid)
        await self._emit("connection_established", ConnectionEstablished(socket_id=sid), sid)

    async def _disconnect(self, sid: str, reason: str | None = None) -> None:
        self._entities.pop(sid, None)

    # Client events -----------------------------------------------------------------------------
    async def _message(self, sid: str, data: Any) -> None:
        """`message` with `{type, payload}`: 1 joins, 2 sends; anything else is ignored, as elizaOS does."""
        if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
            return
        kind = data.get("type")
        if kind == 1:
            await self._join(sid, data["payload"])
        elif kind == 2:
            await self._send(sid, data["payload"])

    async def _join(self, sid: str, payload: Any) -> None:
        try:
            join = JoinIn.parse(payload, "join")
            if join.channel is None:
                raise ApiError(400, "INVALID_JOIN", NO_CHANNEL)
        except ApiError as error:
            await self._emit("messageError", MessageError(error=error.message), sid)
            return
        channel = join.channel
        await self.sio.enter_room(sid, str(channel))
        joined = Joined(message=f"Socket {sid} successfully joined channel {channel}.", channel_id=channel,
                        room_id=channel, agent_id=join.agent_id)
        await self._emit("channel_joined", joined, sid)
        await self._emit("room_joined", joined, sid)

    async def _send(self, sid: str, payload: Any) -> None:
        try:
            await self._accept(sid, payload)
        except ApiError as error:
            await self._emit("messageError", MessageError(error=error.message), sid)
        except Exception:
            log.exception("a Socket.IO message could not be taken")
            await self._emit("messageError", MessageError(error=INTERNAL), sid)

    def _check_running(self) -> None:
        lifecycle = self._state.lifecycle if self._state is not None else Lifecycle.STARTING
        if lifecycle is Lifecycle.STARTING:
            raise ApiError(503, "STARTING", "the agent is starting; try again in a moment")
        if lifecycle is Lifecycle.STOPPING:
            raise ApiError(503, "SHUTTING_DOWN", "the server is shutting down and takes no new work")

    async def _room_of(self, channel: uuid.UUID) -> tuple[str, str]:
        """The parley room a channel's messages go to: its session's, or the channel's own."""
        session = await self.sessions.by_channel(channel)
        if session is None:
            return channel_room_key(channel), f"channel {channel}"
        await self.sessions.touch(session.id)
        return session.room_key, f"session {session.id}"

    async def _accept(self, sid: str, payload: Any) -> None:
        """Store the message (the reply's run starts), tell the channel, then relay the reply."""
        send = SendIn.parse(payload, "message")
        if send.sender_id != self._entities.get(sid):
            raise ApiError(403, "FORBIDDEN", "senderId must be the entityId this socket authenticated with")
        self._check_running()
        if send.metadata:
            check_metadata(send.metadata, self.runtime.settings.session_max_metadata_bytes)
        channel = send.channel_id
        room_key, room_name = await self._room_of(channel)
        pending = await accept_message(
            self.runtime, user=str(send.sender_id), user_name=send.sender_name, room_key=room_key,
            room_name=room_name, text=send.message, context={"channel_id": str(channel)},
            client_metadata=send.metadata or None, stream=True,
            message_key=f"eliza:msg:{channel}:{send.message_id}" if send.message_id else None,
        )
        message = pending.message
        broadcast = UserBroadcast(
            id=message.id, sender_id=send.sender_id, sender_name=send.sender_name or "User",
            text=message.content.text, channel_id=channel, room_id=channel, created_at=message.created_at,
            message_server_id=send.message_server_id or DEFAULT_SERVER_ID,
            source=send.source or "socketio_client",
        )
        await self._emit("messageBroadcast", broadcast, str(channel), skip_sid=sid)
        echo = broadcast.model_copy(update={"client_message_id": send.message_id})
        await self._emit("messageBroadcast", echo, sid)
        await self._emit("messageAck", MessageAck(client_message_id=send.message_id, message_id=message.id,
                                                  channel_id=channel, room_id=channel), sid)
        self.relay(pending, channel)

    # Replies -----------------------------------------------------------------------------------
    def relay(self, pending: Pending, channel_id: uuid.UUID) -> None:
        """Send the reply of an accepted message to every socket in `channel_id`: messageStreamChunk
        events as it is written (when `pending` streams), one messageBroadcast per reply, then
        messageComplete; or messageError when the run ended otherwise. Returns at once."""
        if self._stopped:  # the run goes on and its reply is stored; no socket is left to tell
            return
        self._spawn(self._relay(pending, channel_id), f"socket-relay-{pending.message.id}")

    async def _relay(self, pending: Pending, channel_id: uuid.UUID) -> None:
        room = str(channel_id)
        # The run's own future is shielded in `reply`: cancelling this (stop) only stops the waiting.
        reply = asyncio.create_task(pending.reply(reply_timeout(self.runtime)), name="socket-relay-reply")
        reply.add_done_callback(_settle)
        try:
            collector = pending.collector
            if isinstance(collector, StreamingCollector):
                reply.add_done_callback(lambda _: collector.chunks.put_nowait(None))  # after every chunk
                while (chunk := await collector.chunks.get()) is not None:
                    await self._emit("messageStreamChunk", self._chunk(chunk, channel_id), room)
            exchange = await reply
        except ApiError as error:
            await self._emit("messageError", MessageError(error=error.message, channel_id=channel_id), room)
            return
        except Exception:
            log.exception("the reply to message %s could not be relayed", pending.message.id)
            await self._emit("messageError", MessageError(error=INTERNAL, channel_id=channel_id), room)
            return
        finally:
            reply.cancel()
        await self._broadcast(exchange, channel_id)

    def _chunk(self, chunk: StreamChunk, channel_id: uuid.UUID) -> StreamChunkEvent:
        return StreamChunkEvent(message_id=chunk.message_id, chunk=chunk.chunk, index=chunk.index,
                                agent_id=self.runtime.agent_id, channel_id=channel_id, room_id=channel_id,
                                reset=True if chunk.reset else None)

    async def _broadcast(self, exchange: Exchange, channel_id: uuid.UUID) -> None:
        """Each reply with text (elizaOS sends none for silence), then messageComplete."""
        room = str(channel_id)
        for reply_id, content in exchange.replies:
            if content.text:
                await self._emit("messageBroadcast", self._agent_message(reply_id, content, channel_id), room)
        await self._emit("messageComplete", MessageComplete(channel_id=channel_id, room_id=channel_id), room)

    def _agent_message(self, reply_id: uuid.UUID, content: Content, channel_id: uuid.UUID) -> AgentBroadcast:
        return AgentBroadcast(
            id=reply_id, sender_id=self.runtime.agent_id, sender_name=self.runtime.character.name,
            text=content.text, room_id=channel_id, channel_id=channel_id, server_id=DEFAULT_SERVER_ID,
            created_at=now_ms(),
            thought=content.thought or None, actions=content.actions or None,
        )

    # Plumbing ----------------------------------------------------------------------------------
    async def _emit(self, event: str, data: Event, to: str, *, skip_sid: str | None = None) -> None:
        await self.sio.emit(event, data.dump(), to=to, skip_sid=skip_sid)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_report)

    async def stop(self) -> None:
        """Disconnect every socket and wait for the relays in flight to end (their runs go on)."""
        self._stopped = True
        for sid in list(self._entities):
            await self.sio.disconnect(sid)
        # Engine.IO sessions left (handshakes that never became sockets, long-polling clients): closed
        # without waiting for a poll to carry the close packet, which a client that left never sends.
        engine = self.sio.eio
        for session in list(engine.sockets.values()):
            await session.close(wait=False, reason=engine.reason.SERVER_DISCONNECT)
        engine.sockets.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.sio.shutdown()
