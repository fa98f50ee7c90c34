"""The Sessions API over HTTP, with the runtime's clock under the test's control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.server_helpers import Running, fake_model, running_app

START = 1_800_000_000.0
MINUTE = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * MINUTE


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_model() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


def minutes_left(session: dict[str, Any], clock: Clock) -> float:
    return (datetime.fromisoformat(session["expiresAt"]).timestamp() - clock.now) / MINUTE


async def create(bot: Running, **body: Any) -> dict[str, Any]:
    status, session = await bot.call("POST", "/api/sessions", json={"userId": "alice", **body})
    assert status == 201, session
    return session


async def say(bot: Running, session: dict[str, Any], text: str = "hello") -> tuple[int, dict[str, Any]]:
    return await bot.call("POST", f"/api/sessions/{session['sessionId']}/messages", json={"content": text})


async def test_config_precedence_session_over_agent_over_global(tmp_path: Path, fake: FakeOpenAI,
                                                                clock: Clock) -> None:
    async with running_app(tmp_path, fake, clock=clock, session_timeout_minutes=10,
                           character_fields={"settings": {"SESSION_MAX_DURATION_MINUTES": "90"}}) as bot:
        session = await create(bot)
        assert session["timeoutConfig"] == {"timeoutMinutes": 10, "autoRenew": True, "maxDurationMinutes": 90,
                                            "warningThresholdMinutes": 5}
        assert minutes_left(session, clock) == 10
        session = await create(bot, agentId="default", timeoutConfig={"timeoutMinutes": 3, "autoRenew": False})
        assert session["timeoutConfig"]["timeoutMinutes"] == 3 and session["timeoutConfig"]["autoRenew"] is False
        assert session["timeoutConfig"]["maxDurationMinutes"] == 90
        status, body = await bot.call("POST", "/api/sessions", json={"userId": "a", "agentId": "nobody"})
        assert status == 404 and body["error"]["code"] == "AGENT_NOT_FOUND"
        status, body = await bot.call("POST", "/api/sessions", json={"userId": "a",
                                                                     "timeoutConfig": {"timeoutMinutes": -1}})
        assert status == 400 and body["error"]["details"][0]["field"] == "timeoutConfig.timeoutMinutes"


async def test_message_reply_and_history(tmp_path: Path, fake: FakeOpenAI, clock: Clock) -> None:
    async with running_app(tmp_path, fake, clock=clock) as bot:
        session = await create(bot)
        status, result = await say(bot, session, "hi there")
        assert status == 200, result
        assert result["content"] == "hi there" and result["reply"]["text"] == "Hello from Test."
        assert result["sessionStatus"]["isNearExpiration"] is False and result["warning"] is None
        assert result["expiresAt"] == result["sessionStatus"]["expiresAt"]
        status, result = await bot.call("POST", f"/api/sessions/{session['sessionId']}/messages",
                                        json={"text": "text works too"})
        assert status == 200 and result["content"] == "text works too"
        status, body = await bot.call("POST", f"/api/sessions/{session['sessionId']}/messages", json={})
        assert status == 400 and "content" in body["error"]["message"]
        status, page = await bot.call("GET", f"/api/sessions/{session['sessionId']}/messages",
                                      params={"limit": "3"})
        assert [m["content"] for m in page["messages"]] == ["Hello from Test.", "text works too",
                                                            "Hello from Test."]
        assert page["hasMore"] is True
        page = (await bot.call("GET", f"/api/sessions/{session['sessionId']}/messages",
                               params={"cursor": page["nextCursor"]}))[1]
        assert [m["content"] for m in page["messages"]] == ["hi there"] and page["hasMore"] is False
        other = await create(bot)
        assert (await bot.call("GET", f"/api/sessions/{other['sessionId']}/messages"))[1]["messages"] == []


async def test_expiry_auto_renew_cap_and_manual_renew(tmp_path: Path, fake: FakeOpenAI, clock: Clock) -> None:
    async with running_app(tmp_path, fake, clock=clock) as bot:
        session = await create(bot, timeoutConfig={"timeoutMinutes": 10, "maxDurationMinutes": 25,
                                                   "warningThresholdMinutes": 2})
        sid = session["sessionId"]
        clock.advance(8)
        status, result = await say(bot, session)
        assert result["sessionStatus"]["wasRenewed"] is True and minutes_left(result, clock) == 10
        clock.advance(9)  # t=17: renewing to t=27 would pass the 25-minute cap
        status, result = await say(bot, session)
        assert minutes_left(result, clock) == 8
        clock.advance(7)  # t=24: one minute left, inside the warning threshold
        status, result = await say(bot, session)
        assert minutes_left(result, clock) == 1 and result["sessionStatus"]["wasRenewed"] is False
        assert result["warning"]["expiresIn"] == 60_000 and result["sessionStatus"]["isNearExpiration"] is True
        status, body = await bot.call("POST", f"/api/sessions/{sid}/renew")
        assert status == 422 and body["error"]["code"] == "MAX_DURATION_REACHED"
        clock.advance(1)
        status, body = await say(bot, session)
        assert status == 404 and body["error"]["code"] == "SESSION_EXPIRED"
        assert "POST /api/sessions" in body["error"]["message"]
        for method, path in (("GET", ""), ("POST", "/renew"), ("POST", "/heartbeat"), ("GET", "/messages")):
            status, body = await bot.call(method, f"/api/sessions/{sid}{path}")
            assert status == 404 and body["error"]["code"] == "SESSION_NOT_FOUND"


async def test_without_auto_renew_only_renew_extends(tmp_path: Path, fake: FakeOpenAI, clock: Clock) -> None:
    async with running_app(tmp_path, fake, clock=clock) as bot:
        session = await create(bot, timeoutConfig={"timeoutMinutes": 10, "autoRenew": False})
        sid = session["sessionId"]
        clock.advance(6)
        status, result = await say(bot, session)
        assert minutes_left(result, clock) == 4 and result["warning"] is not None
        assert "4 minute" in result["warning"]["message"]
        status, beat = await bot.call("POST", f"/api/sessions/{sid}/heartbeat")
        assert status == 200 and minutes_left(beat, clock) == 4
        status, renewed = await bot.call("POST", f"/api/sessions/{sid}/renew")
        assert status == 200 and minutes_left(renewed, clock) == 10 and renewed["renewalCount"] == 1
        clock.advance(10)
        assert (await bot.call("GET", f"/api/sessions/{sid}"))[1]["error"]["code"] == "SESSION_EXPIRED"


async def test_heartbeat_renews_when_auto_renew_is_on(tmp_path: Path, fake: FakeOpenAI, clock: Clock) -> None:
    async with running_app(tmp_path, fake, clock=clock) as bot:
        session = await create(bot, timeoutConfig={"timeoutMinutes": 10})
        clock.advance(9)
        status, beat = await bot.call("POST", f"/api/sessions/{session['sessionId']}/heartbeat")
        assert status == 200 and minutes_left(beat, clock) == 10 and beat["isNearExpiration"] is False
        clock.advance(9)
        assert (await bot.call("GET", f"/api/sessions/{session['sessionId']}"))[0] == 200


async def test_max_concurrent_sessions(tmp_path: Path, fake: FakeOpenAI, clock: Clock) -> None:
    async with running_app(tmp_path, fake, clock=clock, session_max_concurrent=2) as bot:
        first = await create(bot, timeoutConfig={"timeoutMinutes": 5})
        await create(bot, timeoutConfig={"timeoutMinutes": 60})
        status, body = await bot.call("POST", "/api/sessions", json={"userId": "carol"})
        assert status == 429 and body["error"]["code"] == "TOO_MANY_SESSIONS"
        status, ended = await bot.call("DELETE", f"/api/sessions/{first['sessionId']}")
        assert status == 200 and ended["success"] is True
        assert (await bot.call("GET", f"/api/sessions/{first['sessionId']}"))[1]["error"]["code"] == \
            "SESSION_NOT_FOUND"
        third = await create(bot, timeoutConfig={"timeoutMinutes": 5})
        assert (await bot.call("POST", "/api/sessions", json={"userId": "dave"}))[0] == 429
        clock.advance(5)  # `third` expires, which frees a place
        await create(bot)
        assert (await bot.call("GET", f"/api/sessions/{third['sessionId']}"))[0] == 404


async def test_cleanup_removes_expired_sessions_from_the_store(tmp_path: Path, fake: FakeOpenAI,
                                                               clock: Clock) -> None:
    async with running_app(tmp_path, fake, clock=clock, session_cleanup_interval_seconds=0.02) as bot:
        short = await create(bot, timeoutConfig={"timeoutMinutes": 5})
        long = await create(bot, timeoutConfig={"timeoutMinutes": 50})
        store, agent_id = bot.app.store, bot.app.runtime.agent_id
        assert len(await store.list_cache(agent_id, "session:")) == 2
        clock.advance(6)
        for _ in range(200):  # the background cleanup runs every 20 ms
            stored = await store.list_cache(agent_id, "session:")
            if len(stored) == 1:
                break
            await asyncio.sleep(0.01)
        assert list(stored) == [f"session:{long['sessionId']}"]
        assert bot.server.sessions.active_count() == 1
        assert (await bot.call("GET", f"/api/sessions/{short['sessionId']}"))[1]["error"]["code"] == \
            "SESSION_NOT_FOUND"


async def test_sessions_and_their_messages_survive_a_restart(tmp_path: Path, fake: FakeOpenAI,
                                                             clock: Clock) -> None:
    async with running_app(tmp_path, fake, clock=clock) as bot:
        session = await create(bot, timeoutConfig={"timeoutMinutes": 10}, metadata={"topic": "owls"})
        assert (await say(bot, session, "remember me"))[0] == 200
    clock.advance(3)
    async with running_app(tmp_path, fake, clock=clock) as bot:
        status, again = await bot.call("GET", f"/api/sessions/{session['sessionId']}")
        assert status == 200 and again["metadata"] == {"topic": "owls"} and minutes_left(again, clock) == 7
        page = (await bot.call("GET", f"/api/sessions/{session['sessionId']}/messages"))[1]
        assert [m["content"] for m in page["messages"]] == ["Hello from Test.", "remember me"]
        assert page["messages"][0]["isAgent"] is True and page["messages"][0]["inReplyTo"] == page["messages"][1]["id"]
