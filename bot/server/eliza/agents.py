"""elizaOS 1.7's agents and server routes, shaped as `@elizaos/api-client` reads them; the memory
routes are in `memory`.

Agents answer in elizaOS's envelope, `{"success": true, "data": ...}` (the client returns `data`,
and reads `error.code`/`error.message` from a failure); the server routes answer bare JSON (the
client returns the body as is). One agent runs per process, so it is always "active".
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Literal

from aiohttp import web
from pydantic import ConfigDict, Field

from bot.types import now_ms

from ..api import RestApi
from ..app import json_response
from ..errors import ApiError
from ..models import ErrorInfo
from ..openapi import Operation
from ..sessions import SessionManager
from .memory import AGENT_PARAM, AGENT_SCHEMA, ElizaMemoryApi
from .wire import CamelModel, Envelope

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

PING_TIMEOUT = 3.0


# Agents ----------------------------------------------------------------------------------------------
AgentStatus = Literal["active"]  # the process's one agent runs whenever the API answers


class ElizaAgentSummary(CamelModel):
    id: uuid.UUID
    name: str
    character_name: str
    bio: str = Field(description="The first line of the character's bio.")
    status: AgentStatus = "active"


class ElizaAgentList(CamelModel):
    agents: list[ElizaAgentSummary]


class ElizaAgent(CamelModel):
    """The character's public fields at the top level (never its secrets or settings), plus the agent's state."""

    model_config = ConfigDict(extra="allow")

    id: uuid.UUID
    name: str
    bio: str | list[str]
    enabled: bool = True
    status: AgentStatus = "active"
    created_at: int = Field(description="When the agent was first stored (ms).")
    updated_at: int = Field(description="When this process stored its character (ms).")


class ElizaAgentListResponse(Envelope):
    data: ElizaAgentList


class ElizaAgentResponse(Envelope):
    data: ElizaAgent


# Server ----------------------------------------------------------------------------------------------
class ElizaPing(CamelModel):
    pong: Literal[True] = True
    timestamp: int = Field(description="Now, in ms.")


class ElizaHello(CamelModel):
    message: str


class ElizaServerStatus(CamelModel):
    status: Literal["ok"] = "ok"
    agent_count: int
    timestamp: str = Field(description="Now, ISO 8601.")


class ElizaDependencies(CamelModel):
    agents: Literal["healthy"] = "healthy"
    database: Literal["healthy", "unavailable"]


class ElizaServerHealth(CamelModel):
    status: Literal["OK", "DEGRADED"]
    version: str
    timestamp: str = Field(description="Now, ISO 8601.")
    dependencies: ElizaDependencies


class ElizaDegradedHealth(ElizaServerHealth):
    """The 503 answer: the health fields plus the error envelope, so the client's ApiError says why."""

    success: Literal[False] = False
    error: ErrorInfo


def iso_now() -> str:
    """Now as JavaScript's toISOString writes it (milliseconds, Z)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _version() -> str:
    try:
        return version("parley")
    except PackageNotFoundError:
        return "unknown"


class ElizaApi:
    def __init__(self, runtime: AgentRuntime, rest: RestApi, sessions: SessionManager) -> None:
        self.runtime, self.rest = runtime, rest
        self.memory = ElizaMemoryApi(runtime, sessions, self.agent)
        self.loaded_at = now_ms()  # the server is built just before the runtime starts and stores its character

    def agent(self, request: web.Request) -> uuid.UUID:
        """The running agent named by the path: its id, its name or "default"; else 404 as elizaOS says it."""
        try:
            return self.rest.resolve_agent(request.match_info["agent_id"])
        except ApiError:
            raise ApiError(404, "NOT_FOUND", "Agent not found") from None

    # Agents ------------------------------------------------------------------------------------------
    async def list_agents(self, request: web.Request) -> web.Response:
        character = self.runtime.character
        summary = ElizaAgentSummary(id=self.runtime.agent_id, name=character.name, character_name=character.name,
                                    bio=next(iter(character.bio_lines), ""))
        return json_response(ElizaAgentListResponse(data=ElizaAgentList(agents=[summary])))

    async def get_agent(self, request: web.Request) -> web.Response:
        agent_id = self.agent(request)
        stored = await self.runtime.store.get_agent(agent_id)
        created_at = stored.created_at if stored is not None else self.loaded_at
        public = {**self.runtime.character.public_dict(), "id": agent_id, "enabled": True, "status": "active",
                  "createdAt": created_at, "updatedAt": max(created_at, self.loaded_at)}
        return json_response(ElizaAgentResponse(data=ElizaAgent.model_validate(public)))

    # Server ------------------------------------------------------------------------------------------
    async def server_ping(self, request: web.Request) -> web.Response:
        return json_response(ElizaPing(timestamp=now_ms()))

    async def server_hello(self, request: web.Request) -> web.Response:
        return json_response(ElizaHello(message="Hello World!"))

    async def server_status(self, request: web.Request) -> web.Response:
        return json_response(ElizaServerStatus(agent_count=1, timestamp=iso_now()))

    async def _database_answers(self) -> bool:
        try:
            return await asyncio.wait_for(self.runtime.store.ping(), PING_TIMEOUT)
        except Exception:  # a hung or broken database is simply "unavailable"; /ready tells more
            return False

    async def server_health(self, request: web.Request) -> web.Response:
        """200 "OK" while the agent runs and its database answers; 503 "DEGRADED" (an error) when it does not."""
        if await self._database_answers():
            return json_response(ElizaServerHealth(status="OK", version=_version(), timestamp=iso_now(),
                                                   dependencies=ElizaDependencies(database="healthy")))
        degraded = ElizaDegradedHealth(
            status="DEGRADED", version=_version(), timestamp=iso_now(),
            dependencies=ElizaDependencies(database="unavailable"),
            error=ErrorInfo(code="DEGRADED", message="the database does not answer; see /ready"))
        return json_response(degraded, status=503)

    def operations(self) -> list[Operation]:
        bare = "Bare JSON, as elizaOS answers it."
        return [
            Operation("GET", "/api/agents", self.list_agents, "List agents (elizaOS)", "agents",
                      {200: ElizaAgentListResponse}, links={
                          "GetAgent": ("get_agent", {"agent_id": "$response.body#/data/agents/0/id"}),
                          **self.memory.links("$response.body#/data/agents/0/id")}),
            Operation("GET", "/api/agents/{agent_id}", self.get_agent, "Get an agent: its character's public "
                      "fields at the top level (elizaOS)", "agents", {200: ElizaAgentResponse}, errors=[404],
                      path_params=AGENT_PARAM, links=self.memory.links("$response.body#/data/id"),
                      path_schemas={"agent_id": AGENT_SCHEMA}),
            Operation("GET", "/api/server/ping", self.server_ping, "Ping (elizaOS)", "server", {200: ElizaPing},
                      description=bare),
            Operation("GET", "/api/server/hello", self.server_hello, "Hello (elizaOS)", "server",
                      {200: ElizaHello}, description=bare),
            Operation("GET", "/api/server/status", self.server_status, "Server status (elizaOS)", "server",
                      {200: ElizaServerStatus}, description=bare),
            Operation("GET", "/api/server/health", self.server_health, "Server health (elizaOS)", "server",
                      {200: ElizaServerHealth}, description=bare + " 503 (an error whose body also carries "
                      "these fields, status DEGRADED) while the database does not answer."),
            *self.memory.operations(),
        ]
