"""The MCP service: every configured server connects concurrently when the runtime starts.

Start-up waits for the servers' first attempts at most STARTUP_WAIT seconds (or MCP_TIMEOUT if
shorter), so the first messages usually find the tools while a slow or broken server never holds
the bot back long: its attempt goes on in the background (up to MCP_TIMEOUT, then one warning),
and its tools appear when it connects.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar

from bot.plugin import Service

from .client import McpServer
from .config import ServerConfig

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

STARTUP_WAIT = 5.0


class McpService(Service):
    """Owns one `McpServer` per configured server (see `service_for`)."""

    service_type = "mcp"
    configs: ClassVar[tuple[ServerConfig, ...]] = ()

    def __init__(self, runtime: AgentRuntime) -> None:
        super().__init__(runtime)
        self.servers = {config.name: McpServer(config, runtime) for config in self.configs}

    async def start(self) -> None:
        for server in self.servers.values():
            server.start()
        waits = [asyncio.create_task(server.attempted.wait()) for server in self.servers.values()]
        _, pending = await asyncio.wait(waits, timeout=min(self.runtime.settings.mcp_timeout, STARTUP_WAIT))
        for wait in pending:
            wait.cancel()

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers.values()))


def service_for(configs: list[ServerConfig]) -> type[McpService]:
    """The service class for these servers: the runtime builds services from classes alone."""
    return type("McpService", (McpService,), {"configs": tuple(configs)})
