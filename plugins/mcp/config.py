"""MCP server configuration: the character's `settings.mcp.servers` and the operator's MCP_SERVERS file.

Both use elizaOS plugin-mcp's shape, so a character written for elizaOS works unchanged:

    {"weather": {"type": "stdio", "command": "npx", "args": ["-y", "weather-mcp"], "env": {"KEY": "..."}},
     "search": {"type": "streamable-http", "url": "https://example.com/mcp", "headers": {"Authorization": "..."}}}

Two keys are parley's own: `role`, the least role that may call the server's tools (default member:
an external tool acts outside the asker's conversation), and `timeout`, seconds per call. A missing
`type` is inferred (a `command` means stdio, a `url` streamable HTTP), as Claude Desktop configs omit it.

`env` and `headers` often hold tokens: nothing here puts their values into a message.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bot.character import Character
from bot.permissions import Role
from bot.settings import Settings, SettingsError

log = logging.getLogger(__name__)

TYPES = ("stdio", "streamable-http", "sse")
ROLES = {role.name.lower(): role for role in Role}
_EXAMPLE_STDIO = '{"type": "stdio", "command": "npx", "args": ["-y", "some-mcp-server"]}'
_EXAMPLE_HTTP = '{"type": "streamable-http", "url": "https://host/mcp"}'


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server as configured; `env` and `headers` are secrets and never logged."""

    name: str
    type: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    role: Role = Role.MEMBER
    timeout: float | None = None

    @property
    def secrets(self) -> list[str]:
        """Values that must never reach a log line (an error message may quote them): env and
        header values, and the query values of the URL (hosted servers often take ?api_key=)."""
        query = [value for _, value in parse_qsl(urlsplit(self.url).query)] if self.url else []
        return [v for v in (*self.env.values(), *self.headers.values(), *query) if len(v) >= 4]


class ConfigProblem(ValueError):
    """One server entry that cannot be used; the message says what is wrong and the fix."""


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str | int | float | bool) for v in value.values()):
        raise ConfigProblem(f'"{what}" must be an object of strings, e.g. {{"NAME": "value"}}')
    return {str(k): str(v) for k, v in value.items()}


def parse_server(name: str, entry: Any) -> ServerConfig:
    """One entry of the servers mapping, or ConfigProblem naming the fix (never quoting env or headers)."""
    if not isinstance(entry, dict):
        raise ConfigProblem(f"must be an object such as {_EXAMPLE_STDIO}")
    kind = entry.get("type") or ("stdio" if "command" in entry else "streamable-http" if "url" in entry else "")
    if kind == "http":  # elizaOS accepts this spelling of streamable HTTP
        kind = "streamable-http"
    if kind not in TYPES:
        raise ConfigProblem(f'unknown "type" {str(kind)[:40]!r}; use one of {", ".join(TYPES)}')
    role_name = str(entry.get("role", "member")).lower()
    if role_name not in ROLES:
        raise ConfigProblem(f'unknown "role" {role_name[:20]!r}; use one of {", ".join(ROLES)}')
    timeout = entry.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigProblem('"timeout" must be a number of seconds above 0')
    common: dict[str, Any] = {"name": name, "type": kind, "role": ROLES[role_name],
                              "timeout": float(timeout) if timeout is not None else None}
    if kind == "stdio":
        command, args = entry.get("command"), entry.get("args", [])
        if not isinstance(command, str) or not command.strip():
            raise ConfigProblem(f'a stdio server needs a "command", e.g. {_EXAMPLE_STDIO}')
        if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
            raise ConfigProblem('"args" must be a list of strings')
        cwd = entry.get("cwd")
        return ServerConfig(**common, command=command, args=tuple(str(a) for a in args),
                            env=_strings(entry.get("env"), "env"), cwd=str(cwd) if cwd else None)
    url = entry.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigProblem(f'a {kind} server needs an http(s) "url", e.g. {_EXAMPLE_HTTP}')
    return ServerConfig(**common, url=url, headers=_strings(entry.get("headers"), "headers"))


def _mapping(data: Any) -> Any:
    """The servers mapping, from `{"servers": {...}}` or the bare mapping."""
    if isinstance(data, dict) and isinstance(data.get("servers"), dict):
        return data["servers"]
    return data


def load_operator_file(path: Path) -> dict[str, ServerConfig]:
    """The MCP_SERVERS file; any problem is a SettingsError, one line naming the file and the fix."""
    where = f"MCP_SERVERS ({path})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SettingsError(f"{where}: cannot read it ({error.strerror or error}). "
                            "Fix: point MCP_SERVERS at a readable JSON file or leave it empty") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SettingsError(f"{where}: not valid JSON ({error}). "
                            f'Fix: write {{"servers": {{"name": {_EXAMPLE_STDIO}}}}}') from None
    servers = _mapping(data)
    if not isinstance(servers, dict):
        raise SettingsError(f'{where}: expected an object of servers. Fix: write {{"servers": {{"name": '
                            f"{_EXAMPLE_STDIO}}}}}")
    configs = {}
    for name, entry in servers.items():
        try:
            configs[name] = parse_server(str(name), entry)
        except ConfigProblem as problem:
            raise SettingsError(f"{where}: server {name!r}: {problem}") from None
    return configs


def character_servers(character: Character) -> dict[str, ServerConfig]:
    """The character's `settings.mcp.servers`; a bad entry is one warning and is skipped."""
    mcp = character.settings.get("mcp")
    servers = mcp.get("servers") if isinstance(mcp, dict) else mcp
    if servers is None:
        return {}
    if not isinstance(servers, dict):
        log.warning("character settings.mcp.servers must be an object of servers; MCP is off for this "
                    "character. Fix: write \"mcp\": {\"servers\": {\"name\": %s}}", _EXAMPLE_STDIO)
        return {}
    configs = {}
    for name, entry in servers.items():
        try:
            configs[str(name)] = parse_server(str(name), entry)
        except ConfigProblem as problem:
            log.warning("character settings.mcp.servers.%s: %s; that server is skipped", name, problem)
    return configs


def configured_servers(settings: Settings, character: Character) -> list[ServerConfig]:
    """Every configured server; the operator's file wins over a character entry of the same name."""
    servers = character_servers(character)
    if settings.mcp_servers is not None:
        servers.update(load_operator_file(settings.mcp_servers))
    return list(servers.values())
