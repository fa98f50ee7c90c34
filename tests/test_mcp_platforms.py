"""An MCP tool called natively (OpenAI tool_calls from the fake OpenAI server) by the whole app:
from a Discord mention and from the HTTP API, with the servers given by the MCP_SERVERS file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fakes.discord_api import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, ToolCalls
from tests.mcp_helpers import stdio_entry
from tests.server_helpers import running_app
from tests.test_discord import GENERAL, Bot, discord_fake, fast_ready, say  # noqa: F401 - fixtures

FORECAST = "It is sunny in Oslo for 1 day(s)."


def tool_results(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body.get("messages", []) if m.get("role") == "tool"]


def weather_model(body: dict[str, Any]) -> str | ToolCalls:
    """Calls the MCP tool when it is offered, then answers with its result."""
    if results := tool_results(body):
        return f"Forecast: {results[0]}"
    if any(t["function"]["name"] == "weather__get_forecast" for t in body.get("tools") or []):
        return ToolCalls([("weather__get_forecast", {"city": "Oslo"})])
    return "ok"


def servers_file(tmp_path: Path, **entry: Any) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"servers": {"weather": stdio_entry(**entry)}}), encoding="utf-8")
    return path


def offered(model: FakeOpenAI) -> dict[str, Any]:
    first = next(r.body for r in model.requests_to("/chat/completions") if r.body.get("tools"))
    return {t["function"]["name"]: t["function"] for t in first["tools"]}


async def test_a_discord_mention_calls_an_mcp_tool(tmp_path: Path, discord_fake: FakeDiscord) -> None:  # noqa: F811
    async with FakeOpenAI(reply=weather_model) as model:
        bot = Bot(tmp_path, discord_fake, model, mcp_servers=servers_file(tmp_path), mcp_timeout=20)
        await bot.start()
        try:
            await say(discord_fake, GENERAL, f"<@{discord_fake.bot['id']}> weather in Oslo?",
                      mentions=[discord_fake.bot])
            [reply] = await discord_fake.wait_for_messages(1)
            assert reply["sent_body"]["content"] == f"Forecast: {FORECAST}"
            schema = offered(model)["weather__get_forecast"]["parameters"]
            assert schema["required"] == ["city"]
        finally:
            await bot.stop()


async def test_the_http_api_calls_an_mcp_tool_a_visitor_may_use(tmp_path: Path) -> None:
    async with FakeOpenAI(reply=weather_model) as model:
        async with running_app(tmp_path, model, mcp_servers=servers_file(tmp_path, role="visitor"),
                               mcp_timeout=20) as bot:
            status, result = await bot.call("POST", "/api/messages",
                                            json={"text": "weather in Oslo?", "user_id": "alice", "room_id": "lobby"})
            assert status == 200, result
            assert result["reply"]["text"] == f"Forecast: {FORECAST}"
            assert "weather__get_forecast" in offered(model)


async def test_the_http_api_is_not_offered_a_member_only_mcp_tool(tmp_path: Path) -> None:
    async with FakeOpenAI(reply=weather_model) as model:
        async with running_app(tmp_path, model, mcp_servers=servers_file(tmp_path), mcp_timeout=20) as bot:
            assert bot.app.runtime.find_action("weather__get_forecast") is not None
            status, result = await bot.call("POST", "/api/messages",
                                            json={"text": "weather in Oslo?", "user_id": "alice", "room_id": "lobby"})
            assert status == 200 and result["reply"]["text"] == "ok"
            requests = [r.body for r in model.requests_to("/chat/completions")]
            assert not any(t["function"]["name"].startswith("weather__")
                           for body in requests for t in body.get("tools") or [])
