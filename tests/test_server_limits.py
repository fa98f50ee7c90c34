"""Limits that hold (issue #10): visitor sessions per client and in all, timeouts and metadata caps,
per-session and per-IP rate limits, and hostile bodies and cursors answered with 400, never 500."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.server_helpers import Running, browser_like, fake_model, running_app

KEY = "admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {KEY}"}
PUBLIC = {"api_key": KEY, "web_chat": "public", "trusted_proxies": 1}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_model() as server:
        yield server


def _from(ip: str) -> dict[str, str]:
    """A visitor at `ip`, as the one trusted proxy in front (TRUSTED_PROXIES=1) reports it."""
    return {"X-Forwarded-For": f"198.51.100.7, {ip}"}


async def _open(bot: Running, ip: str, **body: Any) -> tuple[int, Any]:
    async with browser_like(_from(ip)) as visitor:
        return await bot.call("POST", "/api/sessions", json={"userId": "v", **body}, client=visitor)


async def test_visitor_sessions_are_capped_per_client_and_in_all_across_restarts(tmp_path: Path,
                                                                                fake: FakeOpenAI) -> None:
    limits = {**PUBLIC, "web_chat_sessions_per_ip": 2, "web_chat_max_sessions": 3}
    async with running_app(tmp_path, fake, **limits) as bot:
        for _ in range(2):
            assert (await _open(bot, "203.0.113.1"))[0] == 201
        status, body = await _open(bot, "203.0.113.1")  # the flood of issue #10 stops here
        assert status == 429 and "WEB_CHAT_SESSIONS_PER_IP" in body["error"]["message"]
        assert (await _open(bot, "203.0.113.2"))[0] == 201  # another visitor still gets in
    async with running_app(tmp_path, fake, **limits) as bot:  # stored sessions still count after a restart
        assert (await _open(bot, "203.0.113.1"))[0] == 429
        status, body = await _open(bot, "203.0.113.3")
        assert status == 429 and "WEB_CHAT_MAX_SESSIONS" in body["error"]["message"]
        assert (await bot.call("POST", "/api/sessions", json={"userId": "owner"}, headers=ADMIN))[0] == 201


async def test_visitors_cannot_lengthen_timeouts(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, **PUBLIC, session_timeout_minutes=30) as bot:
        status, body = await _open(bot, "203.0.113.1", timeoutConfig={"timeoutMinutes": 10080})
        assert status == 400 and body["error"]["details"][0]["field"] == "timeoutConfig.timeoutMinutes"
        status, body = await _open(bot, "203.0.113.1", timeoutConfig={"maxDurationMinutes": 43200})
        assert status == 400 and body["error"]["details"][0]["field"] == "timeoutConfig.maxDurationMinutes"
        status, session = await _open(bot, "203.0.113.1", timeoutConfig={"timeoutMinutes": 5})
        assert status == 201 and session["timeoutConfig"]["timeoutMinutes"] == 5
        status, session = await bot.call("POST", "/api/sessions", headers=ADMIN,  # admins may
                                         json={"userId": "o", "timeoutConfig": {"timeoutMinutes": 10080}})
        assert status == 201


async def test_metadata_is_capped(tmp_path: Path, fake: FakeOpenAI) -> None:
    big = {"blob": "x" * 900_000}
    async with running_app(tmp_path, fake, **PUBLIC) as bot:
        status, body = await _open(bot, "203.0.113.1", metadata=big)
        assert status == 400 and body["error"]["details"][0]["field"] == "metadata"
        assert "4096" in body["error"]["message"]
        assert bot.server.sessions.active_count() == 0
        status, body = await bot.call("POST", "/api/sessions", headers=ADMIN,
                                      json={"userId": "o", "metadata": {"blob": "x" * 4100}})
        assert status == 400
        status, session = await bot.call("POST", "/api/sessions", headers=ADMIN,
                                         json={"userId": "o", "metadata": {"topic": "owls"}})
        assert status == 201
        status, body = await bot.call("POST", f"/api/sessions/{session['sessionId']}/messages", headers=ADMIN,
                                      json={"content": "hi", "metadata": big})
        assert status == 400 and body["error"]["details"][0]["field"] == "metadata"
        status, body = await bot.call("POST", "/api/memories", headers=ADMIN, json={"text": "t", "metadata": big})
        assert status == 400
        assert not fake.requests_to("/chat/completions")


async def test_visitor_messages_are_limited_per_session(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, **PUBLIC, web_chat_messages_per_minute=2, rate_limit_per_minute=0) as bot, \
            browser_like(_from("203.0.113.1")) as visitor:
        session = (await bot.call("POST", "/api/sessions", json={"userId": "v"}, client=visitor))[1]
        path = f"/api/sessions/{session['sessionId']}/messages"
        for n in range(2):
            assert (await bot.call("POST", path, json={"content": f"m{n}"}, client=visitor))[0] == 200
        async with visitor.post(bot.url + path, json={"content": "one too many"}) as response:
            body = await response.json()
        assert response.status == 429 and body["error"]["code"] == "RATE_LIMITED"
        assert int(response.headers["Retry-After"]) >= 1
        assert len(fake.requests_to("/chat/completions")) == 2  # the budget was not spent
        # The admin is not held to the visitor limit.
        assert (await bot.call("POST", path, json={"content": "admin"}, headers=ADMIN))[0] == 200


async def test_visitor_requests_are_limited_per_ip(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, **PUBLIC, web_chat_ip_per_minute=3, web_chat_sessions_per_ip=10) as bot:
        answers = [await _open(bot, "203.0.113.1") for _ in range(5)]  # a new cookie each time does not help
        assert [status for status, _ in answers] == [201, 201, 201, 429, 429]
        assert "from your address" in answers[-1][1]["error"]["message"]
        assert (await _open(bot, "203.0.113.2"))[0] == 201
        assert (await bot.call("GET", "/api/agents", headers=ADMIN))[0] == 200


async def test_hostile_json_gets_400(tmp_path: Path, fake: FakeOpenAI) -> None:
    json_headers = {"Content-Type": "application/json"}
    async with running_app(tmp_path, fake) as bot:
        for path in ("/api/messages", "/api/sessions", "/api/memories/search"):
            status, body = await bot.call("POST", path, data=b"[" * 999_000, headers=json_headers)  # RecursionError
            assert status == 400 and body["error"]["code"] == "INVALID_JSON", path
        deep: Any = "x"
        for _ in range(40):
            deep = {"d": deep}
        status, body = await bot.call("POST", "/api/sessions", json={"userId": "u", "metadata": deep})
        assert status == 400 and "32 levels" in body["error"]["message"]
        status, body = await bot.call("POST", "/api/memories/search", data=b'{"text": "a", "min_score": NaN}',
                                      headers=json_headers)
        assert status == 400 and body["error"]["code"] == "INVALID_JSON"
        fine: Any = "x"
        for _ in range(20):
            fine = {"d": fine}
        assert (await bot.call("POST", "/api/sessions", json={"userId": "u", "metadata": fine}))[0] == 201


def _cursor(created_at: int) -> str:
    return base64.urlsafe_b64encode(f"{created_at}:{uuid.uuid4()}".encode()).decode().rstrip("=")


async def test_out_of_range_cursors_get_400(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        session = (await bot.call("POST", "/api/sessions", json={"userId": "u"}))[1]
        for cursor in (_cursor(10**39), _cursor(-1), _cursor(2**63)):  # OverflowError in the database before
            for path, params in (("/api/messages", {"room_id": "lobby"}), ("/api/memories", {"type": "messages"}),
                                 (f"/api/sessions/{session['sessionId']}/messages", {})):
                status, body = await bot.call("GET", path, params={**params, "cursor": cursor})
                assert status == 400 and body["error"]["code"] == "INVALID_CURSOR", (path, cursor)
        assert (await bot.call("GET", "/api/messages", params={"room_id": "lobby", "cursor": _cursor(10**12)}))[0] == 200


async def test_a_lone_surrogate_is_replaced_at_intake_and_later_messages_work(tmp_path: Path, fake: FakeOpenAI) -> None:
    headers = {"Content-Type": "application/json"}
    async with running_app(tmp_path, fake) as bot:
        body = b'{"text": "hi \\ud800 there \\ud83d\\ude00", "user_id": "u", "room_id": "r"}'
        status, result = await bot.call("POST", "/api/messages", data=body, headers=headers)
        assert status == 200, result
        assert (await bot.call("POST", "/api/messages", json={"text": "again", "user_id": "u", "room_id": "r"}))[0] == 200
        page = (await bot.call("GET", "/api/messages", params={"room_id": "r"}))[1]
        texts = [m["text"] for m in page["messages"] if m["role"] == "user"]
        assert "hi \ufffd there \U0001F600" in texts and "again" in texts
