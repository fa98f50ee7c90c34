"""The fake Discord's gateway: the real protocol, with a session per shard and events routed by guild.

HELLO, heartbeat ACK, IDENTIFY → READY + GUILD_CREATE, RESUME → replay + RESUMED, INVALID_SESSION, and
zlib-stream when asked for. Any number of connections at once: each IDENTIFYs with `shard: [id, count]`
(none means [0, 1], the whole bot) and gets Discord's share of the world, the guilds with
`(guild_id >> 22) % count == id`; a guild's events go to the session owning its shard, DMs to shard 0.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

HEARTBEAT_MS = 45_000


def shard_of(guild_id: int, shard_count: int) -> int:
    """Discord's rule for the shard that receives a guild's events."""
    return (guild_id >> 22) % shard_count


@dataclass(eq=False)  # kept in a set: hashed by identity
class Connection:
    """One websocket, with its zlib-stream compressor when the client asked for one."""

    ws: web.WebSocketResponse
    compress: Any = None

    async def send(self, payload: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        text = json.dumps(payload)
        if self.compress is not None:
            await self.ws.send_bytes(self.compress.compress(text.encode()) + self.compress.flush(zlib.Z_SYNC_FLUSH))
        else:
            await self.ws.send_str(text)


@dataclass
class Session:
    """An IDENTIFYed session of one shard. It outlives its socket: events dispatched while the client
    is away are kept, numbered, for its RESUME."""

    id: str
    shard: tuple[int, int]  # (shard id, shard count)
    connection: Connection | None = None
    seq: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def owns(self, guild_id: int | None) -> bool:
        shard_id, count = self.shard
        return shard_id == (0 if guild_id is None else shard_of(guild_id, count))

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.ws.closed

    async def send(self, payload: dict[str, Any]) -> None:
        if self.connection is not None:
            await self.connection.send(payload)


class FakeGateway:
    """The gateway half of FakeDiscord, which provides the world it describes: the attributes below."""

    token: str
    bot: dict[str, Any]
    app_id: int
    guilds: dict[int, str]
    gateway_url: str
    guild_payload: Callable[[int], dict[str, Any]]
    wait_for: Callable[..., Awaitable[Any]]
    _notify: Callable[[], Awaitable[None]]

    def __init__(self) -> None:
        self.sessions: dict[int, Session] = {}  # by shard id: a new IDENTIFY of a shard replaces its session
        self.shards_identified: list[tuple[int, int]] = []  # (id, count) of every IDENTIFY, in order
        self.identifies = 0
        self.resumes = 0
        self.invalidate_next_resume = False
        self._connections: set[Connection] = set()

    # Tests' side -----------------------------------------------------------------------------------------
    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a DISPATCH event to the session owning its guild (shard 0 for DMs and other events
        without a guild); kept for RESUME replays, so it reaches a client that is reconnecting."""
        guild_id = int(data["guild_id"]) if data.get("guild_id") else None
        for session in [s for s in self.sessions.values() if s.owns(guild_id)]:
            await self._dispatch_to(session, event, data)

    async def drop(self, shard: int | None = None) -> None:
        """Drop the connection of one shard (all when None) as a network fault would (code 4000, resumable)."""
        for session in list(self.sessions.values()):
            if session.connection is not None and shard in (None, session.shard[0]):
                await session.connection.ws.close(code=4000)
        await self._notify()

    async def wait_connected(self, timeout: float = 10.0, *, shards: Collection[int] = (0,)) -> None:
        """Wait until each of `shards` has a session with its socket up (shard 0: an unsharded client)."""
        await self.wait_for(lambda: all(s in self.sessions and self.sessions[s].connected for s in shards),
                            timeout)

    async def close_connections(self) -> None:
        for connection in list(self._connections):
            await connection.ws.close()

    # Protocol ----------------------------------------------------------------------------------------------
    async def _dispatch_to(self, session: Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.history.append(payload)
        await session.send(payload)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        connection = Connection(ws, zlib.compressobj() if request.query.get("compress") == "zlib-stream" else None)
        self._connections.add(connection)
        await connection.send({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                packet = json.loads(msg.data)
                op, data = packet.get("op"), packet.get("d")
                if op == 1:
                    await connection.send({"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:
                    await self._identify(connection, data)
                elif op == 6:
                    await self._resume(connection, data)
        finally:
            self._connections.discard(connection)
            for session in self.sessions.values():
                if session.connection is connection:
                    session.connection = None
            await self._notify()
        return ws

    async def _identify(self, connection: Connection, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await connection.ws.close(code=4004)  # Authentication failed
            return
        shard_id, count = data.get("shard") or (0, 1)
        if not 0 <= shard_id < count:
            await connection.ws.close(code=4010)  # Invalid shard
            return
        self.identifies += 1
        self.shards_identified.append((shard_id, count))
        session = Session(f"session-{self.identifies}", (shard_id, count), connection)
        self.sessions[shard_id] = session
        owned = [guild_id for guild_id in self.guilds if session.owns(guild_id)]
        ready = {"v": 10, "user": self.bot, "guilds": [{"id": str(g), "unavailable": True} for g in owned],
                 "session_id": session.id, "resume_gateway_url": self.gateway_url,
                 "application": {"id": str(self.app_id), "flags": 0}, "private_channels": [], "relationships": []}
        if "shard" in data:
            ready["shard"] = [shard_id, count]
        await self._dispatch_to(session, "READY", ready)
        for guild_id in owned:
            await self._dispatch_to(session, "GUILD_CREATE", self.guild_payload(guild_id))
        await self._notify()

    async def _resume(self, connection: Connection, data: dict[str, Any]) -> None:
        session = next((s for s in self.sessions.values() if s.id == data.get("session_id")), None)
        if self.invalidate_next_resume or session is None:
            self.invalidate_next_resume = False
            await connection.send({"op": 9, "d": False, "s": None, "t": None})
            return
        self.resumes += 1
        session.connection = connection
        for payload in session.history:
            if payload["s"] > int(data.get("seq") or 0):
                await session.send(payload)
        session.seq += 1
        await session.send({"op": 0, "t": "RESUMED", "s": session.seq, "d": {}})
        await self._notify()
