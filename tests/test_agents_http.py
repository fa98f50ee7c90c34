"""Several characters over HTTP (issue #16): a real App with two characters (Marlowe first, then Quill),
the real OpenAI provider against the fake model, real SQLite and the real aiohttp server. Each request
reaches the agent it names (by id or name, in the query, the body, the path or its session), their
memories and sessions stay apart, an admin stops and starts one, and /ready and /metrics tell them apart."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.telegram_connector import TelegramConnector
from connectors.telegram_connector.pacing import ChatPacer
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.test_characters import (
    MARLOWE,
    MARLOWE_TOKEN,
    QUILL,
    QUILL_TOKEN,
    dm,
    process_settings,
    running,
    voice,
    write_character,
)
from tests.test_realtime import USER, sockets

JSON = dict[str, Any]


@pytest.fixture(autouse=True)
def quick_connectors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TelegramConnector, "poll_timeout", 1.0)
    monkeypatch.setattr(TelegramConnector, "pacer", ChatPacer(private_per_second=100, private_burst=10))


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(reply=voice) as fake:
        yield fake


class Client:
    """The HTTP API of a running App, as an admin (a direct loopback client with no API_KEY)."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        got, body = await self.call(method, path, **kwargs)
        assert got == status, (method, path, got, body)
        return body

    async def say(self, text: str, **fields: Any) -> str:
        """POST /api/messages; the reply's text."""
        body = {"text": text, "user_id": "ada", "room_id": "lobby", **fields.pop("json", {})}
        result = await self.ok("POST", "/api/messages", json=body, **fields)
        return result["reply"]["text"]


async def polled(telegram: FakeTelegram, count: int) -> None:
    """Until the bot has called getUpdates `count` times (the fake counts its long polls apart)."""
    async with asyncio.timeout(10):
        while telegram.polls < count:  # noqa: ASYNC110 - the fake counts polls without telling anyone
            await asyncio.sleep(0.02)


@asynccontextmanager
async def two_characters(tmp_path: Path, model: FakeOpenAI, **secrets: dict[str, Any]) -> AsyncIterator[
        tuple[Any, Client]]:
    """Marlowe (the primary) and Quill, each with `secrets[name]`, and an HTTP client for them."""
    paths = [write_character(tmp_path, name, **secrets.get(name, {})) for name in (MARLOWE, QUILL)]
    async with running(process_settings(tmp_path, model, paths)) as app, aiohttp.ClientSession() as http:
        yield app, Client(f"http://127.0.0.1:{app.server.port}", http)


async def test_each_request_reaches_the_agent_it_names_and_their_memories_stay_apart(
    tmp_path: Path, model: FakeOpenAI,
) -> None:
    async with two_characters(tmp_path, model) as (app, api):
        marlowe_id, quill_id = str(app.agents.get(MARLOWE).id), str(app.agents.get(QUILL).id)
        # By name (any case) or id, in the body or the query; nothing named is the first character.
        assert await api.say("hello") == "Marlowe speaking."
        assert await api.say("hello", json={"agent": "quill"}) == "Quill speaking."
        assert await api.say("hello", params={"agent": quill_id}) == "Quill speaking."
        assert await api.say("hello", json={"agent": marlowe_id}) == "Marlowe speaking."
        quill_history = await api.ok("GET", "/api/messages", params={"room_id": "lobby", "agent": QUILL})
        marlowe_history = await api.ok("GET", "/api/messages", params={"room_id": "lobby"})
        assert [m["text"] for m in quill_history["messages"]] == ["Quill speaking.", "hello"] * 2
        assert [m["text"] for m in marlowe_history["messages"]] == ["Marlowe speaking.", "hello"] * 2

        await api.ok("POST", "/api/memories", 201, json={"agent": QUILL, "text": "the ink is blue"})
        assert [m["text"] for m in (await api.ok("GET", "/api/memories", params={"agent": QUILL}))["memories"]] \
            == ["the ink is blue"]
        assert (await api.ok("GET", "/api/memories"))["memories"] == []
        found = await api.ok("POST", "/api/memories/search", json={"text": "ink", "agent": QUILL})
        assert [hit["memory"]["text"] for hit in found["results"]] == ["the ink is blue"]
        assert (await api.ok("POST", "/api/memories/search", json={"text": "ink"}))["results"] == []
        # elizaOS's memory routes take the agent from the path.
        facts = {"tableName": "facts"}
        quill_facts = await api.ok("GET", f"/api/memory/{quill_id}/memories", params=facts)
        assert [m["content"]["text"] for m in quill_facts["data"]["memories"]] == ["the ink is blue"]
        assert (await api.ok("GET", f"/api/memory/{MARLOWE}/memories", params=facts))["data"]["memories"] == []

        listing = f"{MARLOWE} ({marlowe_id}), {QUILL} ({quill_id})"
        assert await api.call("GET", "/api/memories", params={"agent": "Nobody"}) == (404, {
            "success": False, "error": {"code": "AGENT_NOT_FOUND",
                                        "message": f"no agent 'Nobody'; the agents are {listing}"}})
        status, body = await api.call("POST", "/api/messages", json={"text": "hi", "user_id": "u", "room_id": "r",
                                                                     "agent": "nobody"})
        assert status == 404 and body["error"]["code"] == "AGENT_NOT_FOUND"
        status, body = await api.call("POST", "/api/messages", params={"agent": QUILL},
                                      json={"text": "hi", "user_id": "u", "room_id": "r", "agent": MARLOWE})
        assert status == 400 and body["error"]["message"] == (
            "the query names agent 'Quill' and the body 'Marlowe'; name one")
        status, body = await api.call("GET", "/api/memory/Nobody/memories")
        assert status == 400 and body["error"]["code"] == "INVALID_ID" and listing in body["error"]["message"]

        agents = (await api.ok("GET", "/api/agents"))["data"]["agents"]
        assert [(a["id"], a["name"], a["status"], a["state"]) for a in agents] == [
            (marlowe_id, MARLOWE, "active", "running"), (quill_id, QUILL, "active", "running")]
        assert (await api.ok("GET", f"/api/agents/{QUILL.lower()}"))["data"]["name"] == QUILL
        assert (await api.ok("GET", "/api/server/status"))["agentCount"] == 2


async def test_sessions_belong_to_the_agent_they_were_created_with(tmp_path: Path, model: FakeOpenAI) -> None:
    async with two_characters(tmp_path, model) as (app, api):
        quill_id = str(app.agents.get(QUILL).id)
        quill = await api.ok("POST", "/api/sessions", 201, json={"userId": "ada", "agentId": QUILL})
        marlowe = await api.ok("POST", "/api/sessions", 201, json={"userId": "ada"})
        assert quill["agentId"] == quill_id and marlowe["agentId"] == str(app.agents.get(MARLOWE).id)
        for session, voice_ in ((quill, "Quill speaking."), (marlowe, "Marlowe speaking.")):
            sent = await api.ok("POST", f"/api/sessions/{session['sessionId']}/messages", json={"content": "hi"})
            assert sent["reply"]["text"] == voice_
            history = await api.ok("GET", f"/api/sessions/{session['sessionId']}/messages")
            assert [m["content"] for m in history["messages"]] == [voice_, "hi"]
        # elizaOS's messaging sessions: the body's agentId, by id or name.
        eliza = await api.ok("POST", "/api/messaging/sessions", 201, json={"agentId": quill_id, "userId": "ada"})
        answer = await api.ok("POST", f"/api/messaging/sessions/{eliza['sessionId']}/messages", 201,
                              json={"content": "hello", "transport": "http"})
        assert answer["agentResponse"]["text"] == "Quill speaking."
        everyone = await api.ok("GET", "/api/messaging/sessions")
        quills = await api.ok("GET", "/api/messaging/sessions", params={"agent": QUILL})
        assert everyone["total"] == 3 and {s["sessionId"] for s in quills["sessions"]} == {
            quill["sessionId"], eliza["sessionId"]}
        status, body = await api.call("POST", "/api/messaging/sessions", json={"agentId": "nobody", "userId": "x"})
        assert status == 404 and body["error"]["code"] == "AGENT_NOT_FOUND"


async def test_an_admin_stops_and_starts_an_agent_and_ready_says_which_run(tmp_path: Path, model: FakeOpenAI) -> None:
    async with FakeTelegram(MARLOWE_TOKEN, username="marlowe_bot", bot_id=7_000_001) as marlowe_telegram, \
            FakeTelegram(QUILL_TOKEN, username="quill_bot", bot_id=7_000_002) as quill_telegram, \
            two_characters(tmp_path, model, Marlowe={"TELEGRAM_BOT_TOKEN": MARLOWE_TOKEN,
                                                     "TELEGRAM_API_ROOT": marlowe_telegram.root},
                           Quill={"TELEGRAM_BOT_TOKEN": QUILL_TOKEN,
                                  "TELEGRAM_API_ROOT": quill_telegram.root}) as (app, api):
        quill_id = str(app.agents.get(QUILL).id)
        await polled(quill_telegram, 1)
        await polled(marlowe_telegram, 1)
        session = await api.ok("POST", "/api/sessions", 201, json={"userId": "ada", "agentId": QUILL})
        status, ready = await api.call("GET", "/ready")
        assert status == 200 and ready["checks"]["agents"] == {MARLOWE: "running", QUILL: "running"}
        assert ready["checks"]["connectors"] == {f"{MARLOWE}/telegram": True, f"{QUILL}/telegram": True}

        assert await api.ok("POST", f"/api/agents/{QUILL}/stop") == {"success": True,
                                                                     "data": {"message": "Agent stopped"}}
        polls = quill_telegram.polls
        # Marlowe's bot polls twice more (a second of long polls): a running Quill would have polled too.
        await polled(marlowe_telegram, marlowe_telegram.polls + 2)
        assert quill_telegram.polls == polls
        user = FakeTelegram.user()
        quill_telegram.push({"message": quill_telegram.message(user, FakeTelegram.private_chat(user), "anyone?")})
        assert await dm(marlowe_telegram, "still there?", 1) == "Marlowe speaking."

        agents = (await api.ok("GET", "/api/agents"))["data"]["agents"]
        assert [(a["name"], a["status"], a["state"]) for a in agents] == [
            (MARLOWE, "active", "running"), (QUILL, "inactive", "stopped")]
        status, ready = await api.call("GET", "/ready")
        assert status == 200, "an agent an admin stopped does not make the process unready"
        assert ready["checks"]["agents"] == {MARLOWE: "running", QUILL: "stopped"}
        assert ready["checks"]["connectors"] == {f"{MARLOWE}/telegram": True}
        stopped = {"success": False, "error": {"code": "AGENT_NOT_RUNNING", "message": f"agent {QUILL} is stopped; "
                                               f"an admin can start it with POST /api/agents/{quill_id}/start"}}
        assert await api.call("POST", "/api/messages", json={"text": "hi", "user_id": "u", "room_id": "r",
                                                             "agent": QUILL}) == (409, stopped)
        assert await api.call("POST", f"/api/sessions/{session['sessionId']}/messages",
                              json={"content": "hi"}) == (409, stopped)
        assert (await api.call("POST", "/api/agents/nobody/stop"))[0] == 400

        assert await api.ok("POST", f"/api/agents/{quill_id}/start") == {
            "success": True, "data": {"id": quill_id, "name": QUILL, "status": "active"}}
        (reply,) = await quill_telegram.wait_for("sendMessage", timeout=20)
        assert reply["text"] == "Quill speaking.", "the message sent while it was down is answered"
        assert await api.say("back?", json={"agent": QUILL}) == "Quill speaking."
        sent = await api.ok("POST", f"/api/sessions/{session['sessionId']}/messages", json={"content": "hi"})
        assert sent["reply"]["text"] == "Quill speaking.", "the session outlives its agent's restart"
        status, ready = await api.call("GET", "/ready")
        assert status == 200 and ready["checks"]["agents"] == {MARLOWE: "running", QUILL: "running"}

        metrics = await (await api.http.get(api.url + "/metrics")).text()
        lines = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
        # Counted per agent, across its restart (the refused messages were never received).
        assert float(lines[f'parley_messages_received_total{{agent="{QUILL}",platform="api"}}']) == 2
        assert float(lines[f'parley_messages_received_total{{agent="{MARLOWE}",platform="telegram"}}']) == 1

        # The first character can be stopped too; meanwhile a request that names no agent is told so.
        marlowe_id = str(app.agents.get(MARLOWE).id)
        await api.ok("POST", f"/api/agents/{marlowe_id}/stop")
        status, body = await api.call("POST", "/api/messages", json={"text": "hi", "user_id": "u", "room_id": "r"})
        assert status == 409 and body["error"]["code"] == "AGENT_NOT_RUNNING"
        assert await api.say("still here?", json={"agent": QUILL}) == "Quill speaking."
        await api.ok("POST", f"/api/agents/{marlowe_id}/start")
        assert await api.say("hello again") == "Marlowe speaking."


async def test_a_failed_agent_makes_ready_503_naming_it(tmp_path: Path, model: FakeOpenAI) -> None:
    wrong = QUILL_TOKEN.replace("222222222", "333333333")
    async with FakeTelegram(QUILL_TOKEN, username="quill_bot", bot_id=7_000_002) as quill_telegram, \
            two_characters(tmp_path, model, Quill={"TELEGRAM_BOT_TOKEN": wrong,
                                                   "TELEGRAM_API_ROOT": quill_telegram.root}) as (app, api):
        reason = "failed: Telegram rejected TELEGRAM_BOT_TOKEN; check the token from @BotFather"
        status, ready = await api.call("GET", "/ready")
        assert status == 503 and ready["failing"] == [f"agent:{QUILL}"]
        assert ready["checks"]["agents"] == {MARLOWE: "running", QUILL: "failed"}, "the reason is for admins"
        listed = {a["name"]: a for a in (await api.ok("GET", "/api/agents"))["data"]["agents"]}
        assert listed[QUILL]["state"] == reason and listed[QUILL]["status"] == "inactive"
        assert await api.say("hello") == "Marlowe speaking."
        status, body = await api.call("GET", "/api/memories", params={"agent": QUILL})
        assert status == 409 and body["error"]["message"].startswith(f"agent {QUILL} is {reason}")
        status, body = await api.call("POST", f"/api/agents/{QUILL}/start")
        assert status == 500 and body["error"] == {"code": "START_ERROR",
                                                   "message": f"Error starting agent {QUILL}: {reason}"}


async def test_the_openapi_document_names_every_agent(tmp_path: Path, model: FakeOpenAI) -> None:
    async with two_characters(tmp_path, model) as (app, api):
        document = await api.ok("GET", "/api/openapi.json")
    paths = document["paths"]
    assert document["info"]["title"] == f"parley: {MARLOWE}, {QUILL}"
    memories = paths["/api/memories"]["get"]
    assert "agent" in [p["name"] for p in memories["parameters"]] and {"404", "409"} <= set(memories["responses"])
    session = paths["/api/sessions/{session_id}/messages"]["post"]
    assert "agent" not in [p["name"] for p in session["parameters"]], "a session names its agent"
    agent = paths["/api/memory/{agent_id}/memories"]["get"]["parameters"][0]["schema"]
    assert agent["anyOf"][1]["enum"] == ["default", MARLOWE, QUILL]
    assert "post" in paths["/api/agents/{agent_id}/stop"] and "409" in paths["/api/agents/{agent_id}/stop"]["post"][
        "responses"]


async def test_socket_io_channels_talk_to_their_agent(tmp_path: Path, model: FakeOpenAI) -> None:
    async with two_characters(tmp_path, model) as (app, api), sockets(1) as (sock,):
        quill_id = str(app.agents.get(QUILL).id)
        await sock.connect(api, key=None)  # type: ignore[arg-type]  # a direct loopback client is the admin
        free, quills = str(uuid.uuid4()), str(uuid.uuid4())
        await sock.join(free)
        await sock.join(quills, agentId=QUILL)
        for channel, count, name in ((free, 1, MARLOWE), (quills, 1, QUILL)):
            await sock.send(channel, "hi")
            (reply,) = await sock.reply(channel, count)
            assert (reply["senderName"], reply["text"]) == (name, f"{name} speaking.")
        # A messaging session's channel talks to the session's agent, whoever joins it.
        session = await api.ok("POST", "/api/messaging/sessions", 201, json={"agentId": quill_id, "userId": USER})
        await sock.join(session["channelId"])
        await sock.send(session["channelId"], "hello")
        (reply,) = await sock.reply(session["channelId"])
        assert (reply["senderId"], reply["text"]) == (quill_id, "Quill speaking.")
        await sock.client.emit("message", {"type": 1, "payload": {"channelId": str(uuid.uuid4()), "agentId": "x"}})
        (error,) = await sock.wait("messageError")
        assert error["error"].startswith("no agent 'x'; the agents are Marlowe")


async def test_a_plugin_route_serves_the_agent_it_names(tmp_path: Path, model: FakeOpenAI) -> None:
    documents = "/api/knowledge/documents"
    async with two_characters(tmp_path, model) as (app, api):
        form = aiohttp.FormData()
        form.add_field("file", b"# Inks\n\nQuill's ink is blue.\n", filename="inks.md",
                       content_type="application/octet-stream")
        uploaded = await api.ok("POST", documents, 201, params={"agent": QUILL}, data=form)
        assert [d["source"] for d in uploaded["documents"]] == ["inks.md"]
        quills = (await api.ok("GET", documents, params={"agent": QUILL}))["documents"]
        assert [d["id"] for d in quills] == [uploaded["documents"][0]["id"]]
        assert "inks.md" not in [d["source"] for d in (await api.ok("GET", documents))["documents"]]
        status, body = await api.call("DELETE", f"{documents}/{quills[0]['id']}")
        assert status == 404, "Marlowe has no such document"
        await api.ok("DELETE", f"{documents}/{quills[0]['id']}", params={"agent": QUILL})
        assert (await api.call("GET", documents, params={"agent": "nobody"}))[0] == 404


async def test_session_caps_hold_for_the_process_not_per_character(tmp_path: Path, model: FakeOpenAI) -> None:
    paths = [write_character(tmp_path, name) for name in (MARLOWE, QUILL)]
    settings = process_settings(tmp_path, model, paths, session_max_concurrent=2)
    async with running(settings) as app, aiohttp.ClientSession() as http:
        api = Client(f"http://127.0.0.1:{app.server.port}", http)
        await api.ok("POST", "/api/sessions", 201, json={"userId": "ada"})
        await api.ok("POST", "/api/sessions", 201, json={"userId": "ada", "agentId": QUILL})
        for agent in (MARLOWE, QUILL):
            status, body = await api.call("POST", "/api/sessions", json={"userId": "bob", "agentId": agent})
            assert status == 429 and "SESSION_MAX_CONCURRENT" in body["error"]["message"], (agent, body)


async def test_a_snake_case_agent_field_is_read_and_a_session_keeps_its_agent(tmp_path: Path,
                                                                             model: FakeOpenAI) -> None:
    async with two_characters(tmp_path, model) as (app, api):
        quill_id = str(app.agents.get(QUILL).id)
        session = await api.ok("POST", "/api/sessions", 201, json={"userId": "ada", "agent_id": QUILL})
        assert session["agentId"] == quill_id
        status, body = await api.call("POST", "/api/messaging/sessions",
                                      json={"userId": str(uuid.uuid4()), "agent_id": "nobody"})
        assert status == 404 and body["error"]["code"] == "AGENT_NOT_FOUND"
        path = f"/api/sessions/{session['sessionId']}"
        for named in ({"params": {"agent": MARLOWE}}, {"params": {"agent": "nobody"}}):
            status, body = await api.call("GET", path, **named)
            assert status == 400 and f"belongs to agent {QUILL}" in body["error"]["message"], body
        assert (await api.ok("GET", path, params={"agent": QUILL}))["agentId"] == quill_id
        assert (await api.ok("GET", path))["agentId"] == quill_id
        # A final newline: spaces around an agent's name or id are ignored; a memory id with one is no UUID.
        assert (await api.call("GET", "/api/memories", params={"agent": quill_id + "\n"}))[0] == 200
        assert (await api.call("GET", f"/api/memory/{quill_id}%0A/memories"))[0] == 200
        status, body = await api.call("DELETE", f"/api/memory/{quill_id}/memories/{uuid.uuid4()}%0A")
        assert status == 400 and body["error"]["code"] == "INVALID_ID"
