"""The HTTP service against the whole running bot: health, readiness, the REST API, limits, auth, metrics."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.plugin import Connector, Plugin, Priority, Route
from bot.runtime import AgentRuntime
from bot.server import WebServer
from bot.server.conversation import room_id_for
from bot.store.factory import create_store
from bot.types import Content, Memory, MemoryType
from plugins.bootstrap import bootstrap_plugin
from plugins.bootstrap.dispatcher import SLOW_DOWN
from tests.fakes.openai_server import FakeOpenAI, Status, fake_embedding
from tests.server_helpers import (
    API_KEY_FOR_MODEL,
    character,
    fake_model,
    running_app,
    settings_for,
    xml_reply,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_model() as server:
        yield server


def _send(text: str = "hello", user: str = "alice", room: str = "lobby", **extra: str) -> dict[str, str]:
    return {"text": text, "user_id": user, "room_id": room, **extra}


async def test_health_ready_and_agents_without_secrets(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        assert (await bot.call("GET", "/health"))[0] == 200
        status, ready = await bot.call("GET", "/ready")
        assert status == 200 and ready["ready"] is True and ready["checks"]["database"] is True
        async with bot.http.get(bot.url + "/api/agents") as response:
            raw = await response.text()
        assert response.status == 200
        for secret in ("character-secret-value", "hidden-setting", API_KEY_FOR_MODEL):
            assert secret not in raw
        status, agents = await bot.call("GET", "/api/agents")
        agent = agents["data"]["agents"][0]
        assert agents["success"] is True and agent["name"] == "Test" and agent["status"] == "active"
        detail = (await bot.call("GET", f"/api/agents/{agent['id']}"))[1]["data"]
        assert detail["id"] == agent["id"] and "secrets" not in detail and "settings" not in detail
        assert (await bot.call("GET", "/api/agents/default"))[0] == 200
        status, body = await bot.call("GET", f"/api/agents/{uuid.uuid4()}")
        assert status == 404 and body == {"success": False,
                                          "error": {"code": "NOT_FOUND", "message": "Agent not found"}}
        status, body = await bot.call("GET", "/api/agents/someone-else")
        assert status == 400 and body["error"]["code"] == "INVALID_ID"


async def test_message_gets_the_reply_and_both_are_stored(tmp_path: Path, fake: FakeOpenAI) -> None:
    fake.script(xml_reply("Nice to meet you, Alice."))
    async with running_app(tmp_path, fake) as bot:
        status, result = await bot.call("POST", "/api/messages", json=_send("hi, I'm Alice"))
        assert status == 200, result
        assert result["status"] == "completed"
        assert result["reply"]["text"] == "Nice to meet you, Alice." and result["reply"]["actions"] == ["REPLY"]
        status, page = await bot.call("GET", "/api/messages", params={"room_id": "lobby"})
        assert [(m["role"], m["text"]) for m in page["messages"]] == [
            ("agent", "Nice to meet you, Alice."), ("user", "hi, I'm Alice")]
        reply, message = page["messages"]
        assert reply["id"] == result["reply"]["id"] and reply["in_reply_to"] == message["id"] == result["message_id"]
        assert page["next_cursor"] is None
        # The same free-string ids always map to the same room; another room is separate.
        assert (await bot.call("GET", "/api/messages", params={"room_id": "elsewhere"}))[1]["messages"] == []


async def test_history_cursor_pagination_is_exact(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, rate_limit_per_minute=0) as bot:
        for n in range(4):
            assert (await bot.call("POST", "/api/messages", json=_send(f"message {n}")))[0] == 200
        seen, cursor = [], None
        while True:
            params = {"room_id": "lobby", "limit": "3", **({"cursor": cursor} if cursor else {})}
            status, page = await bot.call("GET", "/api/messages", params=params)
            assert status == 200 and len(page["messages"]) <= 3
            seen += page["messages"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 8 and len({m["id"] for m in seen}) == 8
        keys = [(m["created_at"], m["id"]) for m in seen]
        assert keys == sorted(keys, reverse=True)
        status, body = await bot.call("GET", "/api/messages", params={"room_id": "lobby", "limit": "101"})
        assert status == 400 and body["error"]["details"][0]["field"] == "limit"
        status, body = await bot.call("GET", "/api/messages", params={"room_id": "lobby", "cursor": "nonsense!"})
        assert status == 400 and body["error"]["code"] == "INVALID_CURSOR"


async def test_pages_split_messages_sharing_a_millisecond_exactly(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        runtime = bot.app.runtime
        room_id = room_id_for(runtime, "api:room:busy")
        for n in range(12):  # 2 + 8 + 2 rows at three instants: ties longer than a page
            await runtime.store.create_memory(Memory(
                entity_id=runtime.agent_id, agent_id=runtime.agent_id, room_id=room_id,
                content=Content(text=f"m{n}"), created_at=1_000 + (0 if n < 2 else 1 if n < 10 else 2)))
        seen, cursor = [], None
        while True:
            params = {"room_id": "busy", "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await bot.call("GET", "/api/messages", params=params))[1]
            seen += [m["text"] for m in page["messages"]]
            if (cursor := page["next_cursor"]) is None:
                break
        assert len(seen) == 12 and set(seen) == {f"m{n}" for n in range(12)}


async def test_bad_bodies_get_400_naming_the_fields(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        status, body = await bot.call("POST", "/api/messages", json={"text": "", "room_id": 5, "extra": 1})
        assert status == 400
        fields = {d["field"] for d in body["error"]["details"]}
        assert fields == {"text", "user_id", "room_id", "extra"}
        assert "user_id" in body["error"]["message"]
        status, body = await bot.call("POST", "/api/messages", data=b"{not json",
                                      headers={"Content-Type": "application/json"})
        assert status == 400 and body["error"]["code"] == "INVALID_JSON"
        status, body = await bot.call("POST", "/api/messages", json=["a", "list"])
        assert status == 400 and body["error"]["code"] == "INVALID_BODY"
        status, body = await bot.call("POST", "/api/messages", json=_send("nul \x00 byte"))
        assert status == 400
        status, body = await bot.call("DELETE", "/api/messages")
        assert status == 405 and body["error"]["code"] == "METHOD_NOT_ALLOWED"
        status, body = await bot.call("GET", "/api/nothing-here")
        assert status == 404 and body["error"]["code"] == "NOT_FOUND"
        # Nothing bad was stored, and the server still answers.
        assert (await bot.call("POST", "/api/messages", json=_send()))[0] == 200
        assert fake.requests_to("/chat/completions")


async def test_oversize_bodies_get_413(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, max_body_bytes=2048) as bot:
        status, body = await bot.call("POST", "/api/messages", json=_send("x" * 3000))
        assert status == 413 and body["error"]["code"] == "BODY_TOO_LARGE"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
            yield b'{"text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'", "user_id": "a", "room_id": "b"}'

        status, body = await bot.call("POST", "/api/messages", data=chunks(),
                                      headers={"Content-Type": "application/json"})
        assert status == 413 and body["error"]["code"] == "BODY_TOO_LARGE"
        assert not fake.requests_to("/chat/completions")


async def test_rate_limit_answers_429_with_slow_down_and_keeps_the_message(tmp_path: Path,
                                                                           fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, rate_limit_per_minute=2) as bot:
        for n in range(2):
            assert (await bot.call("POST", "/api/messages", json=_send(f"m{n}")))[0] == 200
        async with bot.http.post(bot.url + "/api/messages", json=_send("one too many")) as response:
            body = await response.json()
            assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
        assert body["error"] == {"code": "RATE_LIMITED", "message": SLOW_DOWN}
        # Another user is not limited.
        assert (await bot.call("POST", "/api/messages", json=_send(user="bob")))[0] == 200
        status, page = await bot.call("GET", "/api/messages", params={"room_id": "lobby", "limit": "100"})
        texts = [m["text"] for m in page["messages"]]
        assert "one too many" in texts  # stored before the limit applied: nothing received is lost
        assert len(fake.requests_to("/chat/completions")) == 3


async def test_repeated_message_id_is_refused_and_answered_once(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        assert (await bot.call("POST", "/api/messages", json=_send(message_id="m-1")))[0] == 200
        status, body = await bot.call("POST", "/api/messages", json=_send(message_id="m-1"))
        assert status == 409 and body["error"]["code"] == "DUPLICATE_MESSAGE"
        page = (await bot.call("GET", "/api/messages", params={"room_id": "lobby"}))[1]
        assert len(page["messages"]) == 2
        assert len(fake.requests_to("/chat/completions")) == 1


async def test_model_failure_gives_the_error_reply_without_details(tmp_path: Path, fake: FakeOpenAI) -> None:
    leak = {"error": {"message": f"Incorrect API key provided: {API_KEY_FOR_MODEL}", "type": "invalid_request"}}
    fake.script(Status(401, body=leak))
    async with running_app(tmp_path, fake) as bot:
        async with bot.http.post(bot.url + "/api/messages", json=_send()) as response:
            raw = await response.text()
        assert response.status == 200 and API_KEY_FOR_MODEL not in raw
        result = await response.json()
        assert result["status"] == "error"
        assert result["reply"]["text"] == bot.app.settings.error_reply
        assert (await bot.call("POST", "/api/messages", json=_send("again")))[1]["status"] == "completed"


async def test_memories_store_list_and_search(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        vector = fake_embedding("owl", 8)
        status, stored = await bot.call("POST", "/api/memories", json={
            "text": "Alice keeps an owl called Pip", "user_id": "alice", "embedding": vector})
        assert status == 201 and stored["type"] == "facts"
        await bot.call("POST", "/api/memories", json={"text": "Bob plays the cello", "type": "documents"})
        status, page = await bot.call("GET", "/api/memories")
        assert [m["text"] for m in page["memories"]] == ["Alice keeps an owl called Pip"]
        page = (await bot.call("GET", "/api/memories", params={"type": "documents"}))[1]
        assert [m["text"] for m in page["memories"]] == ["Bob plays the cello"]
        status, found = await bot.call("POST", "/api/memories/search", json={"text": "owl"})
        assert status == 200 and [h["memory"]["id"] for h in found["results"]] == [stored["id"]]
        assert found["results"][0]["match"] == "text"
        status, found = await bot.call("POST", "/api/memories/search", json={"embedding": vector})
        assert found["results"][0]["memory"]["id"] == stored["id"]
        assert found["results"][0]["match"] == "embedding" and found["results"][0]["score"] > 0.99
        status, body = await bot.call("POST", "/api/memories/search", json={"limit": 3})
        assert status == 400 and body["error"]["details"][0]["field"] == "text"
        stored_memory = await bot.app.store.get_memory(uuid.UUID(stored["id"]))
        assert stored_memory is not None and stored_memory.type is MemoryType.FACT


async def test_api_key_is_required_when_set(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key="the-api-key") as bot:
        status, body = await bot.call("GET", "/api/agents")
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"]
        assert "the-api-key" not in str(body)
        assert (await bot.call("GET", "/api/agents", headers={"Authorization": "Bearer wrong"}))[0] == 401
        assert (await bot.call("GET", "/api/agents", headers={"Authorization": "Basic the-api-key"}))[0] == 401
        assert (await bot.call("GET", "/api/agents", headers={"Authorization": "Bearer the-api-key"}))[0] == 200
        for public in ("/health", "/ready", "/metrics", "/api/openapi.json", "/"):
            assert (await bot.call("GET", public))[0] == 200, public


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_without_api_key_only_loopback_clients_are_served(tmp_path: Path, fake: FakeOpenAI) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    async with running_app(tmp_path, fake, host="0.0.0.0") as bot:
        assert (await bot.call("GET", "/api/agents"))[0] == 200
        async with aiohttp.ClientSession() as http, http.get(f"http://{address}:{bot.server.port}/api/agents") as r:
            body = await r.json()
        assert r.status == 401 and "set API_KEY" in body["error"]["message"]


async def test_plugin_routes_mount_public_and_protected(tmp_path: Path, fake: FakeOpenAI) -> None:
    async def hook(request: web.Request) -> web.Response:
        return web.json_response({"hooked": True})

    settings = settings_for(tmp_path, fake.base_url, api_key="k")
    from bot.app import App

    app = App(settings, character())
    app.runtime.plugins.append(Plugin(name="hooks", routes=[Route("POST", "/hooks/public", hook, public=True),
                                                            Route("POST", "/hooks/private", hook)]))
    await app.start()
    try:
        url = f"http://127.0.0.1:{app.server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/hooks/public") as response:
                assert response.status == 200 and (await response.json()) == {"hooked": True}
            async with http.post(url + "/hooks/private") as response:
                assert response.status == 401
            async with http.post(url + "/hooks/private", headers={"Authorization": "Bearer k"}) as response:
                assert response.status == 200
    finally:
        await app.stop()


async def test_metrics_count_messages_latency_models_and_sessions(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        await bot.call("POST", "/api/messages", json=_send())
        await bot.call("POST", "/api/sessions", json={"userId": "alice"})
        async with bot.http.get(bot.url + "/metrics") as response:
            text = await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        assert float(lines['parley_messages_received_total{platform="api"}']) == 1
        assert float(lines['parley_messages_replied_total{platform="api"}']) == 1
        assert float(lines['parley_reply_latency_seconds_count{platform="api"}']) == 1
        assert float(lines['parley_model_calls_total{outcome="ok",provider="openai",type="TEXT_LARGE"}']) == 1
        assert float(lines['parley_model_tokens_total{kind="prompt",provider="openai",type="TEXT_LARGE"}']) > 0
        assert float(lines["parley_active_sessions"]) == 1
        assert float(lines["parley_queue_depth"]) == 0
        assert API_KEY_FOR_MODEL not in text


async def test_shutdown_refuses_new_api_work(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        bot.server.mark_stopping()
        status, body = await bot.call("POST", "/api/messages", json=_send())
        assert status == 503 and body["error"]["code"] == "SHUTTING_DOWN"
        assert (await bot.call("GET", "/health"))[0] == 200
        status, ready = await bot.call("GET", "/ready")
        assert status == 503 and ready["failing"] == ["lifecycle"]
        assert not fake.requests_to("/chat/completions")


class _Link(Connector):
    source = "link"
    up = False

    @property
    def connected(self) -> bool:
        return self.up


async def test_ready_names_what_is_not_ready(tmp_path: Path, fake: FakeOpenAI) -> None:
    settings = settings_for(tmp_path, fake.base_url)
    store = create_store(settings)
    runtime = AgentRuntime(character(), settings, store,
                           [bootstrap_plugin(), Plugin(name="link", priority=Priority.PLATFORM, services=[_Link])])
    server = WebServer(runtime, settings)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/health") as response:  # answers while the runtime starts
                assert response.status == 200
            async with http.get(url + "/ready") as response:
                body = await response.json()
            assert response.status == 503 and body["failing"][0] == "lifecycle" and "model" in body["failing"]
            async with http.get(url + "/api/agents") as response:
                assert response.status == 503 and (await response.json())["error"]["code"] == "STARTING"
            await runtime.initialize()
            server.mark_started()
            async with http.get(url + "/ready") as response:
                body = await response.json()
            assert response.status == 503 and body["failing"] == ["model", "connector:link"]
            assert body["checks"]["connectors"] == {"link": False}
            _Link.up = True
            async with http.get(url + "/ready") as response:
                assert response.status == 503 and (await response.json())["failing"] == ["model"]
    finally:
        _Link.up = False
        await runtime.stop()
        await server.stop()
        await store.close()


async def test_ready_reports_an_unreachable_database(tmp_path: Path, fake: FakeOpenAI) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = settings_for(tmp_path, fake.base_url, database_url=f"postgresql://postgres@127.0.0.1:{port}/test")
    store = create_store(settings)
    server = WebServer(AgentRuntime(character(), settings, store, [bootstrap_plugin()]), settings)
    await server.start()
    server.mark_started()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{server.port}/ready") as response:
            body = await response.json()
        assert response.status == 503 and "database" in body["failing"] and body["checks"]["database"] is False
    finally:
        await server.stop()
        await store.close()
