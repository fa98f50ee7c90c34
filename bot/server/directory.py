"""Which agent an HTTP request is for, and each agent's handlers.

One process may run several characters (`bot.agents.AgentHost`). The server mounts each route once;
`Agents.dispatch` wraps it, so a request reaches that route's handler in the addressed agent's
`AgentView` (its runtime, its sessions, its plugins' routes). The agent is resolved here and nowhere
else, by one rule:

- a path's `{agent_id}` (elizaOS's memory routes) names it;
- a path's `{session_id}` names the session, which belongs to the agent it was created with (a
  query or body naming another agent is a 400);
- otherwise `?agent=` in the query, or the JSON body's `agent` (or `agentId`, `agent_id`) field, both
  an id or a name; neither means the primary (first) agent, so a single-character client never names one.

An unknown agent is a 404 naming the agents; one that is stopped or failed is a 409 saying so.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from bot.agents import RUNNING, AgentError, names

from .errors import ApiError
from .models import is_uuid

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

    from .openapi import Operation
    from .sessions import SessionManager

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUERY = "agent"
BODY_FIELDS = ("agent", "agentId", "agent_id")  # the API models take camelCase and snake_case alike
DEFAULT = "default"  # always the primary agent, as elizaOS's examples name it


class Hosted(Protocol):
    """What the server reads of one hosted agent (`bot.agents.HostedAgent`)."""

    runtime: AgentRuntime | None
    state: str

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def name(self) -> str: ...

    @property
    def running(self) -> bool: ...


class Host(Protocol):
    """What the server reads of the process's agents (`bot.agents.AgentHost`)."""

    agents: list[Any]
    primary: Any

    def get(self, key: str | uuid.UUID) -> Any: ...

    def status(self) -> dict[str, str]: ...

    def running(self) -> list[Any]: ...

    async def start_agent(self, key: str | uuid.UUID) -> Any: ...

    async def stop_agent(self, key: str | uuid.UUID) -> Any: ...


class OneAgent:
    """One runtime as a hosted agent: a server built for a runtime alone (tests, tools) serves it."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime: AgentRuntime | None = runtime
        self.state = RUNNING

    @property
    def id(self) -> uuid.UUID:
        assert self.runtime is not None
        return self.runtime.agent_id

    @property
    def name(self) -> str:
        assert self.runtime is not None
        return self.runtime.character.name

    @property
    def running(self) -> bool:
        return True


class OneAgentHost:
    """A host of one agent that runs as long as the process does."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.primary = OneAgent(runtime)
        self.agents = [self.primary]

    def get(self, key: str | uuid.UUID) -> OneAgent | None:
        runtime = self.primary.runtime
        assert runtime is not None
        return self.primary if names(runtime.character, key) else None

    def status(self) -> dict[str, str]:
        return {self.primary.name: self.primary.state}

    def running(self) -> list[OneAgent]:
        return [self.primary]

    async def start_agent(self, key: str | uuid.UUID) -> OneAgent:
        raise AgentError(f"{self.primary.name} is the only agent: it starts and stops with the process")

    async def stop_agent(self, key: str | uuid.UUID) -> OneAgent:
        raise AgentError(f"{self.primary.name} is the only agent: it starts and stops with the process")


@dataclass
class AgentView:
    """One agent's side of the server: its runtime, sessions and handlers by (method, path)."""

    agent: Hosted
    runtime: AgentRuntime
    sessions: SessionManager
    operations: list[Operation]  # its own and its plugins' /api routes (what the OpenAPI document lists)
    unlisted: list[Operation]  # its plugins' routes outside /api (a platform's webhook)

    def handler(self, method: str, path: str) -> Handler | None:
        for op in (*self.operations, *self.unlisted):
            if op.method == method and op.path == path:
                return op.handler
        return None


ViewBuilder = Callable[[Hosted, "AgentRuntime"], AgentView]


class Agents:
    """The process's agents as the server sees them, with a view of each one that has a runtime.

    A view is rebuilt when its agent's runtime changes (an admin restarted it), so the handlers,
    sessions and metrics always follow the runtime that runs now.
    """

    def __init__(self, host: Host, build: ViewBuilder) -> None:
        self.host = host
        self._build = build
        self._views: dict[uuid.UUID, AgentView] = {}
        self.sync()

    # Views -------------------------------------------------------------------------------------------
    def sync(self) -> None:
        """A view for every agent with a runtime, (re)built when the runtime is new."""
        for agent in self.host.agents:
            runtime = agent.runtime
            view = self._views.get(agent.id)
            if runtime is not None and (view is None or view.runtime is not runtime):
                self._views[agent.id] = self._build(agent, runtime)

    def views(self) -> list[AgentView]:
        self.sync()
        return [self._views[a.id] for a in self.host.agents if a.id in self._views]

    def __iter__(self) -> Iterator[AgentView]:
        return iter(self.views())

    @property
    def primary(self) -> AgentView:
        self.sync()
        return self._views[self.host.primary.id]

    @property
    def several(self) -> bool:
        return len(self.host.agents) > 1

    def names(self) -> list[str]:
        return [agent.name for agent in self.host.agents]

    # Resolution --------------------------------------------------------------------------------------
    def listing(self) -> str:
        return ", ".join(f"{agent.name} ({agent.id})" for agent in self.host.agents)

    def find(self, key: str | None) -> Hosted | None:
        """By id or name (case-insensitive); None or "default" is the primary agent."""
        if key is None or key.strip() in ("", DEFAULT):
            return self.host.primary
        return self.host.get(str(uuid.UUID(key)) if is_uuid(key) else key)  # any case of a UUID

    def named(self, key: str | None) -> Hosted:
        agent = self.find(key)
        if agent is None:
            raise ApiError(404, "AGENT_NOT_FOUND", f"no agent {key!r}; the agents are {self.listing()}")
        return agent

    def by_path(self, raw: str) -> Hosted:
        """The agent of elizaOS's `{agentId}` path: as in elizaOS, an unknown UUID is 404 NOT_FOUND and
        anything else unknown 400 INVALID_ID (naming the agents)."""
        agent = self.find(raw)
        if agent is not None:
            return agent
        if is_uuid(raw):  # elizaOS's words, which its clients match
            raise ApiError(404, "NOT_FOUND", "Agent not found")
        raise ApiError(400, "INVALID_ID", "Invalid agent ID format: use an agent's id (a UUID), its name or "
                       f"'default'; the agents are {self.listing()}")

    def usable(self, agent: Hosted) -> AgentView:
        """The running agent's view; 409 for one that is stopped or failed."""
        if not agent.running:
            raise ApiError(409, "AGENT_NOT_RUNNING", f"agent {agent.name} is {agent.state}; an admin can start "
                           f"it with POST /api/agents/{agent.id}/start")
        self.sync()
        return self._views[agent.id]

    async def for_request(self, request: web.Request) -> AgentView:
        """The view of the agent `request` addresses (see the module's docstring)."""
        match = request.match_info
        if "agent_id" in match:
            return self.usable(self.by_path(match["agent_id"]))
        query, body = request.query.get(QUERY), await _body_agent(request)
        if "session_id" in match:
            for view in self.views():
                if await view.sessions.knows(match["session_id"]):
                    for named in (query, body):
                        if named is not None and self.find(named) is not view.agent:
                            raise ApiError(400, "INVALID_BODY", f"session {match['session_id']} belongs to agent "
                                           f"{view.agent.name}, not {named!r}; name no agent or that one")
                    return self.usable(view.agent)
            return self.primary  # which answers that the session does not exist
        agent = self.named(query if query is not None else body)
        if query is not None and body is not None and self.find(body) is not agent:
            raise ApiError(400, "INVALID_BODY", f"the query names agent {query!r} and the body {body!r}; name one")
        return self.usable(agent)

    def dispatch(self, op: Operation) -> Handler:
        """The handler to mount for `op`: the addressed agent's own handler of the same route."""
        async def dispatched(request: web.Request) -> web.StreamResponse:
            view = await self.for_request(request)
            handler = view.handler(op.method, op.path)
            if handler is None:  # a plugin route another agent has and this one does not
                raise ApiError(404, "NOT_FOUND", f"agent {view.agent.name} does not serve {op.method} {op.path}")
            return await handler(request)
        dispatched.__name__ = op.operation_id
        return dispatched

    # Admin -------------------------------------------------------------------------------------------
    async def start(self, agent: Hosted) -> Hosted:
        """Start a stopped or failed agent; its view follows the new runtime. One that runs is left be."""
        if agent.running:
            return agent
        try:
            started = await self.host.start_agent(agent.id)
        except AgentError as error:
            raise ApiError(409, "NOT_SUPPORTED", str(error)) from None
        self.sync()
        return started

    async def stop(self, agent: Hosted) -> Hosted:
        """Stop an agent (its connectors stop, replies in flight finish); not the only one of a process."""
        try:
            return await self.host.stop_agent(agent.id)
        except AgentError as error:
            raise ApiError(409, "NOT_SUPPORTED", str(error)) from None


async def _body_agent(request: web.Request) -> str | None:
    """The agent a JSON body names (`agent` or `agentId`), if it is a JSON object that names one. The
    body read here stays cached for the handler, which validates it (and reports bad JSON) itself."""
    if request.content_type != "application/json" or not request.body_exists:
        return None
    try:
        data = json.loads(await request.read())
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    for name in BODY_FIELDS:
        value = data.get(name)
        if isinstance(value, str):
            return value
    return None
