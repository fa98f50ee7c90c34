"""elizaOS 1.7's agents, server and memory routes (filled in by the elizaOS API work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .api import RestApi
from .openapi import Operation

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime


class ElizaApi:
    def __init__(self, runtime: AgentRuntime, rest: RestApi) -> None:
        self.runtime, self.rest = runtime, rest

    def operations(self) -> list[Operation]:
        return []
