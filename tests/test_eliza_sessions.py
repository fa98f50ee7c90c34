"""elizaOS 1.7's messaging sessions (`/api/messaging/sessions`): its shapes, over the real App."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.server.conversation import room_id_for, user_id_for
from bot.types import Content, Memory
from tests.fakes.openai_server import FakeOpenAI
from tests.server_helpers import Running, fake_model, running_app, xml_reply
from tests.test_server_sessions import Clock
from tests.test_server_streaming import read_events

KEY = "eliza-sessions-key"
ADMIN = {"X-API-KEY": KEY}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
USER = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_model() as model:
        yield model


async def create(bot: Running, **fields: object) -> dict:
    status, session = await bot.call("POST", "/api/messaging/sessions", json={
        "agentId": str(bot.app.runtime.agent_id), "userId": USER, **fields})
    assert status == 201, session
    return session


async def test_session_lifecycle_in_elizaos_shapes(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot:
        session = await create(bot, metadata={"platform": "test"}, timeoutConfig={"timeoutMinutes": 10})
        sid = session["sessionId"]
        assert session["agentId"] == str(bot.app.runtime.agent_id) and session["userId"] == USER
        assert session["metadata"] == {"platform": "test"} and session["timeoutConfig"]["timeoutMinutes"] == 10
        assert all(ISO_MS.match(session[k]) for k in ("createdAt", "lastActivity", "expiresAt"))
        stored = await bot.server.sessions.get(sid)
        assert session["channelId"] == str(stored.channel)

        status, got = await bot.call("GET", f"/api/messaging/sessions/{sid}")
        assert status == 200 and got["sessionId"] == sid and got["timeRemaining"] > 0
        status, listed = await bot.call("GET", "/api/messaging/sessions")
        assert status == 200 and listed["total"] == 1 and listed["sessions"][0]["sessionId"] == sid
        assert "success" not in listed  # bare JSON, as elizaOS: the client returns the body itself
        status, health = await bot.call("GET", "/api/messaging/sessions/health")
        assert status == 200 and health["status"] == "healthy" and health["activeSessions"] == 1

        status, changed = await bot.call("PATCH", f"/api/messaging/sessions/{sid}/timeout",
                                         json={"timeoutMinutes": 20, "autoRenew": False})
        assert status == 200 and changed["timeoutConfig"]["timeoutMinutes"] == 20
        assert changed["timeoutConfig"]["autoRenew"] is False and changed["expiresAt"] > session["expiresAt"]
        status, refused = await bot.call("PATCH", f"/api/messaging/sessions/{sid}/timeout",
                                         json={"timeoutMinutes": 600, "maxDurationMinutes": 60})
        assert status == 400 and "maxDurationMinutes" in refused["error"]["message"]
        status, renewed = await bot.call("POST", f"/api/messaging/sessions/{sid}/renew")
        assert status == 200 and renewed["renewalCount"] == changed["renewalCount"] + 1
        status, beat = await bot.call("POST", f"/api/messaging/sessions/{sid}/heartbeat")
        assert status == 200 and beat["sessionId"] == sid

        status, ended = await bot.call("DELETE", f"/api/messaging/sessions/{sid}")
        assert status == 200 and ended["success"] is True and ended["data"]["message"] == ended["message"]
        status, gone = await bot.call("GET", f"/api/messaging/sessions/{sid}")
        assert status == 404 and gone["error"]["code"] == "SESSION_NOT_FOUND"


async def test_an_expired_session_is_gone_and_its_channel_still_names_its_room(tmp_path: Path,
                                                                               fake: FakeOpenAI) -> None:
    clock = Clock()
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN, clock=clock) as bot:
        session = await create(bot, timeoutConfig={"timeoutMinutes": 5, "autoRenew": False})
        sid, channel = session["sessionId"], session["channelId"]
        status, _ = await bot.call("POST", f"/api/messaging/sessions/{sid}/messages",
                                   json={"content": "remember me", "transport": "http"})
        assert status == 201
        clock.advance(6)
        status, body = await bot.call("GET", f"/api/messaging/sessions/{sid}")
        assert status == 410 and body["error"]["code"] == "SESSION_EXPIRED"
        status, memories = await bot.call("GET", f"/api/memory/default/rooms/{channel}/memories")
        assert status == 200 and "remember me" in [m["content"]["text"] for m in memories["data"]["memories"]]


async def test_http_send_answers_with_the_reply_at_top_level_and_under_data(tmp_path: Path) -> None:
    async with FakeOpenAI(reply=xml_reply("Hello from Test.")) as fake, \
            running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot:
        sid = (await create(bot))["sessionId"]
        status, sent = await bot.call("POST", f"/api/messaging/sessions/{sid}/messages",
                                      json={"content": "hi there", "transport": "http", "metadata": {"k": 1}})
        assert status == 201, sent
        assert sent["success"] is True
        for body in (sent, sent["data"]):
            assert body["userMessage"]["content"] == "hi there" and ISO_MS.match(body["userMessage"]["createdAt"])
            assert body["agentResponse"]["text"] == "Hello from Test."
            assert body["agentResponse"]["inReplyTo"] == body["userMessage"]["id"]
            assert body["userMessage"]["authorId"] == USER  # the client's own id for its user
            assert body["sessionStatus"]["wasRenewed"] is True  # autoRenew is on by default

        status, sync = await bot.call("POST", f"/api/messaging/sessions/{sid}/messages",
                                      json={"content": "again", "mode": "sync"})
        assert status == 201 and sync["agentResponse"]["text"] == "Hello from Test."

        status, bad = await bot.call("POST", f"/api/messaging/sessions/{sid}/messages",
                                     json={"content": "x", "transport": "carrier-pigeon"})
        assert status == 400 and "transport" in bad["error"]["message"]
        status, bad = await bot.call("POST", f"/api/messaging/sessions/{sid}/messages",
                                     json={"content": "x", "attachments": [{"type": "image", "url": "u"}]})
        assert status == 400 and "attachments" in bad["error"]["message"]


async def _page_all(bot: Running, sid: str, limit: int, direction: str) -> list[dict]:
    """Every message, one page at a time, following the cursors in `direction` (before: older)."""
    pages, cursor = [], None
    while True:
        query = f"limit={limit}" + (f"&{direction}={cursor}" if cursor is not None else "")
        if direction == "after" and cursor is None:
            query += "&after=0"
        status, page = await bot.call("GET", f"/api/messaging/sessions/{sid}/messages?{query}")
        assert status == 200, page
        assert len(page["messages"]) <= limit or len({m["createdAt"] for m in page["messages"]}) == 1
        pages.append(page["messages"])
        if not page["hasMore"]:
            return [m for chunk in (pages if direction == "before" else reversed(pages)) for m in chunk]
        cursor = page["cursors"][direction]


async def test_history_pages_by_before_and_after_split_exactly(tmp_path: Path) -> None:
    async with FakeOpenAI(reply=xml_reply("ok")) as fake, \
            running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot:
        session = await create(bot)
        sid = session["sessionId"]
        for n in range(3):
            status, _ = await bot.call("POST", f"/api/messaging/sessions/{sid}/messages",
                                       json={"content": f"message {n}", "transport": "http"})
            assert status == 201
        # Four more messages in one millisecond: a page edge must not split them.
        runtime, stored = bot.app.runtime, await bot.server.sessions.get(sid)
        tie_ms = (await runtime.store.get_memories(agent_id=runtime.agent_id, count=1,
                                                   room_id=room_id_for(runtime, stored.room_key)))[0].created_at + 5
        for n in range(4):
            await runtime.store.create_memory(Memory(
                entity_id=user_id_for(runtime, USER), agent_id=runtime.agent_id,
                room_id=room_id_for(runtime, stored.room_key), created_at=tie_ms,
                content=Content(text=f"tie {n}", source="api"), metadata={"author": USER}))
        status, everything = await bot.call("GET", f"/api/messaging/sessions/{sid}/messages")
        assert status == 200 and not everything["hasMore"]
        messages = everything["messages"]
        assert [m["content"] for m in messages][4:] == ["ok", "message 2", "ok", "message 1", "ok", "message 0"]
        assert sorted(m["content"] for m in messages[:4]) == ["tie 0", "tie 1", "tie 2", "tie 3"]
        assert [m["isAgent"] for m in messages[4:]] == [True, False] * 3
        assert all(m["authorId"] == USER for m in messages if not m["isAgent"])
        assert all(isinstance(m["metadata"], dict) and ISO_MS.match(m["createdAt"]) for m in messages)
        assert messages[5]["metadata"]["sessionId"] == sid

        ids = [m["id"] for m in messages]
        for limit in (1, 2, 3, 5):
            assert [m["id"] for m in await _page_all(bot, sid, limit, "before")] == ids, limit
            assert [m["id"] for m in await _page_all(bot, sid, limit, "after")] == ids, limit

        status, clamped = await bot.call("GET", f"/api/messaging/sessions/{sid}/messages?limit=1000")
        assert status == 200 and len(clamped["messages"]) == len(messages)  # clamped to 100, as elizaOS
        status, bad = await bot.call("GET", f"/api/messaging/sessions/{sid}/messages?before=yesterday")
        assert status == 400 and "before" in bad["error"]["message"]


async def test_sse_send_streams_the_reply(tmp_path: Path) -> None:
    async with FakeOpenAI(reply=xml_reply("Streaming along nicely."), stream_chunks=6) as fake, \
            running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot:
        sid = (await create(bot))["sessionId"]
        async with bot.http.post(bot.url + f"/api/messaging/sessions/{sid}/messages",
                                 json={"content": "stream please", "transport": "sse"}) as response:
            assert response.status == 200 and response.content_type == "text/event-stream"
            events = [event async for event in read_events(response)]
        names = [event.name for event in events]
        assert names[0] == "user_message" and names[-1] == "done" and "chunk" in names
        done = events[-1].data
        chunks = "".join(event.data["chunk"] for event in events if event.name == "chunk")
        assert chunks == done["agentResponse"]["text"] == "Streaming along nicely."


async def test_sessions_need_the_admin_key_and_a_real_agent(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        status, body = await bot.call("GET", "/api/messaging/sessions")
        assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
        status, body = await bot.call("POST", "/api/messaging/sessions", headers=ADMIN,
                                      json={"agentId": str(uuid.uuid4()), "userId": USER})
        assert status == 404 and body["error"]["code"] == "AGENT_NOT_FOUND"
        status, body = await bot.call("POST", "/api/messaging/sessions", headers=ADMIN, json={"userId": USER})
        assert status == 400 and "agentId" in body["error"]["message"]
