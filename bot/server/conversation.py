"""Talking to the agent over HTTP: one message in through the runtime, its reply out, and history pages.

The REST API and the Sessions API both use this, so they share the pipeline's guarantees: the
message is stored before it is processed, rooms stay ordered, and the per-user rate limit of every
other entry point applies here too. A request that asked for a stream gets its reply's text while
it is written, as chunks that `bot.server.sse` sends as Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.ids import create_unique_uuid
from bot.runtime import SLOW_DOWN, RunOutcome, ShuttingDown
from bot.streaming import ReplyStream
from bot.types import ChannelType, Content, Entity, Memory, MemoryType, Room

from .errors import ApiError
from .models import MAX_TIME_MS, StreamChunk

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

SOURCE = "api"


def user_id_for(runtime: AgentRuntime, user: str) -> uuid.UUID:
    return create_unique_uuid(runtime.agent_id, f"api:user:{user}")


def room_id_for(runtime: AgentRuntime, room_key: str) -> uuid.UUID:
    return create_unique_uuid(runtime.agent_id, room_key)


def channel_room_key(channel_id: uuid.UUID) -> str:
    """The room of a channel: a conversation named by a UUID (elizaOS's clients, sessions)."""
    return f"eliza:channel:{channel_id}"


@dataclass
class Exchange:
    """A message the agent accepted and what it said back (empty `replies` when it chose silence)."""

    message: Memory
    status: str
    replies: list[tuple[uuid.UUID, Content]] = field(default_factory=list)


def _reply_key() -> str:
    return f"api:reply:{uuid.uuid4()}"


class Collector:
    """The reply callback: keeps what the agent sends and hands back a key that names each reply."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.replies: list[tuple[uuid.UUID, Content]] = []
        self.next_key: str | None = None  # set by a stream the next reply finishes, so it keeps the stream's id

    def reply_id(self, key: str) -> uuid.UUID:
        return create_unique_uuid(self.runtime.agent_id, key)

    async def __call__(self, content: Content) -> list[str]:
        key, self.next_key = self.next_key or _reply_key(), None
        self.replies.append((self.reply_id(key), content))
        return [key]


class StreamingCollector(Collector):
    """The reply callback of a streamed request (a `StreamingCallback`): the reply's text, as the
    pipeline shows it, becomes `StreamChunk`s in `chunks`, which the HTTP handler sends as they
    come; None there means the run is over. No pacing: an event costs nothing like an edit."""

    def __init__(self, runtime: AgentRuntime) -> None:
        super().__init__(runtime)
        self.chunks: asyncio.Queue[StreamChunk | None] = asyncio.Queue()

    def open_stream(self) -> ReplyStream:
        return _ChunkStream(self, _reply_key())


class _ChunkStream(ReplyStream):
    """One reply as `chunk` events: each carries what the text gained since the last one."""

    def __init__(self, collector: StreamingCollector, key: str) -> None:
        self.collector, self.key = collector, key
        self.reply_id = collector.reply_id(key)
        self.shown = ""
        self.index = 0
        self.over = False

    def _push(self, chunk: str, *, reset: bool = False) -> None:
        self.collector.chunks.put_nowait(StreamChunk(message_id=self.reply_id, chunk=chunk, index=self.index,
                                                     reset=reset))
        self.index += 1

    def _show(self, text: str) -> None:
        if text == self.shown:
            return
        if text.startswith(self.shown):
            self._push(text[len(self.shown):])
        else:  # not a continuation: start over (the pipeline never does this within a round)
            self._push(text, reset=True)
        self.shown = text

    async def update(self, text: str) -> None:
        if not self.over:
            self._show(text)

    async def reset(self) -> None:
        if not self.over and self.shown:
            self._push("", reset=True)
            self.shown = ""

    async def finish(self, content: Content) -> list[str] | None:
        """The chunks are made to add up to the final text exactly; the collector then records the
        reply as usual, under this stream's id (the `messageId` of its chunks)."""
        self._show(content.text)
        self.over = True
        self.collector.next_key = self.key
        return None

    async def close(self) -> None:
        await self.reset()  # no reply finished it: whatever it showed is withdrawn
        self.over = True


@dataclass
class Pending:
    """A message the agent has accepted (it is stored) and whose run is under way."""

    runtime: AgentRuntime
    message: Memory
    outcome: asyncio.Future[RunOutcome]
    collector: Collector

    async def reply(self, timeout: float) -> Exchange:
        """Wait (up to `timeout`) for the run to end; the API's errors for what ended it otherwise."""
        runtime = self.runtime
        try:
            # shield: a client hanging up must not cancel the run's future for the pipeline.
            outcome = await asyncio.wait_for(asyncio.shield(self.outcome), timeout)
        except TimeoutError:
            raise ApiError(504, "REPLY_TIMEOUT", "the agent is still working on this message; its reply will "
                           "appear in the room's history") from None
        if outcome.status == "rate_limited":
            per_minute = runtime.settings.rate_limit_per_minute
            raise ApiError(429, "RATE_LIMITED", SLOW_DOWN,
                           headers={"Retry-After": str(max(1, math.ceil(60 / max(per_minute, 1))))})
        replies = self.collector.replies
        if not replies and outcome.status == "completed":
            # Another process of a cluster ran it: its replies are in the store.
            replies = [(m.id, m.content) for m in await runtime.replies_to(self.message)]
        return Exchange(message=self.message, status=outcome.status, replies=replies)


async def accept_message(runtime: AgentRuntime, *, user: str, user_name: str | None, room_key: str,
                         room_name: str, text: str, context: dict[str, Any] | None = None,
                         client_metadata: dict[str, Any] | None = None, message_key: str | None = None,
                         stream: bool = False) -> Pending:
    """Send `text` from `user` into the room; raises the API's error when it is not taken (shutting
    down, a repeated message_id). `stream`: the reply is shown as it is written (`StreamingCollector`).

    `context` is the server's own (trusted) metadata; what the client sent is kept apart under
    metadata["client"], so it can never pose as platform context (e.g. metadata["discord"]).
    """
    agent_id = runtime.agent_id
    entity = Entity(id=user_id_for(runtime, user), agent_id=agent_id, names=[user_name or user])
    room = Room(id=room_id_for(runtime, room_key), agent_id=agent_id, name=room_name, source=SOURCE,
                type=ChannelType.API, channel_id=room_key)
    await runtime.ensure_connection(entity, room)
    memory = Memory(
        id=create_unique_uuid(agent_id, message_key) if message_key else uuid.uuid4(),
        entity_id=entity.id, agent_id=agent_id, room_id=room.id,
        content=Content(text=text, source=SOURCE, channel_type=ChannelType.API),
        metadata={**(context or {}), **({"client": client_metadata} if client_metadata else {}),
                  "author_is_bot": False},
    )
    collector = StreamingCollector(runtime) if stream else Collector(runtime)
    try:
        ticket = await runtime.receive_message(memory, collector)
    except ShuttingDown:
        raise ApiError(503, "SHUTTING_DOWN", "the server is shutting down and takes no new work",
                       headers={"Retry-After": "10"}) from None
    if ticket.duplicate:
        raise ApiError(409, "DUPLICATE_MESSAGE", "a message with this message_id was already received")
    return Pending(runtime, memory, ticket.outcome, collector)


# History pages -------------------------------------------------------------------------------------
def encode_cursor(memory: Memory) -> str:
    raw = f"{memory.created_at}:{memory.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, _, memory_id = raw.partition(":")
        bound = int(created_at), uuid.UUID(memory_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        bound = None
    if bound is None or not 0 <= bound[0] <= MAX_TIME_MS:
        raise ApiError(400, "INVALID_CURSOR", "cursor is not one this API returned")
    return bound


def _order(memory: Memory) -> tuple[int, str]:
    return memory.created_at, str(memory.id)


async def memory_page(runtime: AgentRuntime, *, room_id: uuid.UUID | None, limit: int, cursor: str | None,
                      type: MemoryType = MemoryType.MESSAGE) -> tuple[list[Memory], str | None]:
    """Newest first, `limit` at a time; the cursor is (created_at, id), so equal timestamps page exactly."""
    store, agent_id = runtime.store, runtime.agent_id
    bound = decode_cursor(cursor) if cursor else None
    found: dict[uuid.UUID, Memory] = {}
    if bound is not None:  # rows sharing the cursor's millisecond come first, by id
        ties = await store.get_memories(agent_id=agent_id, room_id=room_id, type=type, count=None,
                                        before=bound[0] + 1, after=bound[0] - 1)
        found.update((m.id, m) for m in ties if _order(m) < (bound[0], str(bound[1])))
    older = await store.get_memories(agent_id=agent_id, room_id=room_id, type=type, count=limit + 1,
                                     before=bound[0] if bound else None)
    found.update((m.id, m) for m in older)
    if older:  # the store cuts a page at any row of the last millisecond; take all of them
        edge = min(m.created_at for m in older)
        ties = await store.get_memories(agent_id=agent_id, room_id=room_id, type=type, count=None,
                                        before=edge + 1, after=edge - 1)
        found.update((m.id, m) for m in ties if bound is None or _order(m) < (bound[0], str(bound[1])))
    ordered = sorted(found.values(), key=_order, reverse=True)
    page = ordered[:limit]
    next_cursor = encode_cursor(page[-1]) if len(ordered) > limit else None
    return page, next_cursor
