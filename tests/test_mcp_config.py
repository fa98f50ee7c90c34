"""MCP configuration: elizaOS plugin-mcp's shape in the character and the MCP_SERVERS file; each
mistake is one line naming the server or file and the fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bot.permissions import Role
from bot.settings import SettingsError
from plugins.features import FEATURES
from plugins.mcp import create_plugin
from plugins.mcp.config import configured_servers
from tests.runtime_helpers import make_character, make_settings

WEATHER = {"type": "stdio", "command": "npx", "args": ["-y", "weather-mcp"], "env": {"TOKEN": "secret-token-1"}}
SEARCH = {"type": "streamable-http", "url": "https://example.com/mcp", "headers": {"Authorization": "Bearer s3cret"}}


def operator_file(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_the_plugin_is_a_listed_feature_and_absent_without_servers(tmp_path: Path) -> None:
    assert "plugins.mcp" in FEATURES
    assert create_plugin(make_settings(tmp_path), make_character()) is None
    assert create_plugin(make_settings(tmp_path), make_character(settings={"mcp": {"servers": {}}})) is None


def test_character_servers_in_elizaos_shape(tmp_path: Path) -> None:
    character = make_character(settings={"mcp": {"servers": {
        "weather": WEATHER, "search": {**SEARCH, "role": "admin", "timeout": 5}, "legacy": {"type": "sse", "url": "http://h/sse"},
    }}})
    weather, search, legacy = configured_servers(make_settings(tmp_path), character)
    assert (weather.name, weather.type, weather.command, weather.args) == ("weather", "stdio", "npx", ("-y", "weather-mcp"))
    assert weather.env == {"TOKEN": "secret-token-1"} and weather.role == Role.MEMBER and weather.timeout is None
    assert (search.type, search.url, search.role, search.timeout) == ("streamable-http", SEARCH["url"], Role.ADMIN, 5.0)
    assert legacy.type == "sse"
    assert "secret-token-1" not in repr(weather) and "s3cret" not in repr(search)


def test_a_missing_type_is_inferred(tmp_path: Path) -> None:
    character = make_character(settings={"mcp": {"servers": {"a": {"command": "srv"}, "b": {"url": "http://h/mcp"}}}})
    assert [s.type for s in configured_servers(make_settings(tmp_path), character)] == ["stdio", "streamable-http"]


@pytest.mark.parametrize("data", [{"servers": {"weather": WEATHER}}, {"weather": WEATHER}])
def test_operator_file_with_or_without_the_servers_key(tmp_path: Path, data: dict) -> None:
    settings = make_settings(tmp_path, mcp_servers=operator_file(tmp_path, data))
    [server] = configured_servers(settings, make_character())
    assert server.name == "weather" and server.command == "npx"


def test_the_operator_file_wins_over_a_character_entry_of_the_same_name(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mcp_servers=operator_file(tmp_path, {"weather": {**WEATHER, "command": "mine"}}))
    character = make_character(settings={"mcp": {"servers": {"weather": WEATHER, "search": SEARCH}}})
    assert {s.name: s.command for s in configured_servers(settings, character)} == {"weather": "mine", "search": ""}


@pytest.mark.parametrize(("data", "expected"), [
    ("{not json", 'not valid JSON'),
    ([1, 2], "expected an object of servers"),
    ({"weather": {"type": "stdio"}}, "server 'weather': a stdio server needs a \"command\""),
    ({"weather": {"type": "websocket", "url": "ws://h"}}, "server 'weather': unknown \"type\" 'websocket'; use one of"),
    ({"search": {"type": "sse"}}, "server 'search': a sse server needs an http(s) \"url\""),
    ({"weather": {**WEATHER, "role": "boss"}}, "unknown \"role\" 'boss'; use one of visitor, member, admin, owner"),
    ({"weather": {**WEATHER, "timeout": -1}}, '"timeout" must be a number of seconds above 0'),
    ({"weather": {**WEATHER, "env": {"TOKEN": ["x"]}}}, '"env" must be an object of strings'),
])
def test_a_bad_operator_file_is_one_settings_error_line(tmp_path: Path, data: object, expected: str) -> None:
    path = operator_file(tmp_path, data)
    with pytest.raises(SettingsError) as caught:
        create_plugin(make_settings(tmp_path, mcp_servers=path), make_character())
    line = str(caught.value)
    assert line.startswith(f"MCP_SERVERS ({path}): ") and expected in line and "\n" not in line
    assert "secret-token-1" not in line


def test_an_unreadable_operator_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"MCP_SERVERS \(.*missing.json\): cannot read it .*Fix: "):
        create_plugin(make_settings(tmp_path, mcp_servers=tmp_path / "missing.json"), make_character())


def test_a_bad_character_entry_is_one_warning_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    character = make_character(settings={"mcp": {"servers": {
        "weather": WEATHER, "broken": {"type": "stdio", "env": {"TOKEN": "secret-token-2"}}, "odd": {"type": "ftp"},
    }}})
    plugin = create_plugin(make_settings(tmp_path), character)
    assert plugin is not None
    assert [s.name for s in plugin.services[0].configs] == ["weather"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        'character settings.mcp.servers.broken: a stdio server needs a "command", e.g. {"type": "stdio", '
        '"command": "npx", "args": ["-y", "some-mcp-server"]}; that server is skipped',
        "character settings.mcp.servers.odd: unknown \"type\" 'ftp'; use one of stdio, streamable-http, sse; "
        "that server is skipped",
    ]


def test_a_character_servers_value_that_is_not_an_object_is_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert create_plugin(make_settings(tmp_path), make_character(settings={"mcp": {"servers": ["weather"]}})) is None
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("character settings.mcp.servers must be an object of servers")
