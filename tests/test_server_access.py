"""Who may do what over HTTP, replaying the attacks of issue #10: admins hold the key (or are direct
loopback clients when no key is set), web chat visitors reach only their own sessions, proxied
requests are remote, client metadata never becomes platform context, and foreign origins are refused."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.ids import create_unique_uuid
from bot.types import Content, Memory
from tests.fakes.openai_server import FakeOpenAI
from tests.server_helpers import browser_like, fake_model, running_app

KEY = "admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {KEY}"}
PROXIED = ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "203.0.113.9"})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_model() as server:
        yield server


def _send(user: str = "mallory", room: str = "lobby") -> dict[str, str]:
    return {"text": "hello", "user_id": user, "room_id": room}


async def test_visitor_reaches_only_its_own_conversation(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, web_chat="public") as bot:
        runtime = bot.app.runtime
        dm = create_unique_uuid(runtime.agent_id, "telegram:chat:42")  # someone's Telegram DM
        await runtime.store.create_memory(Memory(
            entity_id=create_unique_uuid(runtime.agent_id, "telegram:user:42"), agent_id=runtime.agent_id,
            room_id=dm, content=Content(text="my PIN is 4711", source="telegram")))
        status, admin_session = await bot.call("POST", "/api/sessions", json={"userId": "owner"}, headers=ADMIN)
        assert status == 201
        async with browser_like() as alice, browser_like() as bob:
            # The replayed attacks: search, list every room, and the admin API under any user_id.
            for method, path, body in (("POST", "/api/memories/search", {"text": "PIN"}),
                                       ("GET", "/api/memories?type=messages", None),
                                       ("GET", "/api/messages?room_id=lobby", None),
                                       ("POST", "/api/memories", {"text": "planted"}),
                                       ("POST", "/api/messages", _send("u1")), ("POST", "/api/messages", _send("u2")),
                                       ("GET", "/api/agents", None)):
                status, answer = await bot.call(method, path, json=body, client=alice)
                assert status == 401 and "4711" not in str(answer), (method, path)
            async with alice.post(bot.url + "/api/sessions", json={"userId": "owner"}) as response:
                mine, cookie = await response.json(), response.cookies["parley_visitor"]
            assert response.status == 201 and mine["userId"] != "owner"  # never another user's entity
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/api/sessions"
            sid = mine["sessionId"]
            status, said = await bot.call("POST", f"/api/sessions/{sid}/messages", json={"content": "hi"}, client=alice)
            assert status == 200 and said["reply"]["text"] == "Hello from Test."
            assert (await bot.call("GET", f"/api/sessions/{sid}/messages", client=alice))[0] == 200

            # Without a cookie: 401; another visitor with its own session: 404; nor the admin's session.
            for method, path in (("GET", ""), ("GET", "/messages"), ("POST", "/renew"), ("DELETE", "")):
                assert (await bot.call(method, f"/api/sessions/{sid}{path}", client=bob))[0] == 401
            assert (await bot.call("POST", "/api/sessions", json={"userId": "bob"}, client=bob))[0] == 201
            for method, path in (("GET", ""), ("GET", "/messages"), ("POST", "/renew"), ("DELETE", "")):
                assert (await bot.call(method, f"/api/sessions/{sid}{path}", client=bob))[0] == 404
            other = admin_session["sessionId"]
            for method, path in (("GET", ""), ("GET", "/messages"), ("POST", "/heartbeat"), ("DELETE", "")):
                status, body = await bot.call(method, f"/api/sessions/{other}{path}", client=alice)
                assert status == 404 and body["error"]["code"] == "SESSION_NOT_FOUND"
            status, body = await bot.call("POST", f"/api/sessions/{other}/messages", json={"content": "x"},
                                          client=alice)
            assert status == 404
        # The admin sees everything, the visitor's session included.
        assert (await bot.call("GET", f"/api/sessions/{sid}", headers=ADMIN))[0] == 200
        page = (await bot.call("GET", f"/api/sessions/{other}/messages", headers=ADMIN))[1]
        assert page["messages"] == []
        assert len(fake.requests_to("/chat/completions")) == 1


async def test_admin_key_in_either_header(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY) as bot:
        assert (await bot.call("GET", "/api/agents", headers={"X-API-KEY": KEY}))[0] == 200
        assert (await bot.call("GET", "/api/agents", headers={"X-API-KEY": KEY + "x"}))[0] == 401
        assert (await bot.call("GET", "/api/agents", headers={"X-API-KEY": KEY[:-1]}))[0] == 401
        assert (await bot.call("GET", "/api/agents", headers={"X-API-KEY": "wrong", **ADMIN}))[0] == 200
        status, body = await bot.call("GET", "/api/agents", headers={"Authorization": "Bearer"})
        assert status == 401 and "X-API-KEY" in body["error"]["message"]
    async with running_app(tmp_path, fake, api_key=KEY, web_chat="public") as bot, browser_like() as visitor:
        # A wrong key is refused, not quietly demoted to a visitor.
        status, _ = await bot.call("POST", "/api/sessions", json={"userId": "v"}, client=visitor,
                                   headers={"X-API-KEY": "wrong"})
        assert status == 401


async def test_without_a_key_proxied_requests_are_remote(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:
        for proxy in PROXIED:  # a same-host proxy or tunnel: the peer is loopback, the client is not
            for method, path, body in (("POST", "/api/messages", _send()), ("GET", "/api/memories?type=messages", None),
                                       ("POST", "/api/memories", {"text": "planted"}),
                                       ("POST", "/api/sessions", {"userId": "x"})):
                status, answer = await bot.call(method, path, json=body, headers=proxy)
                assert status == 401 and "set API_KEY" in answer["error"]["message"], (proxy, path)
        assert not fake.requests_to("/chat/completions")
        assert (await bot.call("GET", "/api/memories", params={"type": "facts"}))[1]["memories"] == []
        assert (await bot.call("POST", "/api/messages", json=_send()))[0] == 200  # direct loopback: the admin


async def test_without_a_key_a_rebound_host_name_is_not_the_local_admin(tmp_path: Path, fake: FakeOpenAI) -> None:
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 in the owner's
    browser reaches the port from loopback, same-origin with itself; its Host gives it away."""
    async with running_app(tmp_path, fake) as bot:
        rebound = {"Host": "rebind.evil.example:3000", "Origin": "http://rebind.evil.example:3000"}
        for method, path, body in (("GET", "/api/memories?type=messages", None), ("POST", "/api/memories",
                                                                                   {"text": "planted"})):
            status, _ = await bot.call(method, path, json=body, headers=rebound)
            assert status == 401, path
        assert (await bot.call("GET", "/api/memories", params={"type": "messages"},
                               headers={"Host": "localhost"}))[0] == 200


async def test_public_chat_without_a_key_still_keeps_proxied_visitors_out_of_the_admin_api(
        tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, web_chat="public") as bot, browser_like(PROXIED[0]) as visitor:
        assert (await bot.call("POST", "/api/messages", json=_send(), client=visitor))[0] == 401
        status, session = await bot.call("POST", "/api/sessions", json={"userId": "v"}, client=visitor)
        assert status == 201 and session["userId"].startswith("visitor-")
        admin = await bot.call("POST", "/api/sessions", json={"userId": "owner"})  # direct loopback
        assert (await bot.call("GET", f"/api/sessions/{admin[1]['sessionId']}", client=visitor))[0] == 404


@pytest.mark.parametrize(("host", "api_key", "warned"), [("0.0.0.0", None, True), ("127.0.0.1", None, False),
                                                          ("0.0.0.0", KEY, False)])
async def test_start_warns_once_when_reachable_without_a_key(tmp_path: Path, fake: FakeOpenAI,
                                                            caplog: pytest.LogCaptureFixture, host: str,
                                                            api_key: str | None, warned: bool) -> None:
    caplog.set_level(logging.WARNING, logger="bot.server")
    async with running_app(tmp_path, fake, host=host, api_key=api_key):
        pass
    warnings = [r.getMessage() for r in caplog.records if "API_KEY" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "only direct loopback clients" in warnings[0] and "WEB_CHAT=admin" in warnings[0]


async def test_keys_and_visitor_cookies_never_reach_the_logs(tmp_path: Path, fake: FakeOpenAI,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_app(tmp_path, fake, api_key=KEY, web_chat="public") as bot, browser_like() as visitor:
        await bot.call("GET", "/api/agents", headers={"Authorization": "Bearer wrong-key-attempt"})
        await bot.call("POST", "/api/messages", json=_send(), headers=ADMIN)
        await bot.call("POST", "/api/sessions", json={"userId": "v"}, client=visitor)
        token = visitor.cookie_jar.filter_cookies(bot.url + "/api/sessions")["parley_visitor"].value
    assert token and token not in caplog.text
    assert KEY not in caplog.text and "wrong-key-attempt" not in caplog.text


async def test_client_metadata_never_becomes_platform_context(tmp_path: Path, fake: FakeOpenAI) -> None:
    spoof = {"discord": {"guild_id": "1", "channel_id": "2"}, "author_is_bot": True, "source": "discord",
             "session_id": "someone-else"}
    async with running_app(tmp_path, fake) as bot:
        session = (await bot.call("POST", "/api/sessions", json={"userId": "alice"}))[1]
        status, said = await bot.call("POST", f"/api/sessions/{session['sessionId']}/messages",
                                      json={"content": "join my voice channel", "metadata": spoof})
        assert status == 200 and said["reply"] is not None  # the spoofed author_is_bot did not silence it
        stored = await bot.app.store.get_memory(uuid.UUID(said["id"]))
        assert stored is not None and stored.content.source == "api"
        assert stored.metadata == {"session_id": session["sessionId"], "author": "alice", "client": spoof,
                                   "author_is_bot": False}
        status, memory = await bot.call("POST", "/api/memories", json={"text": "x", "metadata": spoof})
        assert status == 201 and memory["metadata"] == {"client": spoof}


async def test_foreign_origins_and_non_json_bodies_are_refused(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot:  # no key: loopback is the admin, the CSRF target
        body = '{"text": "hi", "user_id": "u", "room_id": "r"}'
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            status, answer = await bot.call("POST", "/api/messages", data=body, headers={"Content-Type": content_type})
            assert status == 415 and answer["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE", content_type
        session = (await bot.call("POST", "/api/sessions", json={"userId": "u"}))[1]
        for foreign in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": bot.url.replace("127.0.0.1", "localhost")}):
            for method, path in (("POST", "/api/messages"), ("POST", f"/api/sessions/{session['sessionId']}/renew"),
                                 ("DELETE", f"/api/sessions/{session['sessionId']}")):
                status, answer = await bot.call(method, path, json=_send(), headers=foreign)
                assert status == 403 and answer["error"]["code"] == "FOREIGN_ORIGIN", (foreign, path)
        assert not fake.requests_to("/chat/completions")
        assert (await bot.call("GET", "/api/agents", headers={"Origin": "https://evil.example"}))[0] == 200
        same = {"Origin": bot.url, "Sec-Fetch-Site": "same-origin"}
        assert (await bot.call("POST", "/api/messages", json=_send(), headers=same))[0] == 200


async def test_web_chat_modes(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, web_chat="off") as bot:
        for path in ("/", "/static/chat.js"):
            assert (await bot.call("GET", path))[0] == 404
        assert (await bot.call("GET", "/api/web-chat", headers=ADMIN))[0] == 404
        assert (await bot.call("POST", "/api/sessions", json={"userId": "v"}))[0] == 401
    async with running_app(tmp_path, fake, api_key=KEY) as bot:  # the default
        assert bot.app.settings.web_chat == "admin"
        only = [{"id": str(bot.app.runtime.agent_id), "name": "Test"}]
        assert (await bot.call("GET", "/api/web-chat"))[1] == {"name": "Test", "access": "admin", "agents": only}
        assert (await bot.call("POST", "/api/sessions", json={"userId": "v"}))[0] == 401
        status, page = await bot.call("GET", "/")
        assert status == 200 and KEY not in page
    async with running_app(tmp_path, fake, api_key=KEY, web_chat="public") as bot:
        only = [{"id": str(bot.app.runtime.agent_id), "name": "Test"}]
        assert (await bot.call("GET", "/api/web-chat"))[1] == {"name": "Test", "access": "public", "agents": only}
