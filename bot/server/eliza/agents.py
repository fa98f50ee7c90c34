"""elizaOS 1.7's agents and server routes, shaped as `@elizaos/api-client` reads them; the memory
routes are in `memory`.

Agents answer in elizaOS's envelope, `{"success": true, "data": ...}` (the client returns `data`,
and reads `error.code`/`error.message` from a failure); the server routes answer bare JSON (the
client returns the body as is). Every character of the process is an agent: "active" while it runs,
"inactive" when an admin stopped it or it failed. An admin starts and stops one as in elizaOS
(`POST /api/agents/{agentId}/start`, `.../stop`); the only agent of a process runs as long as it.

What elizaOS does and parley does not (create, change or delete agents, worlds, panels, logs,
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
from typing import Literal

from aiohttp import web
from pydantic import ConfigDict, Field

from bot.character import Character
from bot.store.base import Store
from bot.types import now_ms

from ..app import json_response
from ..directory import Agents, Hosted
from ..errors import ApiError
from ..models import ErrorInfo, IsoTime
from ..openapi import Operation
from .memory import AGENT_PARAM, ElizaMemoryApi, agent_schema
from .wire import CamelModel, Envelope

PING_TIMEOUT = 3.0


# Agents ----------------------------------------------------------------------------------------------
AgentStatus = Literal["active", "inactive"]  # running, or stopped or failed (`state` says which)
STATE = "parley's own: running, stopped, or failed: <reason>"


class ElizaAgentSummary(CamelModel):
    id: uuid.UUID
    name: str
    character_name: str
    bio: str = Field(description="The first line of the character's bio.")
    status: AgentStatus
    state: str = Field(description=STATE)


class ElizaAgentList(CamelModel):
    agents: list[ElizaAgentSummary]


class ElizaAgent(CamelModel):
    """The character's public fields at the top level (never its secrets or settings), plus the agent's state."""

    model_config = ConfigDict(extra="allow")

    id: uuid.UUID
    name: str
    bio: str | list[str]
    enabled: bool = True
    status: AgentStatus
    state: str = Field(description=STATE)
    created_at: int = Field(description="When the agent was first stored (ms).")
    updated_at: int = Field(description="When this process stored its character (ms).")


class ElizaAgentStarted(CamelModel):
    id: uuid.UUID
    name: str
    status: Literal["active"] = "active"


class ElizaAgentStopped(CamelModel):
    message: Literal["Agent stopped"] = "Agent stopped"


class ElizaAgentListResponse(Envelope):
    data: ElizaAgentList


class ElizaAgentResponse(Envelope):
    data: ElizaAgent


class ElizaAgentStartedResponse(Envelope):
    data: ElizaAgentStarted


class ElizaAgentStoppedResponse(Envelope):
    data: ElizaAgentStopped


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
_CHARACTERS = "parley runs the characters it was started with (CHARACTER_PATH or CHARACTERS)"
_NO_LOGS = "parley writes its log to stderr (LOG_LEVEL sets how much) and keeps none to read or clear here"
_NO_WORLDS = ("parley does not manage worlds over the API; a room's world is in GET "
              "/api/memory/{agentId}/rooms/{roomId} (worldId, worldName)")
_NO_GROUPS = ("parley has no message servers to group rooms by: create a room with POST /api/memory/{agentId}/rooms "
              "and clear one with DELETE /api/memory/{agentId}/memories/all/{roomId}")
# (method, path, operation id, why not and what to do instead); GET /api/agents/worlds is get_agent's
# path, so get_agent answers it (a route of its own would make aiohttp's Allow header list both).
UNSUPPORTED: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/api/agents", "create_agent", f"{_CHARACTERS}: to run another agent, add its character file to "
     "CHARACTERS and restart"),
    ("PATCH", "/api/agents/{agent_id}", "update_agent", f"{_CHARACTERS}: edit its character file and restart"),
    ("DELETE", "/api/agents/{agent_id}", "delete_agent", f"{_CHARACTERS}: stop an agent with POST "
     "/api/agents/{agentId}/stop, or remove its file from CHARACTERS and restart"),
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


def character_of(agent: Hosted) -> Character:
    """The agent's character, also while it has no runtime (it failed to build)."""
    return agent.runtime.character if agent.runtime is not None else agent.config.character  # type: ignore[attr-defined]


def status_of(agent: Hosted) -> AgentStatus:
    return "active" if agent.running else "inactive"


class ElizaApi:
    """The agents and server routes: about every agent of the process, so not dispatched to one."""

    def __init__(self, agents: Agents) -> None:
        self.agents = agents
        self.loaded_at = now_ms()  # the server is built just before the runtimes start and store their characters

    @property
    def store(self) -> Store:
        """The process's one store (every runtime holds it)."""
        return self.agents.primary.runtime.store

    # Agents ------------------------------------------------------------------------------------------
    async def list_agents(self, request: web.Request) -> web.Response:
        summaries = []
        for agent in self.agents.host.agents:
            character = character_of(agent)
            summaries.append(ElizaAgentSummary(id=agent.id, name=character.name, character_name=character.name,
                                               bio=next(iter(character.bio_lines), ""), status=status_of(agent),
                                               state=agent.state))
        return json_response(ElizaAgentListResponse(data=ElizaAgentList(agents=summaries)))

    async def get_agent(self, request: web.Request) -> web.Response:
        if request.match_info["agent_id"] == "worlds":  # elizaOS's getWorlds
            raise not_supported(_NO_WORLDS)
        agent = self.agents.by_path(request.match_info["agent_id"])
        stored = await self.store.get_agent(agent.id)
        created_at = stored.created_at if stored is not None else self.loaded_at
        public = {**character_of(agent).public_dict(), "id": agent.id, "enabled": True, "status": status_of(agent),
                  "state": agent.state, "createdAt": created_at, "updatedAt": max(created_at, self.loaded_at)}
        return json_response(ElizaAgentResponse(data=ElizaAgent.model_validate(public)))

    async def start_agent(self, request: web.Request) -> web.Response:
        """Start a stopped or failed agent with a fresh runtime (its connectors too); one that runs is
        found active, as elizaOS answers. 500 START_ERROR, with the reason, when it fails again."""
        agent = await self.agents.start(self.agents.by_path(request.match_info["agent_id"]))
        if not agent.running:
            raise ApiError(500, "START_ERROR", f"Error starting agent {agent.name}: {agent.state}")
        return json_response(ElizaAgentStartedResponse(data=ElizaAgentStarted(id=agent.id, name=agent.name)))

    async def stop_agent(self, request: web.Request) -> web.Response:
        """Stop an agent: its connectors stop taking messages, replies in flight finish first, and its
        API answers 409 until it is started again. The only agent of a process runs as long as it."""
        if not self.agents.several:  # whatever the path names, as before there were several
            raise not_supported(f"{_ONE_AGENT}: stop the process (SIGTERM) to stop the agent")
        await self.agents.stop(self.agents.by_path(request.match_info["agent_id"]))
        return json_response(ElizaAgentStoppedResponse(data=ElizaAgentStopped()))

    # Server ------------------------------------------------------------------------------------------
    async def server_ping(self, request: web.Request) -> web.Response:
        return json_response(ElizaPing(timestamp=now_ms()))

    async def server_hello(self, request: web.Request) -> web.Response:
        return json_response(ElizaHello(message="Hello World!"))

    async def server_status(self, request: web.Request) -> web.Response:
        return json_response(ElizaServerStatus(agent_count=len(self.agents.host.running()),
                                               timestamp=datetime.now(UTC)))

    async def _database_answers(self) -> bool:
        try:
            return await asyncio.wait_for(self.store.ping(), PING_TIMEOUT)
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
        agent = {"agent_id": agent_schema(self.agents.names())}
        return [
            Operation("GET", "/api/agents", self.list_agents, "List agents, running or not (elizaOS)", "agents",
                      {200: ElizaAgentListResponse}, links={
                          "GetAgent": ("get_agent", {"agent_id": "$response.body#/data/agents/0/id"}),
                          **ElizaMemoryApi.links("$response.body#/data/agents/0/id")}),
            Operation("GET", "/api/agents/{agent_id}", self.get_agent, "Get an agent: its character's public "
                      "fields at the top level (elizaOS)", "agents", {200: ElizaAgentResponse}, errors=[400, 404, 409],
                      path_params=AGENT_PARAM, links=ElizaMemoryApi.links("$response.body#/data/id"),
                      path_schemas=agent, description="GET /api/agents/worlds (elizaOS's "
                      f"getWorlds) answers 409 NOT_SUPPORTED: {_NO_WORLDS}."),
            Operation("POST", "/api/agents/{agent_id}/start", self.start_agent, "Start an agent; one that runs is "
                      "found active (elizaOS)", "agents", {200: ElizaAgentStartedResponse}, errors=[400, 404, 409],
                      path_params=AGENT_PARAM, path_schemas=agent),
            Operation("POST", "/api/agents/{agent_id}/stop", self.stop_agent, "Stop an agent (elizaOS); the "
                      "only agent of a process runs as long as it (409)", "agents", {200: ElizaAgentStoppedResponse},
                      errors=[400, 404, 409], path_params=AGENT_PARAM, path_schemas=agent),
            Operation("GET", "/api/server/ping", self.server_ping, "Ping (elizaOS)", "server", {200: ElizaPing},
                      description=bare),
            Operation("GET", "/api/server/hello", self.server_hello, "Hello (elizaOS)", "server",
                      {200: ElizaHello}, description=bare),
            Operation("GET", "/api/server/status", self.server_status, "Server status (elizaOS): agentCount "
                      "counts the running agents", "server", {200: ElizaServerStatus}, description=bare),
            Operation("GET", "/api/server/health", self.server_health, "Server health (elizaOS)", "server",
                      {200: ElizaServerHealth}, description=bare + " 503 (an error whose body also carries "
                      "these fields, status DEGRADED) while the database does not answer."),
        ]

    def unsupported(self) -> list[Operation]:
        agent = {"agent_id": agent_schema(self.agents.names())}
        return [Operation(method, path, _refusal(name, message), "Not supported (elizaOS's route)", "unsupported",
                          {}, errors=[409], description=f"Answers 409 NOT_SUPPORTED: {message}.",
                          path_params=AGENT_PARAM, path_schemas=agent)
                for method, path, name, message in UNSUPPORTED]
