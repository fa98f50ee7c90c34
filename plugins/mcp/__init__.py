"""MCP servers as tools (issue #11): each configured server's tools become actions named
`<server>__<tool>`, and its resources are readable through `<server>__read_resource`.

Servers come from the character's `settings.mcp.servers` and the operator's MCP_SERVERS file
(see config.py); nothing loads when neither names a server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.character import Character
from bot.logging_setup import mask_secrets
from bot.plugin import Plugin, Priority
from bot.settings import Settings

from .config import ServerConfig, configured_servers

if TYPE_CHECKING:
    from .service import McpService


def create_plugin(settings: Settings, character: Character) -> Plugin | None:
    """The MCP plugin, or None when no server is configured; a bad MCP_SERVERS file raises SettingsError."""
    servers = configured_servers(settings, character)
    if not servers:
        return None
    # The MCP SDK (Starlette, uvicorn, OpenTelemetry...) takes ~28 MB: imported only when a server is set.
    from .service import service_for

    mask_secrets(secret for server in servers for secret in server.secrets)
    return Plugin(name="mcp", description="MCP servers' tools and resources as actions",
                  priority=Priority.FEATURE, services=[service_for(servers)])


def __getattr__(name: str) -> Any:
    """`McpService` on first access, so importing this package does not import the SDK."""
    if name == "McpService":
        from .service import McpService

        return McpService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["McpService", "ServerConfig", "create_plugin"]
