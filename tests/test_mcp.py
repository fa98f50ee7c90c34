"""MCP servers as tools: real servers built with the SDK (tests/fakes/mcp_server.py) over stdio and
streamable HTTP, connected by the MCP plugin inside a real runtime."""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.logging_setup import configure_logging
from bot.permissions import Role, refusal
from bot.plugin import ActionResult, State
from bot.runtime import AgentRuntime
from bot.types import Memory, ModelType
from plugins.mcp import McpService, create_plugin
from tests.mcp_helpers import FAKE_SERVER, HttpMcpServer, alive, eventually, stdio_entry
from tests.runtime_helpers import (
    ScriptedModel,
    make_character,
    make_chat,
    make_settings,
    start_runtime,
    xml_reply,
)

Start = Callable[..., Awaitable[AgentRuntime]]


@pytest.fixture
async def start_mcp(sqlite_store, tmp_path: Path) -> AsyncIterator[Start]:
    """`await start_mcp({"weather": stdio_entry()}, mcp_timeout=...)`: a runtime with those servers."""
    runtimes: list[AgentRuntime] = []

    async def start(servers: dict[str, Any], model: ScriptedModel | None = None, **overrides: Any) -> AgentRuntime:
        character = make_character(settings={"mcp": {"servers": servers}})
        settings = make_settings(tmp_path, **{"mcp_timeout": 20, "mcp_reconnect_seconds": 0.3, **overrides})
        plugin = create_plugin(settings, character)
        assert plugin is not None
        runtime = await start_runtime(sqlite_store, settings, model or ScriptedModel(), plugin, character=character)
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        await runtime.stop()


@pytest.fixture
async def http_server() -> AsyncIterator[HttpMcpServer]:
    server = HttpMcpServer(key="test-api-key-123")
    await server.start()
    yield server
    server.stop()


def message(runtime: AgentRuntime) -> Memory:
    chat = make_chat(runtime)
    return chat.message("use the tool")


async def call(runtime: AgentRuntime, name: str, role: Role = Role.MEMBER, **arguments: Any) -> ActionResult:
    _, result = await runtime.run_action(name, message(runtime), State(), parameters=arguments, role=role)
    return result


def service(runtime: AgentRuntime) -> McpService:
    found = runtime.get_service(McpService)
    assert found is not None
    return found


def warnings_about(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and name in r.getMessage()]


async def test_stdio_tools_become_namespaced_actions_with_their_schemas(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry()})
    action = runtime.find_action("weather__get_forecast")
    assert action is not None and action.is_tool
    assert action.parameters is not None
    assert action.parameters["properties"]["city"]["type"] == "string" and action.parameters["required"] == ["city"]
    assert action.description == "[weather] The weather forecast for a city."
    assert action.role == Role.MEMBER and action.timeout is None
    names = {a.name for a in runtime.actions}
    assert {"weather__fail", "weather__hang", "weather__pid", "weather__read_resource"} <= names


async def test_a_call_through_run_action_returns_the_tools_text(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry()})
    result = await call(runtime, "weather__get_forecast", city="Oslo", days=2)
    assert result.success and result.text == "It is sunny in Oslo for 2 day(s)."
    bad = await call(runtime, "weather__get_forecast", days=2)  # checked against the MCP schema first
    assert not bad.success and "'city' is a required property" in (bad.error or "")


async def test_an_error_result_is_a_failed_action_with_the_servers_text(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry()})
    result = await call(runtime, "weather__fail", reason="no sky")
    assert not result.success and "cannot do that: no sky" in (result.error or "")


async def test_non_text_content_is_named_not_inlined(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry()})
    result = await call(runtime, "weather__picture")
    assert result.text == "a red dot\n[image]"


async def test_resources_are_listed_and_readable(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry()})
    action = runtime.find_action("weather__read_resource")
    assert action is not None and "today (note://today)" in action.description
    result = await call(runtime, "weather__read_resource", uri="note://today")
    assert result.success and result.text == "Buy milk."
    missing = await call(runtime, "weather__read_resource", uri="note://nope")
    assert not missing.success and missing.error


async def test_streamable_http_server_with_headers(start_mcp: Start, http_server: HttpMcpServer) -> None:
    runtime = await start_mcp({"remote": http_server.entry()})
    result = await call(runtime, "remote__get_forecast", city="Bergen")
    assert result.text == "It is sunny in Bergen for 1 day(s)."


async def test_sse_server_tools_and_resources(start_mcp: Start) -> None:
    """The older SSE transport (plugin-mcp's "type": "sse") against the SDK's own SSE server."""
    server = HttpMcpServer(transport="sse")
    await server.start()
    try:
        runtime = await start_mcp({"legacy": server.entry()})
        result = await call(runtime, "legacy__get_forecast", city="Tromsø")
        assert result.text == "It is sunny in Tromsø for 1 day(s)."
        note = await call(runtime, "legacy__read_resource", uri="note://today")
        assert note.success and note.text
    finally:
        server.stop()


async def test_role_from_config_is_enforced(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry(), "admin": stdio_entry(role="admin")})
    refused = await call(runtime, "weather__get_forecast", role=Role.VISITOR, city="Oslo")
    assert not refused.success and refused.error == refusal(Role.MEMBER) and refused.data["refused"]
    assert (await call(runtime, "weather__get_forecast", role=Role.MEMBER, city="Oslo")).success
    assert not (await call(runtime, "admin__get_forecast", role=Role.MEMBER, city="Oslo")).success
    assert (await call(runtime, "admin__get_forecast", role=Role.ADMIN, city="Oslo")).success


async def test_a_hung_call_times_out_is_cancelled_on_the_server_and_the_session_survives(
        start_mcp: Start, tmp_path: Path) -> None:
    marker = tmp_path / "hang.log"
    runtime = await start_mcp({"weather": stdio_entry(timeout=0.5, env={"FAKE_MCP_MARKER": str(marker)})})
    assert runtime.find_action("weather__hang").timeout == 0.5
    started = time.monotonic()
    result = await call(runtime, "weather__hang")
    assert not result.success and result.error == "weather__hang took too long and was stopped"
    assert time.monotonic() - started < 3
    await eventually(lambda: marker.exists() and "cancelled" in marker.read_text(), what="the server's cancel")
    assert (await call(runtime, "weather__get_forecast", city="Oslo")).success


async def test_a_failing_server_is_one_warning_and_the_others_work(
        start_mcp: Start, http_server: HttpMcpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    model = ScriptedModel()
    model.script(ModelType.TEXT_LARGE, xml_reply("Hello there."))
    runtime = await start_mcp({"broken": {"type": "stdio", "command": "/nonexistent/mcp-server"},
                               "remote": http_server.entry()}, model)
    [warning] = warnings_about(caplog, "broken")
    assert warning.exc_info is None and "No such file or directory" in warning.getMessage()
    assert "retrying every 0.3 s" in warning.getMessage()
    assert not [a for a in runtime.actions if a.name.startswith("broken__")]
    assert (await call(runtime, "remote__get_forecast", city="Oslo")).success
    chat = make_chat(runtime)
    await chat.send("hi")
    assert [c.text for c in chat.sent] == ["Hello there."]
    await eventually(lambda: any("still unavailable" in r.getMessage() for r in caplog.records), what="a retry")
    assert len(warnings_about(caplog, "broken")) == 1  # retries that fail again are DEBUG


async def test_a_server_that_comes_back_is_reconnected_and_a_lost_one_withdrawn(
        start_mcp: Start, caplog: pytest.LogCaptureFixture) -> None:
    server = HttpMcpServer()
    try:
        runtime = await start_mcp({"later": server.entry()}, mcp_timeout=5)
        assert runtime.find_action("later__get_forecast") is None
        assert len(warnings_about(caplog, "later")) == 1
        await server.start()
        await eventually(lambda: runtime.find_action("later__get_forecast") is not None, what="the reconnect")
        assert (await call(runtime, "later__get_forecast", city="Oslo")).success
        server.stop()
        await eventually(lambda: runtime.find_action("later__get_forecast") is None, what="the withdrawal")
        assert any("disconnected" in r.getMessage() for r in warnings_about(caplog, "later"))
        await server.start()
        await eventually(lambda: runtime.find_action("later__get_forecast") is not None, what="the second reconnect")
        assert (await call(runtime, "later__get_forecast", city="Rome")).text == "It is sunny in Rome for 1 day(s)."
    finally:
        server.stop()


async def test_a_stdio_server_that_dies_is_withdrawn_at_once(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry()}, mcp_reconnect_seconds=60)
    first = int((await call(runtime, "weather__pid")).text or 0)
    os.kill(first, signal.SIGKILL)
    # The end of its stdout is noticed at once, long before the 60 s health check.
    await eventually(lambda: runtime.find_action("weather__pid") is None, what="the withdrawal")
    assert not service(runtime).servers["weather"].connected


async def test_a_stdio_server_that_dies_is_started_again(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry()})
    first = (await call(runtime, "weather__pid")).text
    os.kill(int(first or 0), signal.SIGKILL)
    await eventually(lambda: runtime.find_action("weather__pid") is None, what="the withdrawal")
    await eventually(lambda: runtime.find_action("weather__pid") is not None, what="the restart")
    second = (await call(runtime, "weather__pid")).text
    assert second and second != first


async def test_stop_ends_the_stdio_server_process(start_mcp: Start) -> None:
    runtime = await start_mcp({"weather": stdio_entry(), "other": stdio_entry()})
    pids = [int((await call(runtime, f"{name}__pid")).text or 0) for name in ("weather", "other")]
    assert all(alive(pid) for pid in pids)
    await runtime.stop()
    assert not any(alive(pid) for pid in pids)
    assert runtime.find_action("weather__pid") is None


async def test_start_up_does_not_wait_longer_than_the_connect_timeout(
        start_mcp: Start, caplog: pytest.LogCaptureFixture) -> None:
    silent = {"type": "stdio", "command": sys.executable, "args": ["-c", "import time; time.sleep(60)"]}
    started = time.monotonic()
    runtime = await start_mcp({"silent": silent, "weather": stdio_entry()}, mcp_timeout=3)
    assert time.monotonic() - started < 3 + 1
    assert runtime.find_action("weather__get_forecast") is not None  # started concurrently, not after
    await eventually(lambda: bool(warnings_about(caplog, "silent")), what="the timeout warning")
    [warning] = warnings_about(caplog, "silent")
    assert "no answer within 3 s" in warning.getMessage()


async def test_start_up_waits_at_most_a_few_seconds_for_a_slow_server(
        start_mcp: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A server slower than STARTUP_WAIT (an `npx` download, say) keeps connecting after start-up
    and is not cut off before MCP_TIMEOUT."""
    from plugins.mcp import service

    monkeypatch.setattr(service, "STARTUP_WAIT", 0.2)
    slow = {"type": "stdio", "command": sys.executable,
            "args": ["-c", f"import time, runpy, sys; time.sleep(1.5); sys.argv = ['x', 'stdio']; "
                           f"runpy.run_path({str(FAKE_SERVER)!r}, run_name='__main__')"]}
    started = time.monotonic()
    runtime = await start_mcp({"slow": slow}, mcp_timeout=20)
    assert time.monotonic() - started < 1.5 and runtime.find_action("slow__get_forecast") is None
    await eventually(lambda: runtime.find_action("slow__get_forecast") is not None, what="the late tools")
    assert not warnings_about(caplog, "slow")


async def test_secrets_in_env_and_headers_are_never_logged(
        start_mcp: Start, http_server: HttpMcpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env_secret, header_secret = "env-secret-value-42", "header-secret-value-43"
    runtime = await start_mcp({
        "weather": stdio_entry(env={"WEATHER_TOKEN": env_secret}),
        "remote": {**http_server.entry(), "headers": {"X-Api-Key": header_secret}},  # the wrong key: 401
    })
    has_env = await runtime.run_action("weather__has_env", message(runtime), State(), role=Role.MEMBER,
                                       parameters={"name": "WEATHER_TOKEN"})
    assert has_env[1].text == "yes"
    [warning] = warnings_about(caplog, "remote")
    assert "unavailable" in warning.getMessage()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "weather" in logged and env_secret not in logged and header_secret not in logged


async def test_debug_log_names_connected_servers_and_their_tools(
        start_mcp: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plugins.mcp")
    await start_mcp({"weather": stdio_entry()})
    [line] = [r.getMessage() for r in caplog.records if "connected" in r.getMessage()]
    assert line.startswith("MCP server weather connected (stdio); tools: get_forecast, fail, hang")


async def test_xml_pipeline_calls_an_mcp_tool_and_the_model_reads_the_result(start_mcp: Start) -> None:
    model = ScriptedModel()
    model.script(ModelType.TEXT_LARGE,
                 '<response><actions>weather__get_forecast</actions>'
                 '<params>{"weather__get_forecast": {"city": "Oslo"}}</params><text>checking</text></response>',
                 '<response><actions>REPLY</actions><text>It is sunny</text></response>')
    runtime = await start_mcp({"weather": stdio_entry(role="visitor")}, model)
    chat = make_chat(runtime)
    await chat.send("weather in Oslo?")
    first, second = model.prompts(ModelType.TEXT_LARGE)
    assert "weather__get_forecast" in first
    assert '- weather__get_forecast {"city":"Oslo"} → It is sunny in Oslo for 1 day(s).' in second
    assert [c.text for c in chat.sent] == ["It is sunny"]


async def test_a_key_in_the_url_or_headers_never_reaches_the_process_log(
        start_mcp: Start, http_server: HttpMcpServer, tmp_path: Path, restore_logging: None) -> None:
    """With the process's own logging at DEBUG, and the MCP SDK's HTTP client turned up to DEBUG
    too, a key in an MCP server's URL query or headers is masked in every line written."""
    configure_logging(make_settings(tmp_path, log_level="DEBUG"))
    [handler] = logging.getLogger().handlers
    output = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(output)
    for name in ("httpx2", "mcp"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    query_key = "query-secret-value-777"
    entry = {**http_server.entry(), "url": f"{http_server.url}?api_key={query_key}"}
    runtime = await start_mcp({"remote": entry})
    assert (await call(runtime, "remote__get_forecast", city="Oslo")).success
    logging.getLogger("httpx2").debug("HTTP Request: POST %s", entry["url"])
    text = output.getvalue()
    assert "MCP server remote connected" in text and "api_key=***" in text  # written, and masked
    assert query_key not in text and "test-api-key-123" not in text
