"""MCP tools called natively (OpenAI tool_calls from the fake OpenAI server) by the whole app: from a
Discord mention and from the HTTP API, one tool on a stdio server and one on a streamable-HTTP
server in the same round, with the servers given by the MCP_SERVERS file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.discord_api import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, ToolCalls
from tests.mcp_helpers import HttpMcpServer, stdio_entry
from tests.server_helpers import running_app
from tests.test_discord import GENERAL, Bot, discord_fake, fast_ready, say  # noqa: F401 - fixtures

FORECAST = "It is sunny in Oslo for 1 day(s)."


def tool_results(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body.get("messages", []) if m.get("role") == "tool"]


def weather_model(body: dict[str, Any]) -> str | ToolCalls:
    """Calls each server's forecast tool when offered (one round, two calls), then answers with
    their results."""
    if results := tool_results(body):
        return "Forecast: " + " / ".join(results)
    offered_names = {t["function"]["name"] for t in body.get("tools") or []}
    calls = [(name, {"city": "Oslo"}) for name in ("weather__get_forecast", "remote__get_forecast")
             if name in offered_names]
    return ToolCalls(calls) if calls else "ok"


@pytest.fixture
async def http_server() -> AsyncIterator[HttpMcpServer]:
    server = HttpMcpServer()
    await server.start()
    try:
        yield server
    finally:
        server.stop()


def servers_file(tmp_path: Path, http: HttpMcpServer, **entry: Any) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"servers": {"weather": stdio_entry(**entry), "remote": http.entry(**entry)}}),
                    encoding="utf-8")
    return path


def offered(model: FakeOpenAI) -> dict[str, Any]:
    first = next(r.body for r in model.requests_to("/chat/completions") if r.body.get("tools"))
    return {t["function"]["name"]: t["function"] for t in first["tools"]}


async def test_a_discord_mention_calls_mcp_tools_over_stdio_and_http(
    tmp_path: Path, discord_fake: FakeDiscord, http_server: HttpMcpServer  # noqa: F811
) -> None:
    async with FakeOpenAI(reply=weather_model) as model:
        bot = Bot(tmp_path, discord_fake, model, mcp_servers=servers_file(tmp_path, http_server), mcp_timeout=20)
        await bot.start()
        try:
            await say(discord_fake, GENERAL, f"<@{discord_fake.bot['id']}> weather in Oslo?",
                      mentions=[discord_fake.bot])
            [reply] = await discord_fake.wait_for_messages(1)
            assert reply["sent_body"]["content"] == f"Forecast: {FORECAST} / {FORECAST}"
            tools = offered(model)
            assert tools["weather__get_forecast"]["parameters"]["required"] == ["city"]
            assert tools["remote__get_forecast"]["parameters"]["required"] == ["city"]
        finally:
            await bot.stop()


async def test_the_http_api_calls_mcp_tools_a_visitor_may_use(tmp_path: Path, http_server: HttpMcpServer) -> None:
    async with FakeOpenAI(reply=weather_model) as model:
        async with running_app(tmp_path, model, mcp_servers=servers_file(tmp_path, http_server, role="visitor"),
                               mcp_timeout=20) as bot:
            status, result = await bot.call("POST", "/api/messages",
                                            json={"text": "weather in Oslo?", "user_id": "alice", "room_id": "lobby"})
            assert status == 200, result
            assert result["reply"]["text"] == f"Forecast: {FORECAST} / {FORECAST}"
            assert {"weather__get_forecast", "remote__get_forecast"} <= set(offered(model))
            status, page = await bot.call("GET", "/api/messages", params={"room_id": "lobby"})
            calls = [m["tool_call"] for m in page["messages"] if m["role"] == "tool"]
            assert sorted(c["name"] for c in calls) == ["remote__get_forecast", "weather__get_forecast"]
            assert all(c["result"] == FORECAST and c["success"] for c in calls)


async def test_the_http_api_is_not_offered_a_member_only_mcp_tool(tmp_path: Path, http_server: HttpMcpServer) -> None:
    async with FakeOpenAI(reply=weather_model) as model:
        async with running_app(tmp_path, model, mcp_servers=servers_file(tmp_path, http_server),
                               mcp_timeout=20) as bot:
            assert bot.app.runtime.find_action("weather__get_forecast") is not None
            status, result = await bot.call("POST", "/api/messages",
                                            json={"text": "weather in Oslo?", "user_id": "alice", "room_id": "lobby"})
            assert status == 200 and result["reply"]["text"] == "ok"
            requests = [r.body for r in model.requests_to("/chat/completions")]
            assert not any(t["function"]["name"].startswith(("weather__", "remote__"))
                           for body in requests for t in body.get("tools") or [])
