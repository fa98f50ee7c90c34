"""elizaOS 1.7's agents, server and memory routes against the whole running bot, over raw HTTP: the exact
shapes `@elizaos/api-client` relies on. Agents and memory answer in the envelope (`success`, `data`),
the server routes bare JSON; every error is `{"success": false, "error": {"code", "message"}}`."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.server.conversation import room_id_for
from bot.server.eliza import memory as eliza_memory
from bot.server.eliza.agents import UNSUPPORTED
from bot.server.eliza.channels import channel_room_key
from bot.types import Content, Memory, MemoryType, World
from tests.fakes.openai_server import FakeOpenAI
from tests.server_helpers import API_KEY_FOR_MODEL, Running, fake_model, running_app

KEY = "eliza-admin-key-0123"
ADMIN = {"X-API-KEY": KEY}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MEMORY_KEYS = {"id", "type", "createdAt", "content", "entityId", "agentId", "roomId", "unique", "metadata"}
ROOM_KEYS = {"id", "name", "channelId", "agentId", "worldId", "type", "source", "metadata", "serverId",
             "messageServerId"}
SECRETS = ("character-secret-value", "hidden-setting", API_KEY_FOR_MODEL, KEY)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_model() as server:
        yield server


def not_found(message: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": "NOT_FOUND", "message": message}}


def bad_agent(bot: Any) -> tuple[int, dict[str, Any]]:
    """The 400 for a path that names no agent: it names the agents."""
    listing = f"Test ({bot.app.runtime.agent_id})"
    return 400, {"success": False, "error": {"code": "INVALID_ID", "message": "Invalid agent ID format: use an "
                                             f"agent's id (a UUID), its name or 'default'; the agents are {listing}"}}


async def ok(bot: Running, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    """The `data` of an enveloped success."""
    got, body = await bot.call(method, path, headers=ADMIN, **kwargs)
    assert got == status and body["success"] is True and set(body) == {"success", "data"}, (got, body)
    return body["data"]


async def send(bot: Running, text: str, room: str = "lobby") -> dict[str, Any]:
    status, result = await bot.call("POST", "/api/messages", headers=ADMIN,
                                    json={"text": text, "user_id": "alice", "room_id": room})
    assert status == 200, result
    return result


async def test_agents_answer_in_the_envelope_with_the_character_at_the_top(tmp_path: Path, fake: FakeOpenAI) -> None:
    fields = {"system": "You are Test.", "topics": ["testing"], "adjectives": ["patient"],
              "bio": ["First line of the bio.", "Second line."], "style": {"all": ["be brief"]},
              "postExamples": ["a post"], "messageExamples": [[{"name": "u", "content": {"text": "hi"}}]]}
    async with running_app(tmp_path, fake, api_key=KEY, character_fields=fields) as bot:
        agent_id = str(bot.app.runtime.agent_id)
        listed = await ok(bot, "GET", "/api/agents")
        assert listed == {"agents": [{"id": agent_id, "name": "Test", "characterName": "Test",
                                      "bio": "First line of the bio.", "status": "active", "state": "running"}]}
        for name in (agent_id, agent_id.upper(), "Test", "default"):
            agent = await ok(bot, "GET", f"/api/agents/{name}")
            assert agent["id"] == agent_id and agent["name"] == "Test" and agent["username"] == "testbot"
            assert agent["status"] == "active" and agent["enabled"] is True
            assert agent["bio"] == fields["bio"] and agent["system"] == "You are Test."
            assert agent["topics"] == ["testing"] and agent["adjectives"] == ["patient"]
            assert agent["style"]["all"] == ["be brief"] and agent["postExamples"] == ["a post"]
            assert agent["messageExamples"][0][0]["content"]["text"] == "hi" and agent["plugins"] == []
            assert isinstance(agent["createdAt"], int) and agent["createdAt"] <= agent["updatedAt"]
            assert abs(agent["updatedAt"] - bot.app.runtime.clock() * 1000) < 60_000
            assert "secrets" not in agent and "settings" not in agent and "character" not in agent
        async with bot.http.get(f"{bot.url}/api/agents/{agent_id}", headers=ADMIN) as response:
            raw = await response.text()
        async with bot.http.get(f"{bot.url}/api/agents", headers=ADMIN) as response:
            raw += await response.text()
        assert not [secret for secret in SECRETS if secret in raw]
        assert await bot.call("GET", f"/api/agents/{uuid.uuid4()}", headers=ADMIN) == (404, not_found("Agent not found"))
        for malformed in ("someone-else", "bad", agent_id[:-1]):
            assert await bot.call("GET", f"/api/agents/{malformed}", headers=ADMIN) == bad_agent(bot)


async def test_starting_the_running_agent_finds_it_active(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        started = {"id": str(bot.app.runtime.agent_id), "name": "Test", "status": "active"}
        for name in ("default", "Test", started["id"]):
            assert await ok(bot, "POST", f"/api/agents/{name}/start") == started
        assert await bot.call("POST", f"/api/agents/{uuid.uuid4()}/start", headers=ADMIN) == (
            404, not_found("Agent not found"))
        assert await bot.call("POST", "/api/agents/bad/start", headers=ADMIN) == bad_agent(bot)
        assert (await bot.call("POST", "/api/agents/default/start"))[0] == 401  # the admin key, as everywhere


async def test_what_parley_does_not_do_answers_one_clear_error(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        messages = {name: message for _, _, name, message in UNSUPPORTED}
        worlds = ("GET", "/api/agents/worlds", "get_worlds", messages["add_agent_to_world"])  # get_agent's path
        assert len(UNSUPPORTED) == 15 and worlds[3] == ("parley does not manage worlds over the API; a room's world "
                                                        "is in GET /api/memory/{agentId}/rooms/{roomId} (worldId, "
                                                        "worldName)")
        for method, path, _, message in [*UNSUPPORTED, worlds]:
            url = path.format(agent_id="default", world_id=uuid.uuid4(), log_id=uuid.uuid4(), server_id=uuid.uuid4())
            status, body = await bot.call(method, url, headers=ADMIN, json={"name": "x"})
            assert (status, body) == (409, {"success": False, "error": {"code": "NOT_SUPPORTED", "message": message}})
            assert (await bot.call(method, url, json={}))[0] == 401  # the admin key first, as everywhere
        assert messages["create_agent"] == ("parley runs the characters it was started with (CHARACTER_PATH or "
                                            "CHARACTERS): to run another agent, add its character file to "
                                            "CHARACTERS and restart")
        document = (await bot.call("GET", "/api/openapi.json"))[1]
        for method, path, name, _ in UNSUPPORTED:
            operation = document["paths"][path][method.lower()]
            assert operation["operationId"] == name and "NOT_SUPPORTED" in operation["description"]
            assert operation["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorResponse")
        assert "getWorlds" in document["paths"]["/api/agents/{agent_id}"]["get"]["description"]


async def test_server_routes_answer_bare_json_to_the_admin(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        now_ms = bot.app.runtime.clock() * 1000
        status, ping = await bot.call("GET", "/api/server/ping", headers=ADMIN)
        assert status == 200 and set(ping) == {"pong", "timestamp"} and ping["pong"] is True
        assert abs(ping["timestamp"] - now_ms) < 60_000
        assert await bot.call("GET", "/api/server/hello", headers=ADMIN) == (200, {"message": "Hello World!"})
        status, server = await bot.call("GET", "/api/server/status", headers=ADMIN)
        assert status == 200 and set(server) == {"status", "agentCount", "timestamp"}
        assert server["status"] == "ok" and server["agentCount"] == 1 and ISO_MS.match(server["timestamp"])
        status, health = await bot.call("GET", "/api/server/health", headers=ADMIN)
        assert status == 200 and health["status"] == "OK" and "success" not in health
        assert health["dependencies"] == {"agents": "healthy", "database": "healthy"}
        assert health["version"] and ISO_MS.match(health["timestamp"])
        for path in ("ping", "hello", "status", "health"):  # like the rest of /api: the key is needed
            status, body = await bot.call("GET", f"/api/server/{path}")
            assert status == 401 and body["success"] is False and body["error"]["code"] == "UNAUTHORIZED"
        assert (await bot.call("GET", "/health"))[0] == 200  # outside /api: public as before


async def test_server_health_is_degraded_while_the_database_does_not_answer(
        tmp_path: Path, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        async def broken() -> bool:
            raise ConnectionError("database is gone")

        monkeypatch.setattr(bot.app.runtime.store, "ping", broken)
        status, health = await bot.call("GET", "/api/server/health", headers=ADMIN)
        assert status == 503 and health["status"] == "DEGRADED" and health["success"] is False
        assert health["dependencies"]["database"] == "unavailable" and health["error"]["code"] == "DEGRADED"
        assert "database is gone" not in str(health)


async def test_every_error_carries_success_false(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        answers = [await bot.call("GET", "/api/no-such-route", headers=ADMIN),
                   await bot.call("POST", "/api/messages", headers=ADMIN, json={}),
                   await bot.call("GET", "/api/agents", headers={"X-API-KEY": "wrong"}),
                   await bot.call("GET", "/api/memory/default/memories/x", headers=ADMIN)]  # GET: not allowed
        assert [status for status, _ in answers] == [404, 400, 401, 405]
        for _, body in answers:
            assert body["success"] is False and body["error"]["code"] and body["error"]["message"]


async def test_agent_memories_newest_first_by_table_room_and_channel(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        runtime = bot.app.runtime
        first = await send(bot, "hello there")
        await send(bot, "elsewhere", room="other")
        memories = (await ok(bot, "GET", "/api/memory/default/memories"))["memories"]
        assert [m["content"]["text"] for m in memories] == [
            "Hello from Test.", "elsewhere", "Hello from Test.", "hello there"]
        reply, message = memories[2], memories[3]
        for memory in memories:
            assert set(memory) == MEMORY_KEYS and memory["type"] == "messages"
            assert memory["agentId"] == str(runtime.agent_id) and isinstance(memory["createdAt"], int)
        assert message["id"] == first["message_id"] and message["roomId"] == first["room_id"]
        assert message["content"] == {"text": "hello there", "source": "api", "channelType": "API"}
        assert reply["content"]["inReplyTo"] == message["id"] and reply["entityId"] == str(runtime.agent_id)
        in_room = await ok(bot, "GET", "/api/memory/default/memories", params={"roomId": first["room_id"]})
        assert [m["id"] for m in in_room["memories"]] == [reply["id"], message["id"]]
        assert len((await ok(bot, "GET", "/api/memory/Test/memories", params={"limit": "1"}))["memories"]) == 1
        # A fact with an embedding: its table by tableName; the embedding only when asked for.
        status, _ = await bot.call("POST", "/api/memories", headers=ADMIN,
                                   json={"text": "Alice likes tea", "embedding": [0.5, 0.25]})
        assert status == 201
        facts = (await ok(bot, "GET", "/api/memory/default/memories", params={"tableName": "facts"}))["memories"]
        assert [m["content"]["text"] for m in facts] == ["Alice likes tea"] and "embedding" not in facts[0]
        params = {"tableName": "facts", "includeEmbedding": "true", "page": "1", "search": "ignored"}
        facts = (await ok(bot, "GET", "/api/memory/default/memories", params=params))["memories"]
        assert facts[0]["embedding"] == [0.5, 0.25] and facts[0]["type"] == "facts"
        # A free elizaOS channel: ?channelId= and the room-memories path find the same room.
        channel = uuid.uuid4()
        stored = Memory(entity_id=runtime.agent_id, agent_id=runtime.agent_id, content=Content(text="in a channel"),
                        room_id=room_id_for(runtime, channel_room_key(channel)))
        await runtime.create_memory(stored)
        by_query = await ok(bot, "GET", "/api/memory/default/memories", params={"channelId": str(channel)})
        by_path = await ok(bot, "GET", f"/api/memory/default/rooms/{channel}/memories")
        assert by_query == by_path and [m["id"] for m in by_path["memories"]] == [str(stored.id)]
        for params in ({"channelId": "not-a-uuid"}, {"roomId": "nope"}):
            status, body = await bot.call("GET", "/api/memory/default/memories", headers=ADMIN, params=params)
            assert status == 400 and body["error"]["code"] == "INVALID_ID" and body["success"] is False
        for params in ({"tableName": "nonsense"}, {"limit": "0"}, {"includeEmbedding": "yes"}):
            status, body = await bot.call("GET", "/api/memory/default/memories", headers=ADMIN, params=params)
            assert status == 400 and body["success"] is False, params
        assert await bot.call("GET", f"/api/memory/{uuid.uuid4()}/memories", headers=ADMIN) == (
            404, not_found("Agent not found"))
        for path in ("memories", "rooms", f"rooms/{uuid.uuid4()}", f"rooms/{uuid.uuid4()}/memories"):
            assert await bot.call("GET", f"/api/memory/not-an-agent/{path}", headers=ADMIN) == bad_agent(bot), path
        assert await bot.call("DELETE", "/api/memory/not-an-agent/memories", headers=ADMIN) == bad_agent(bot)


async def test_room_memories_by_room_id_channel_or_session_channel(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        first = await send(bot, "one")
        await send(bot, "two")
        path = f"/api/memory/default/rooms/{first['room_id']}/memories"
        texts = [m["content"]["text"] for m in (await ok(bot, "GET", path))["memories"]]
        assert texts == ["Hello from Test.", "two", "Hello from Test.", "one"]
        newest = (await ok(bot, "GET", path, params={"limit": "2"}))["memories"]
        older = (await ok(bot, "GET", path, params={"before": str(newest[-1]["createdAt"])}))["memories"]
        assert all(m["createdAt"] < newest[-1]["createdAt"] for m in older) and older
        # A session's channel is the session's room.
        status, session = await bot.call("POST", "/api/messaging/sessions", headers=ADMIN,
                                         json={"agentId": "default", "userId": str(uuid.uuid4())})
        assert status == 201
        status, _ = await bot.call("POST", f"/api/messaging/sessions/{session['sessionId']}/messages",
                                   headers=ADMIN, json={"content": "in the session", "transport": "http"})
        assert status == 201
        in_session = (await ok(bot, "GET", f"/api/memory/default/rooms/{session['channelId']}/memories"))
        assert [m["content"]["text"] for m in in_session["memories"]] == ["Hello from Test.", "in the session"]
        by_query = await ok(bot, "GET", "/api/memory/default/memories", params={"channelId": session["channelId"]})
        assert by_query == in_session
        status, body = await bot.call("GET", "/api/memory/default/rooms/not-a-uuid/memories", headers=ADMIN)
        assert status == 400 and body["error"]["code"] == "INVALID_ID" and body["success"] is False


async def test_rooms_list_get_and_create(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        agent_id = str(bot.app.runtime.agent_id)
        lobby = (await send(bot, "hi"))["room_id"]
        status, session = await bot.call("POST", "/api/messaging/sessions", headers=ADMIN,
                                         json={"agentId": agent_id, "userId": str(uuid.uuid4())})
        assert status == 201
        status, _ = await bot.call("POST", f"/api/messaging/sessions/{session['sessionId']}/messages", headers=ADMIN,
                                   json={"content": "hello", "transport": "http"})
        assert status == 201
        rooms = {r["id"]: r for r in (await ok(bot, "GET", "/api/memory/default/rooms"))["rooms"]}
        assert all(set(room) == ROOM_KEYS and room["agentId"] == agent_id for room in rooms.values())
        assert rooms[lobby]["name"] == "lobby" and rooms[lobby]["type"] == "API"
        by_channel = {r["channelId"]: r for r in rooms.values()}
        assert session["channelId"] in by_channel  # a session's room shows its elizaOS channel
        assert await ok(bot, "GET", f"/api/memory/default/rooms/{lobby}") == rooms[lobby]
        assert await ok(bot, "GET", f"/api/memory/default/rooms/{session['channelId']}") == by_channel[
            session["channelId"]]
        # A room a client creates: 201, in a new world, its metadata kept apart as the client's.
        body = {"name": "Planning", "metadata": {"discord": {"owner": True}}}
        created = await ok(bot, "POST", "/api/memory/default/rooms", status=201, json=body)
        assert created["name"] == "Planning" and created["type"] == "DM" and created["source"] == "client"
        assert created["agentId"] == agent_id and isinstance(created["createdAt"], int) and created["worldId"]
        assert created["metadata"] == {"client": {"discord": {"owner": True}}}
        room = await ok(bot, "GET", f"/api/memory/default/rooms/{created['id']}")
        assert room["worldName"] == "World for Planning" and room["metadata"] == created["metadata"]
        assert room["channelId"] == created["id"]
        world = created["worldId"]
        typed = await ok(bot, "POST", "/api/memory/default/rooms", status=201,
                         json={"name": "Group", "type": "GROUP", "source": "web", "worldId": world})
        assert typed["worldId"] == world and typed["type"] == "GROUP" and typed["source"] == "web"
        for bad in ({}, {"name": "x", "type": "NOT_A_TYPE"}, {"name": "x", "worldId": "nope"}):
            status, answer = await bot.call("POST", "/api/memory/default/rooms", headers=ADMIN, json=bad)
            assert status == 400 and answer["success"] is False, bad
        # A room joins only a world of this agent: never one that does not exist, nor another agent's.
        foreign = World(id=uuid.uuid4(), agent_id=uuid.uuid4(), name="not yours")
        await bot.app.runtime.store.upsert_world(foreign)
        message = "this agent has no world with this id; leave worldId out to make a new world for the room"
        for world_id in (uuid.uuid4(), foreign.id):
            answer = await bot.call("POST", "/api/memory/default/rooms", headers=ADMIN,
                                    json={"name": "Astray", "worldId": str(world_id)})
            assert answer == (400, {"success": False, "error": {
                "code": "INVALID_BODY", "message": f"invalid body: worldId: {message}",
                "details": [{"field": "worldId", "message": message}]}})
        assert "Astray" not in {r["name"] for r in (await ok(bot, "GET", "/api/memory/default/rooms"))["rooms"]}
        assert await bot.call("GET", f"/api/memory/default/rooms/{uuid.uuid4()}", headers=ADMIN) == (
            404, not_found("Room not found"))
        status, answer = await bot.call("GET", "/api/memory/default/rooms/xyz", headers=ADMIN)
        assert status == 400 and answer["error"]["code"] == "INVALID_ID"


async def test_update_and_delete_memories(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        runtime = bot.app.runtime
        sent = await send(bot, "original text")
        memory_id = sent["message_id"]
        path = f"/api/memory/default/memories/{memory_id}"
        stored = await runtime.store.get_memory(uuid.UUID(memory_id))
        assert stored is not None
        trusted = dict(stored.metadata)
        patch = {"id": str(uuid.uuid4()), "roomId": str(uuid.uuid4()),
                 "content": {"text": "edited text", "source": "discord", "channelType": "GROUP"},
                 "metadata": {"discord": {"guild": "1"}, "note": "edited"}}
        assert await ok(bot, "PATCH", path, json=patch) == {"id": memory_id, "message": "Memory updated successfully"}
        edited = await runtime.store.get_memory(uuid.UUID(memory_id))
        assert edited is not None and edited.content.text == "edited text" and edited.room_id == stored.room_id
        assert edited.content.source == "api" and edited.content.channel_type == stored.content.channel_type
        assert edited.metadata == {**trusted, "client": {"discord": {"guild": "1"}, "note": "edited"}}
        assert "discord" not in edited.metadata
        await ok(bot, "PATCH", path, json={"metadata": {}})
        edited = await runtime.store.get_memory(uuid.UUID(memory_id))
        assert edited is not None and edited.metadata == trusted and edited.content.text == "edited text"
        assert (await bot.call("PATCH", path, headers=ADMIN, json={"content": {"text": 5}}))[0] == 400
        assert await bot.call("PATCH", f"/api/memory/default/memories/{uuid.uuid4()}", headers=ADMIN,
                              json={"content": {"text": "x"}}) == (404, not_found("Memory not found"))
        # Another agent's memory is not this agent's to change or delete.
        foreign = Memory(entity_id=uuid.uuid4(), agent_id=uuid.uuid4(), room_id=uuid.uuid4(),
                         content=Content(text="not yours"))
        await runtime.store.create_memory(foreign)
        for method in ("PATCH", "DELETE"):
            assert await bot.call(method, f"/api/memory/default/memories/{foreign.id}", headers=ADMIN,
                                  json={}) == (404, not_found("Memory not found"))
        assert await ok(bot, "DELETE", path) == {"message": "Memory deleted successfully"}
        assert await runtime.store.get_memory(uuid.UUID(memory_id)) is None
        assert await bot.call("DELETE", path, headers=ADMIN) == (404, not_found("Memory not found"))
        status, body = await bot.call("DELETE", "/api/memory/default/memories/42", headers=ADMIN)
        assert status == 400 and body["error"]["code"] == "INVALID_ID" and body["success"] is False


def knowledge(agent_id: uuid.UUID, type: MemoryType, room_id: uuid.UUID | None = None) -> Memory:
    """A row of the knowledge index, as the knowledge plugin stores it."""
    return Memory(entity_id=agent_id, agent_id=agent_id, room_id=room_id or agent_id, type=type,
                  content=Content(text=f"knowledge {type}"), metadata={"knowledge": {"source": "guide.md"}})


async def ids_of(bot: Running, agent_id: uuid.UUID, type: MemoryType) -> set[uuid.UUID]:
    return {m.id for m in await bot.app.runtime.store.get_memories(agent_id=agent_id, type=type, count=None)}


async def test_clearing_a_room_deletes_its_messages_and_documents_only(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        runtime, agent_id = bot.app.runtime, bot.app.runtime.agent_id
        room_id = uuid.UUID((await send(bot, "to be cleared"))["room_id"])
        await send(bot, "stays", room="other")
        for table in (MemoryType.DOCUMENT, MemoryType.FACT):
            await runtime.store.create_memory(Memory(entity_id=agent_id, agent_id=agent_id, room_id=room_id,
                                                     type=table, content=Content(text=f"a {table}")))
        indexed = knowledge(agent_id, MemoryType.DOCUMENT, room_id)
        await runtime.store.create_memory(indexed)
        async with bot.http.delete(f"{bot.url}/api/memory/default/memories/all/{room_id}", headers=ADMIN) as r:
            assert r.status == 204 and await r.read() == b""
        left = await runtime.store.get_memories(agent_id=agent_id, room_id=room_id, count=None)
        assert left == [] and await ids_of(bot, agent_id, MemoryType.DOCUMENT) == {indexed.id}
        assert await runtime.store.count_memories(agent_id=agent_id, room_id=room_id, type=MemoryType.FACT) == 1
        assert await runtime.store.count_memories(agent_id=agent_id) == 2  # the other room's
        status, body = await bot.call("DELETE", "/api/memory/default/memories/all/room-1", headers=ADMIN)
        assert status == 400 and body["error"]["code"] == "INVALID_ID"


async def test_clearing_the_agents_memories_keeps_the_knowledge_index_and_other_agents(
        tmp_path: Path, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eliza_memory, "CLEAR_BATCH", 2)  # many rounds, with kept rows among the deleted
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        store, agent_id = bot.app.runtime.store, bot.app.runtime.agent_id
        first = await send(bot, "one")
        await send(bot, "two", room="other")
        other_agent = uuid.uuid4()
        foreign = [Memory(entity_id=other_agent, agent_id=other_agent, room_id=uuid.UUID(first["room_id"]), type=t,
                          content=Content(text="not yours")) for t in (MemoryType.MESSAGE, MemoryType.FACT)]
        mine = [Memory(entity_id=agent_id, agent_id=agent_id, room_id=agent_id, type=t, content=Content(text=str(t)))
                for t in MemoryType if t is not MemoryType.FRAGMENT]
        kept = [knowledge(agent_id, t) for t in (MemoryType.DOCUMENT, MemoryType.DOCUMENT, MemoryType.DOCUMENT,
                                                  MemoryType.FRAGMENT)]
        plain = [Memory(entity_id=agent_id, agent_id=agent_id, room_id=agent_id, type=MemoryType.DOCUMENT,
                        content=Content(text=f"a client's document {n}")) for n in range(3)]
        assert await store.count_memories(agent_id=agent_id) == 4  # two messages and their replies
        start = bot.app.runtime.clock() * 1000
        for n, memory in enumerate([*foreign, *mine, kept[0], *plain[:2], *kept[1:3], plain[2], kept[3]]):
            assert await store.create_memory(memory.model_copy(update={"created_at": int(start) + n}))
        cleared = await ok(bot, "DELETE", "/api/memory/default/memories")
        assert cleared == {"deleted": 4 + len(mine) + len(plain), "message": "All agent memories cleared successfully"}
        for table in MemoryType:
            expected = {m.id for m in kept if m.type is table}
            assert await ids_of(bot, agent_id, table) == expected, table
            assert await ids_of(bot, other_agent, table) == {m.id for m in foreign if m.type is table}, table
        assert (await ok(bot, "GET", "/api/memory/default/memories"))["memories"] == []
        again = await ok(bot, "DELETE", "/api/memory/Test/memories")
        assert again == {"deleted": 0, "message": "All agent memories cleared successfully"}
        assert await bot.call("DELETE", f"/api/memory/{uuid.uuid4()}/memories", headers=ADMIN) == (
            404, not_found("Agent not found"))


async def test_the_openapi_document_describes_the_elizaos_routes(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        document = (await bot.call("GET", "/api/openapi.json"))[1]
        paths = document["paths"]
        for path, method in (("/api/agents", "get"), ("/api/agents/{agent_id}", "get"),
                             ("/api/server/health", "get"), ("/api/memory/{agent_id}/memories", "get"),
                             ("/api/memory/{agent_id}/rooms", "post"),
                             ("/api/memory/{agent_id}/memories/all/{room_id}", "delete"),
                             ("/api/memory/{agent_id}/memories", "delete"), ("/api/agents/{agent_id}/start", "post")):
            assert method in paths[path], path
        error = document["components"]["schemas"]["ErrorResponse"]["properties"]
        assert error["success"]["const"] is False
        query = [p["name"] for p in paths["/api/memory/{agent_id}/memories"]["get"]["parameters"]]
        assert {"tableName", "channelId", "roomId", "includeEmbedding", "limit"} <= set(query)


async def test_a_deleted_message_never_reaches_a_prompt_again(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot:
        said = await send(bot, "my secret word is XYZZY")
        await send(bot, "and the weather is fine")  # the room's history is now loaded in memory
        assert "XYZZY" in str(fake.requests_to("/chat/completions")[-1].body)
        await ok(bot, "DELETE", f"/api/memory/default/memories/{said['message_id']}")
        await send(bot, "what did I tell you?")
        assert "XYZZY" not in str(fake.requests_to("/chat/completions")[-1].body)

        await send(bot, "my other word is PLUGH", room="attic")
        await send(bot, "hello again", room="attic")
        room_id = room_id_for(bot.app.runtime, "api:room:attic")
        status, _ = await bot.call("DELETE", f"/api/memory/default/memories/all/{room_id}")
        assert status == 204
        await send(bot, "anything new?", room="attic")
        assert "PLUGH" not in str(fake.requests_to("/chat/completions")[-1].body)
