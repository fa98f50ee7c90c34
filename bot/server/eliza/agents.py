"""elizaOS 1.7's agents and server routes, shaped as `@elizaos/api-client` reads them; the memory
routes are in `memory`.

Agents answer in elizaOS's envelope, `{"success": true, "data": ...}` (the client returns `data`,
and reads `error.code`/`error.message` from a failure); the server routes answer bare JSON (the
client returns the body as is). One agent runs per process, so it is always "active".

What elizaOS does and parley does not (create, change, stop or delete agents, worlds, panels, logs,
message-server groups) is listed in `UNSUPPORTED`: each such route answers one 409 NOT_SUPPORTED
that says what to do instead, rather than a bare 404 or 405. 409, "conflicts with how the server
runs", because the request is fine and the server is not broken (not 501: every 5xx reads as a
fault), and an unknown route or id keeps 404 and bad input 400 to themselves.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Literal

from aiohttp import web
from pydantic import ConfigDict, Field

from bot.types import now_ms

from ..api import RestApi
from ..app import json_response
from ..errors import ApiError
from ..models import ErrorInfo, IsoTime
from ..openapi import Operation
from ..sessions import SessionManager
from .memory import AGENT_PARAM, ElizaMemoryApi, agent_schema, is_uuid
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


class ElizaAgentStarted(CamelModel):
    id: uuid.UUID
    name: str
    status: AgentStatus = "active"


class ElizaAgentListResponse(Envelope):
    data: ElizaAgentList


class ElizaAgentResponse(Envelope):
    data: ElizaAgent


class ElizaAgentStartedResponse(Envelope):
    data: ElizaAgentStarted


# Server ----------------------------------------------------------------------------------------------
class ElizaPing(CamelModel):
    pong: Literal[True] = True
    timestamp: int = Field(description="Now, in ms.")


class ElizaHello(CamelModel):
    message: str


class ElizaServerStatus(CamelModel):
    status: Literal["ok"] = "ok"
    agent_count: int
    timestamp: IsoTime = Field(description="Now, ISO 8601.")


class ElizaDependencies(CamelModel):
    agents: Literal["healthy"] = "healthy"
    database: Literal["healthy", "unavailable"]


class ElizaServerHealth(CamelModel):
    status: Literal["OK", "DEGRADED"]
    version: str
    timestamp: IsoTime = Field(description="Now, ISO 8601.")
    dependencies: ElizaDependencies


class ElizaDegradedHealth(ElizaServerHealth):
    """The 503 answer: the health fields plus the error envelope, so the client's ApiError says why."""

    success: Literal[False] = False
    error: ErrorInfo


# What parley does not do ------------------------------------------------------------------------------
_ONE_AGENT = "parley runs one agent, its character, for the life of the process"
_NO_LOGS = "parley writes its log to stderr (LOG_LEVEL sets how much) and keeps none to read or clear here"
_NO_WORLDS = ("parley does not manage worlds over the API; a room's world is in GET "
              "/api/memory/{agentId}/rooms/{roomId} (worldId, worldName)")
_NO_GROUPS = ("parley has no message servers to group rooms by: create a room with POST /api/memory/{agentId}/rooms "
              "and clear one with DELETE /api/memory/{agentId}/memories/all/{roomId}")
# (method, path, operation id, why not and what to do instead); GET /api/agents/worlds is get_agent's
# path, so get_agent answers it (a route of its own would make aiohttp's Allow header list both).
UNSUPPORTED: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/api/agents", "create_agent", f"{_ONE_AGENT}: to run another agent, start another parley with "
     "its own CHARACTER_PATH"),
    ("PATCH", "/api/agents/{agent_id}", "update_agent", f"{_ONE_AGENT}: edit its character file (CHARACTER_PATH) "
     "and restart"),
    ("DELETE", "/api/agents/{agent_id}", "delete_agent", f"{_ONE_AGENT}: stop the process to stop the agent"),
    ("POST", "/api/agents/{agent_id}/stop", "stop_agent", f"{_ONE_AGENT}: stop the process (SIGTERM) to stop "
     "the agent"),
    ("POST", "/api/agents/{agent_id}/worlds", "add_agent_to_world", _NO_WORLDS),
    ("PATCH", "/api/agents/{agent_id}/worlds/{world_id}", "update_agent_world_settings", _NO_WORLDS),
    ("GET", "/api/agents/{agent_id}/panels", "get_agent_panels", "parley has no plugin panels"),
    ("GET", "/api/agents/{agent_id}/logs", "get_agent_logs", _NO_LOGS),
    ("DELETE", "/api/agents/{agent_id}/logs/{log_id}", "delete_agent_log", _NO_LOGS),
    ("POST", "/api/server/stop", "stop_server", "stop the process (SIGTERM) to stop the server: parley does not "
     "stop on a request"),
    ("GET", "/api/server/logs", "get_server_logs", _NO_LOGS),
    ("POST", "/api/server/logs", "submit_server_logs", _NO_LOGS),
    ("DELETE", "/api/server/logs", "clear_server_logs", _NO_LOGS),
    ("POST", "/api/memory/groups/{server_id}", "create_world_from_message_server", _NO_GROUPS),
    ("DELETE", "/api/memory/groups/{server_id}", "delete_world", _NO_GROUPS),
    ("DELETE", "/api/memory/groups/{server_id}/memories", "clear_world_memories", _NO_GROUPS),
)


def not_supported(message: str) -> ApiError:
    return ApiError(409, "NOT_SUPPORTED", message)


def _refusal(name: str, message: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of an unsupported route; named, since an operation's id is its handler's name."""
    async def refuse(request: web.Request) -> web.Response:
        raise not_supported(message)
    refuse.__name__ = name
    return refuse


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
        """The running agent named by the path: its id, its name or "default". As in elizaOS, another
        UUID is 404 NOT_FOUND and anything else 400 INVALID_ID."""
        raw = request.match_info["agent_id"]
        if is_uuid(raw):
            if uuid.UUID(raw) == self.runtime.agent_id:
                return self.runtime.agent_id
            raise ApiError(404, "NOT_FOUND", "Agent not found")
        try:
            return self.rest.resolve_agent(raw)
        except ApiError:
            raise ApiError(400, "INVALID_ID", "Invalid agent ID format: use the agent's id (a UUID), its name "
                           "or 'default'") from None

    # Agents ------------------------------------------------------------------------------------------
    async def list_agents(self, request: web.Request) -> web.Response:
        character = self.runtime.character
        summary = ElizaAgentSummary(id=self.runtime.agent_id, name=character.name, character_name=character.name,
                                    bio=next(iter(character.bio_lines), ""))
        return json_response(ElizaAgentListResponse(data=ElizaAgentList(agents=[summary])))

    async def get_agent(self, request: web.Request) -> web.Response:
        if request.match_info["agent_id"] == "worlds":  # elizaOS's getWorlds
            raise not_supported(_NO_WORLDS)
        agent_id = self.agent(request)
        stored = await self.runtime.store.get_agent(agent_id)
        created_at = stored.created_at if stored is not None else self.loaded_at
        public = {**self.runtime.character.public_dict(), "id": agent_id, "enabled": True, "status": "active",
                  "createdAt": created_at, "updatedAt": max(created_at, self.loaded_at)}
        return json_response(ElizaAgentResponse(data=ElizaAgent.model_validate(public)))

    async def start_agent(self, request: web.Request) -> web.Response:
        """The agent runs whenever the API answers, so starting it finds it active, as elizaOS answers
        for an agent that already runs."""
        agent_id = self.agent(request)
        return json_response(ElizaAgentStartedResponse(data=ElizaAgentStarted(id=agent_id,
                                                                              name=self.runtime.character.name)))

    # Server ------------------------------------------------------------------------------------------
    async def server_ping(self, request: web.Request) -> web.Response:
        return json_response(ElizaPing(timestamp=now_ms()))

    async def server_hello(self, request: web.Request) -> web.Response:
        return json_response(ElizaHello(message="Hello World!"))

    async def server_status(self, request: web.Request) -> web.Response:
        return json_response(ElizaServerStatus(agent_count=1, timestamp=datetime.now(UTC)))

    async def _database_answers(self) -> bool:
        try:
            return await asyncio.wait_for(self.runtime.store.ping(), PING_TIMEOUT)
        except Exception:  # a hung or broken database is simply "unavailable"; /ready tells more
            return False

    async def server_health(self, request: web.Request) -> web.Response:
        """200 "OK" while the agent runs and its database answers; 503 "DEGRADED" (an error) when it does not."""
        if await self._database_answers():
            return json_response(ElizaServerHealth(status="OK", version=_version(), timestamp=datetime.now(UTC),
                                                   dependencies=ElizaDependencies(database="healthy")))
        degraded = ElizaDegradedHealth(
            status="DEGRADED", version=_version(), timestamp=datetime.now(UTC),
            dependencies=ElizaDependencies(database="unavailable"),
            error=ErrorInfo(code="DEGRADED", message="the database does not answer; see /ready"))
        return json_response(degraded, status=503)

    def operations(self) -> list[Operation]:
        bare = "Bare JSON, as elizaOS answers it."
        agent = {"agent_id": agent_schema(self.runtime.character.name)}
        return [
            Operation("GET", "/api/agents", self.list_agents, "List agents (elizaOS)", "agents",
                      {200: ElizaAgentListResponse}, links={
                          "GetAgent": ("get_agent", {"agent_id": "$response.body#/data/agents/0/id"}),
                          **self.memory.links("$response.body#/data/agents/0/id")}),
            Operation("GET", "/api/agents/{agent_id}", self.get_agent, "Get an agent: its character's public "
                      "fields at the top level (elizaOS)", "agents", {200: ElizaAgentResponse}, errors=[400, 404, 409],
                      path_params=AGENT_PARAM, links=self.memory.links("$response.body#/data/id"),
                      path_schemas=agent, description="GET /api/agents/worlds (elizaOS's getWorlds) answers 409 "
                      f"NOT_SUPPORTED: {_NO_WORLDS}."),
            Operation("POST", "/api/agents/{agent_id}/start", self.start_agent, "Start the agent: it already runs "
                      "(elizaOS)", "agents", {200: ElizaAgentStartedResponse}, errors=[400, 404],
                      path_params=AGENT_PARAM, path_schemas=agent),
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
            *(Operation(method, path, _refusal(name, message), "Not supported (elizaOS's route)", "unsupported",
                        {}, errors=[409], description=f"Answers 409 NOT_SUPPORTED: {message}.",
                        path_params=AGENT_PARAM, path_schemas=agent)
              for method, path, name, message in UNSUPPORTED),
        ]
