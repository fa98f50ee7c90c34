"""The REST API: messages (send one and get the reply; read a room's history) and memories."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from bot.types import Content, Memory

from .app import check_metadata, json_response, parse_body, parse_query
from .conversation import Exchange, accept_message, memory_page, room_id_for, user_id_for
from .errors import ApiError
from .models import (
    MemoriesQuery,
    MemoryHit,
    MemoryIn,
    MemoryOut,
    MemoryPage,
    MemorySearch,
    MemorySearchResult,
    MessageIn,
    MessageOut,
    MessagePage,
    MessageResult,
    MessagesQuery,
    ReplyOut,
    StreamChunk,
)
from .openapi import Operation
from .sse import stream_reply, wants_stream

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime


def reply_timeout(runtime: AgentRuntime) -> float:
    """Long enough for a slow model with its retries, short enough that a client is not left hanging."""
    settings = runtime.settings
    return settings.model_timeout * (settings.model_max_retries + 1) * 2 + 30


def api_room_key(room: str) -> str:
    return f"api:room:{room}"


class RestApi:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def send_message(self, request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, MessageIn)
        streaming = wants_stream(request, body.transport)
        pending = await accept_message(
            self.runtime, user=body.user_id, user_name=body.user_name, room_key=api_room_key(body.room_id),
            room_name=body.room_id, text=body.text, stream=streaming,
            message_key=f"api:msg:{body.room_id}:{body.message_id}" if body.message_id else None,
        )
        timeout = reply_timeout(self.runtime)
        if streaming:
            return await stream_reply(request, pending, timeout=timeout, result=self._result,
                                      user_message=MessageOut.of(pending.message, self.runtime.agent_id))
        return json_response(self._result(await pending.reply(timeout)))

    @staticmethod
    def _result(exchange: Exchange) -> MessageResult:
        replies = [ReplyOut.of(reply_id, content) for reply_id, content in exchange.replies]
        return MessageResult(message_id=exchange.message.id, room_id=exchange.message.room_id,
                             status=exchange.status, reply=replies[0] if replies else None, replies=replies)

    async def list_messages(self, request: web.Request) -> web.Response:
        query = parse_query(request, MessagesQuery)
        room_id = room_id_for(self.runtime, api_room_key(query.room_id))
        page, cursor = await memory_page(self.runtime, room_id=room_id, limit=query.limit, cursor=query.cursor)
        agent_id = self.runtime.agent_id
        return json_response(MessagePage(messages=[MessageOut.of(m, agent_id) for m in page], next_cursor=cursor))

    async def create_memory(self, request: web.Request) -> web.Response:
        body = await parse_body(request, MemoryIn)
        runtime = self.runtime
        check_metadata(body.metadata, runtime.settings.session_max_metadata_bytes)
        memory = Memory(
            entity_id=user_id_for(runtime, body.user_id) if body.user_id else runtime.agent_id,
            agent_id=runtime.agent_id,
            room_id=room_id_for(runtime, api_room_key(body.room_id)) if body.room_id else runtime.agent_id,
            content=Content(text=body.text, source="api"), type=body.type, embedding=body.embedding,
            metadata={"client": body.metadata} if body.metadata else {},  # never platform context
        )
        await runtime.create_memory(memory)
        return json_response(MemoryOut.of(memory), status=201)

    async def list_memories(self, request: web.Request) -> web.Response:
        query = parse_query(request, MemoriesQuery)
        room_id = room_id_for(self.runtime, api_room_key(query.room_id)) if query.room_id else None
        page, cursor = await memory_page(self.runtime, room_id=room_id, limit=query.limit, cursor=query.cursor,
                                         type=query.type)
        return json_response(MemoryPage(memories=[MemoryOut.of(m) for m in page], next_cursor=cursor))

    async def search_memories(self, request: web.Request) -> web.Response:
        body = await parse_body(request, MemorySearch)
        if body.text is None and body.embedding is None:
            raise ApiError(400, "INVALID_BODY", "invalid body: give text, embedding or both",
                           details=[{"field": "text", "message": "text or embedding is required"}])
        runtime, hits = self.runtime, {}
        room_id = room_id_for(runtime, api_room_key(body.room_id)) if body.room_id else None
        scope = {"agent_id": runtime.agent_id, "count": body.limit, "room_id": room_id, "type": body.type}
        if body.embedding is not None:
            for found in await runtime.store.search_memories_by_embedding(body.embedding, min_score=body.min_score,
                                                                          **scope):
                hits[found.memory.id] = MemoryHit(memory=MemoryOut.of(found.memory), score=found.score,
                                                  match="embedding")
        if body.text is not None:
            for found in await runtime.store.search_memories_by_text(body.text, **scope):
                hits.setdefault(found.memory.id, MemoryHit(memory=MemoryOut.of(found.memory), score=found.score,
                                                           match="text"))
        return json_response(MemorySearchResult(results=list(hits.values())[: body.limit]))

    def operations(self) -> list[Operation]:
        return [
            Operation("POST", "/api/messages", self.send_message, "Send a message and get the agent's reply",
                      "messages", {200: MessageResult}, body=MessageIn, errors=[409, 429, 504],
                      events={"user_message": MessageOut, "chunk": StreamChunk, "done": MessageResult},
                      description="user_id and room_id are free strings; the same strings always mean the "
                                  "same user and room. The per-user RATE_LIMIT_PER_MINUTE answers 429."),
            Operation("GET", "/api/messages", self.list_messages, "A room's messages, newest first", "messages",
                      {200: MessagePage}, query=MessagesQuery),
            Operation("POST", "/api/memories", self.create_memory, "Store a memory", "memories",
                      {201: MemoryOut}, body=MemoryIn),
            Operation("GET", "/api/memories", self.list_memories, "List memories, newest first", "memories",
                      {200: MemoryPage}, query=MemoriesQuery),
            Operation("POST", "/api/memories/search", self.search_memories, "Search memories by text and/or "
                      "embedding", "memories", {200: MemorySearchResult}, body=MemorySearch),
        ]
