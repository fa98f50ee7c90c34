"""Socket.IO at /socket.io/, speaking elizaOS 1.7's real-time protocol, so its clients (the web UI,
`socket.io-client` scripts) can chat with parley live.

A socket is the admin's only: the handshake's `auth.apiKey` (or an X-API-KEY header) must be
API_KEY, or without API_KEY the socket must come straight from this machine, as for the admin API.
Its `auth.entityId` (a UUID) is who it speaks as; it cannot send as anyone else.

A socket joins channels (UUIDs; each is a parley room, a session's channel is the session's room)
and sends messages into them, which are stored and answered in the order it sent them (its events
are handled one at a time; a message's reply is not waited for). Its payloads meet the HTTP bodies'
intake rules. Everything about a message is sent to the channel's Socket.IO room:
the user's message, the reply's text while it is written (`messageStreamChunk`), the reply
(`messageBroadcast`) and `messageComplete`. `relay` does the reply part for the session API too.
Errors reach clients as `messageError {error}` with the REST API's messages.

With several agents, a session's channel talks to the session's agent; another channel to the agent
its joining socket named (`agentId`, an id or a name), else to the first character.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.lru import LRU
from bot.types import Content, now_ms

from ..access import AccessPolicy, is_direct_loopback, presented_keys
from ..api import reply_timeout
from ..app import STATE, ServerState, check_metadata, check_running, internal_error
from ..conversation import Exchange, Pending, accept_message, channel_room_key
from ..directory import Agents, AgentView
from ..errors import ApiError
from ..models import StreamChunk
from ..replies import reply_events
from .channels import DEFAULT_SERVER_ID
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
    import socketio

    from bot.runtime import AgentRuntime
    from bot.settings import Settings

log = logging.getLogger(__name__)

BAD_KEY = "Invalid or missing API Key"
BAD_ENTITY = "Valid entityId required"
AUTH_FAILED = "Authentication failed"
NO_CHANNEL = "channelId is required for joining."
SOCKET_PATH = "/socket.io/"
CHANNEL_AGENTS = 10_000  # channels remembered with the agent a join named
TURN_GRACE_SECONDS = 5.0  # what stop() gives events being handled, as the HTTP runner gives its requests


def _report(task: asyncio.Task[None]) -> None:
    """A background task's unexpected error, logged (nobody awaits these tasks for their result)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("Socket.IO task %s failed", task.get_name(), exc_info=error)


class _UndecodablePackets(logging.Filter):
    """Engine.IO logs a traceback for each packet it or python-socketio cannot decode or place (JSON
    nested past the recursion limit, an unknown packet type), and anyone may send those, before any
    key. Each becomes a debug line. Nothing of ours is hidden: the handlers below answer their own
    errors."""

    MESSAGES = frozenset({"message async handler error", "post request handler error", "Unknown receive error"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.MESSAGES or not record.exc_info:
            return True
        log.debug("a Socket.IO packet was dropped: %r", record.exc_info[1])
        return False


_UNDECODABLE = _UndecodablePackets()


@dataclass
class _Socket:
    """A connected socket: the entity it authenticated as, and its turn. python-socketio runs each
    event in its own task; the turn makes them run one at a time, in the order they came."""

    entity: uuid.UUID
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)


class Realtime:
    """The Socket.IO server, its sockets' identities and the relays of replies in flight."""

    def __init__(self, settings: Settings, policy: AccessPolicy) -> None:
        self.policy, self.settings = policy, settings
        self.agents: Agents | None = None  # given by `serve`, once the server has its agents
        # Made on the first /socket.io/ request: python-socketio and engine.io are 6-7 MB a process
        # that no Socket.IO client talks to need not hold.
        self.sio: socketio.AsyncServer | None = None
        self._making = asyncio.Lock()
        self._sockets: dict[str, _Socket] = {}  # by socket id
        self._tasks: set[asyncio.Task[None]] = set()  # relays and greetings
        self._tails: dict[uuid.UUID, asyncio.Task[None]] = {}  # each channel's latest relay
        # A channel's agent, when a join named another than the first (bounded: joins are cheap to repeat).
        self._channel_agents: LRU[uuid.UUID, uuid.UUID] = LRU(CHANNEL_AGENTS)
        self._turns: set[asyncio.Task[Any]] = set()  # events being handled
        self._state = ServerState()  # starting, until attached to the app, whose state it is then
        self._stopped = False

    def serve(self, agents: Agents) -> None:
        self.agents = agents

    def attach(self, app: web.Application) -> None:
        """Serve Socket.IO at /socket.io/ on `app` (the routes engine.io's own attach adds). Its
        requests are public to the HTTP middlewares: the socket's own handshake auth admits it."""
        for method in ("GET", "POST", "OPTIONS"):
            app.router.add_route(method, SOCKET_PATH, self._handle)
        self._state = app[STATE]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._stopped:
            raise ApiError(503, "STOPPING", "the server is shutting down")
        return await (await self._server()).handle_request(request)

    async def _server(self) -> socketio.AsyncServer:
        """The Socket.IO server, imported (off the loop) and made on first use."""
        if self.sio is not None:
            return self.sio
        async with self._making:
            if self.sio is None:
                module = await asyncio.to_thread(importlib.import_module, "socketio")
                # With API_KEY the key in the handshake (never ambient, like a cookie) admits a socket,
                # so any origin may connect, as in elizaOS. Without it a socket is admitted for coming
                # from this machine, and a page of another origin in the owner's browser comes from
                # there too: then only this server's own pages may connect.
                sio = module.AsyncServer(
                    async_mode="aiohttp", cors_allowed_origins="*" if self.policy.api_key else None, logger=False,
                    engineio_logger=False, max_http_buffer_size=self.settings.max_body_bytes,
                )
                sio.eio.logger.addFilter(_UNDECODABLE)  # engine.io's logger is global: added once
                for event, handler in (("connect", self._connect), ("disconnect", self._disconnect),
                                       ("message", self._message), ("1", self._join), ("2", self._send)):
                    sio.on(event, handler)
                self.sio = sio
        return self.sio

    # Connections -------------------------------------------------------------------------------
    def _is_admin(self, request: web.Request | None, auth: dict[str, Any]) -> bool:
        """The admin API's rule: with API_KEY, the key (in `auth.apiKey`, or in the headers, which
        elizaOS reads too); without it, a socket straight from this machine."""
        if not self.policy.api_key:
            return request is not None and is_direct_loopback(request)
        headers = presented_keys(request) if request is not None else []
        return self.policy.key_matches([auth.get("apiKey"), *headers])

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        """Admit the socket or refuse it with elizaOS's reasons. Every failure becomes a refusal: an
        error escaping here would leave the client waiting for an answer that never comes."""
        from socketio.exceptions import ConnectionRefusedError as Refused  # loaded with the server

        if self._stopped:
            raise Refused("the server is shutting down")
        auth = auth if isinstance(auth, dict) else {}
        if not self._is_admin(environ.get("aiohttp.request"), auth):
            raise Refused(BAD_KEY)
        try:
            entity = Handshake.parse(auth, "auth").entity_id
        except ApiError as error:  # a bad field (the entityId), or JSON no intake takes (too deep, NaN)
            raise Refused(BAD_ENTITY if error.code == "INVALID_AUTH" else AUTH_FAILED) from None
        except Exception:
            log.exception("a Socket.IO handshake could not be read")
            raise Refused(AUTH_FAILED) from None
        self._sockets[sid] = _Socket(entity)
        # Socket.IO sends the connect packet after this handler returns: greeting from a task puts
        # the greetings after it, where a client takes them as events of an open socket.
        self._spawn(self._greet(sid, entity), f"socket-greet-{sid}")

    async def _greet(self, sid: str, entity: uuid.UUID) -> None:
        await self._emit("authenticated", Authenticated(entity_id=entity, timestamp=now_ms()), sid)
        await self._emit("connection_established", ConnectionEstablished(socket_id=sid), sid)

    async def _disconnect(self, sid: str, reason: str | None = None) -> None:
        self._sockets.pop(sid, None)  # its events still queued keep their turn and are handled

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
        await self._in_turn(sid, lambda socket: self._enter(sid, payload))

    async def _send(self, sid: str, payload: Any) -> None:
        await self._in_turn(sid, lambda socket: self._accept(sid, socket, payload))

    async def _in_turn(self, sid: str, work: Callable[[_Socket], Awaitable[None]]) -> None:
        """Handle one event of socket `sid` after its earlier ones: its turn is asked for before
        anything is awaited (here and in python-socketio, whose tasks start in the order the events
        came), and asyncio's locks are FIFO. Errors reach the socket as messageError."""
        socket = self._sockets.get(sid)
        task = asyncio.current_task()
        if socket is None or task is None:
            return
        self._turns.add(task)
        try:
            async with socket.turn:
                try:
                    await work(socket)
                except ApiError as error:
                    await self._emit("messageError", MessageError(error=error.message), sid)
                except Exception:
                    log.exception("a Socket.IO event could not be handled")
                    await self._emit("messageError", MessageError(error=internal_error().message), sid)
        finally:
            self._turns.discard(task)

    async def _enter(self, sid: str, payload: Any) -> None:
        join = JoinIn.parse(payload, "join")
        if join.channel is None:
            raise ApiError(400, "INVALID_JOIN", NO_CHANNEL)
        channel = join.channel
        if join.agent_id is not None:
            assert self.agents is not None
            agent = self.agents.named(join.agent_id)
            if agent is self.agents.host.primary:
                self._channel_agents.pop(channel, None)
            else:
                self._channel_agents[channel] = agent.id
        assert self.sio is not None  # a socket's event: the server exists
        await self.sio.enter_room(sid, str(channel))
        joined = Joined(message=f"Socket {sid} successfully joined channel {channel}.", channel_id=channel,
                        room_id=channel, agent_id=join.agent_id)
        await self._emit("channel_joined", joined, sid)
        await self._emit("room_joined", joined, sid)

    async def _room_of(self, channel: uuid.UUID) -> tuple[AgentView, str, str]:
        """The agent and the parley room a channel's messages go to: its session's, or else the channel's
        own with the agent a join named (the first character by default)."""
        assert self.agents is not None
        for view in self.agents:
            session = await view.sessions.by_channel(channel)
            if session is not None:
                view = self.agents.usable(view.agent)
                await view.sessions.touch(session.id)
                return view, session.room_key, f"session {session.id}"
        named = self._channel_agents.get(channel)
        if named is not None:
            self._channel_agents.move_to_end(channel)  # a channel in use stays remembered
        view = self.agents.usable(self.agents.named(str(named) if named else None))
        return view, channel_room_key(channel), f"channel {channel}"

    async def _accept(self, sid: str, socket: _Socket, payload: Any) -> None:
        """Store the message (the reply's run starts), tell the channel, then relay the reply: the
        socket's next event waits for this acceptance, never for the reply."""
        send = SendIn.parse(payload, "message")
        if send.sender_id != socket.entity:
            raise ApiError(403, "FORBIDDEN", "senderId must be the entityId this socket authenticated with")
        check_running(self._state)
        channel = send.channel_id
        view, room_key, room_name = await self._room_of(channel)
        if send.metadata:
            check_metadata(send.metadata, view.runtime.settings.session_max_metadata_bytes)
        pending = await accept_message(
            view.runtime, user=str(send.sender_id), user_name=send.sender_name, room_key=room_key,
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
        # A channel's relays take turns, so its sockets see the replies in the order the room ran them.
        previous = self._tails.get(channel_id)
        task = self._spawn(self._relay(pending, channel_id, previous), f"socket-relay-{pending.message.id}")
        self._tails[channel_id] = task
        task.add_done_callback(lambda done: self._tails.pop(channel_id) if self._tails.get(channel_id) is done
                               else None)

    async def _relay(self, pending: Pending, channel_id: uuid.UUID, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        room, runtime = str(channel_id), pending.runtime
        async with aclosing(reply_events(pending, reply_timeout(runtime))) as events:
            async for event in events:
                if isinstance(event, StreamChunk):
                    await self._emit("messageStreamChunk", self._chunk(event, channel_id, runtime), room)
                elif isinstance(event, ApiError):
                    error = MessageError(error=event.message, channel_id=channel_id)
                    await self._emit("messageError", error, room)
                else:
                    await self._broadcast(event, channel_id, runtime)

    @staticmethod
    def _chunk(chunk: StreamChunk, channel_id: uuid.UUID, runtime: AgentRuntime) -> StreamChunkEvent:
        return StreamChunkEvent(message_id=chunk.message_id, chunk=chunk.chunk, index=chunk.index,
                                agent_id=runtime.agent_id, channel_id=channel_id, room_id=channel_id,
                                reset=True if chunk.reset else None)

    async def _broadcast(self, exchange: Exchange, channel_id: uuid.UUID, runtime: AgentRuntime) -> None:
        """Each reply with text (elizaOS sends none for silence), then messageComplete."""
        room = str(channel_id)
        for reply_id, content in exchange.replies:
            if content.text:
                message = await self._agent_message(reply_id, content, channel_id, runtime)
                await self._emit("messageBroadcast", message, room)
        await self._emit("messageComplete", MessageComplete(channel_id=channel_id, room_id=channel_id), room)

    @staticmethod
    async def _agent_message(reply_id: uuid.UUID, content: Content, channel_id: uuid.UUID,
                             runtime: AgentRuntime) -> AgentBroadcast:
        """The reply as elizaOS broadcasts it, with the time it was stored (as history shows it)."""
        stored = await runtime.store.get_memory(reply_id)
        return AgentBroadcast(
            id=reply_id, sender_id=runtime.agent_id, sender_name=runtime.character.name,
            text=content.text, room_id=channel_id, channel_id=channel_id, server_id=DEFAULT_SERVER_ID,
            created_at=stored.created_at if stored is not None else now_ms(),
            thought=content.thought or None, actions=content.actions or None,
        )

    # Plumbing ----------------------------------------------------------------------------------
    async def _emit(self, event: str, data: Event, to: str, *, skip_sid: str | None = None) -> None:
        if self.sio is not None:  # else no socket has ever connected to hear it
            await self.sio.emit(event, data.dump(), to=to, skip_sid=skip_sid)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_report)
        return task

    async def stop(self) -> None:
        """Disconnect every socket, let the events being handled end (briefly) and wait for the relays
        in flight to end (their runs go on)."""
        self._stopped = True
        async with self._making:  # a server being made is made first, then stopped
            sio = self.sio
        for sid in list(self._sockets):
            if sio is not None:
                await sio.disconnect(sid)
        if sio is not None:
            # Engine.IO sessions left (handshakes that never became sockets, long-polling clients): closed
            # without waiting for a poll to carry the close packet, which a client that left never sends.
            engine = sio.eio
            for session in list(engine.sockets.values()):
                await session.close(wait=False, reason=engine.reason.SERVER_DISCONNECT)
            engine.sockets.clear()
        if self._turns:  # an acceptance under way is let finish: it stores a message
            await asyncio.wait(list(self._turns), timeout=TURN_GRACE_SECONDS)
        tasks = [*self._turns, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if sio is not None:
            await sio.shutdown()
