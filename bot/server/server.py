"""`WebServer`: the process's one HTTP face on $PORT, started before the runtime so /health answers
during start-up, and told by `App` when the runtime is ready and when shutdown begins."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from aiohttp import web

from bot.runtime import AgentRuntime
from bot.settings import Settings, WebChatMode

from .access import API_PREFIX, Access, AccessPolicy, is_loopback_host
from .api import RestApi
from .app import BodyLimit, Lifecycle, ServerState, build_application, json_response, limit_body
from .directory import Agents, AgentView, Host, Hosted, OneAgentHost
from .eliza.agents import ElizaApi
from .eliza.memory import ElizaMemoryApi
from .eliza.realtime import Realtime
from .eliza.sessions import ElizaSessionApi
from .health import Health
from .metrics import Metrics
from .models import WebChatAgent, WebChatInfo
from .openapi import Operation, build_openapi, route_operation
from .session_api import SessionApi
from .sessions import SessionCensus, SessionManager

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
OPENAPI_PATH = API_PREFIX + "/openapi.json"
WEB_CHAT_PATH = API_PREFIX + "/web-chat"


def _queue_depth(runtime: AgentRuntime) -> int:
    return int(getattr(runtime.message_handler, "queue_depth", 0))


def _version() -> str:
    try:
        return version("parley")
    except PackageNotFoundError:
        return "0.0.0"


class WebServer:
    """The HTTP server of every agent of the process (`host`, an `AgentHost`), or of one runtime alone.

    Each route is mounted once; `Agents` sends each request to the addressed agent's handler."""

    def __init__(self, host: Host | AgentRuntime, settings: Settings, *,
                 clock: Callable[[], float] | None = None) -> None:
        self.host: Host = OneAgentHost(host) if isinstance(host, AgentRuntime) else host
        self.settings, self._clock = settings, clock
        self._census = SessionCensus()  # the session caps count every agent's sessions
        self.state = ServerState()
        self.policy = AccessPolicy(settings)
        self.metrics = Metrics(active_sessions=lambda: sum(v.sessions.active_count() for v in self.agents),
                               queue_depth=lambda: sum(_queue_depth(v.runtime) for v in self.agents),
                               per_agent=len(self.host.agents) > 1)
        self.realtime = Realtime(settings, self.policy)
        self.health = Health(self.host, self.state)
        self.agents = Agents(self.host, self._view)
        self.realtime.serve(self.agents)
        primary = self.agents.primary
        self.runtime, self.sessions = primary.runtime, primary.sessions  # the primary's (single-agent code)
        eliza = ElizaApi(self.agents)
        self.operations: list[Operation] = [*eliza.operations()]
        # Each route once, however many agents serve it: the primary's, then routes only others have
        # (a plugin only one character loads). Plugins' routes outside /api (a platform's webhook) are not
        # part of the API.
        self._unlisted: list[Operation] = []
        seen: set[tuple[str, str]] = {(op.method, op.path) for op in self.operations}
        for view in self.agents:
            for op, listed in [*((op, True) for op in view.operations), *((op, False) for op in view.unlisted)]:
                if (op.method, op.path) not in seen:
                    seen.add((op.method, op.path))
                    (self.operations if listed else self._unlisted).append(op)
        self.operations += eliza.unsupported()
        if settings.web_chat is not WebChatMode.OFF:
            self.operations.append(Operation("GET", WEB_CHAT_PATH, self.web_chat_info, "What the web chat page "
                                             "needs: the agents a visitor can chat with and who may chat",
                                             "web chat", {200: WebChatInfo}, access=Access.PUBLIC))
        self._dispatched = {id(op) for view in self.agents for op in (*view.operations, *view.unlisted)}
        self.openapi = build_openapi(self.operations, title=f"parley: {', '.join(self.agents.names())}",
                                     version=_version(), visitors=self.policy.visitors,
                                     addressed=self._dispatched, several=self.agents.several)
        self.app = self._build_app()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._cleanup: asyncio.Task[None] | None = None

    def _view(self, agent: Hosted, runtime: AgentRuntime) -> AgentView:
        """One agent's handlers over its runtime and its own sessions (see `Agents`)."""
        sessions = SessionManager(runtime, clock=self._clock, census=self._census)
        rest = RestApi(runtime)
        memory = ElizaMemoryApi(runtime, sessions, lambda request: runtime.agent_id, names=self._names)
        eliza_sessions = ElizaSessionApi(runtime, sessions, self.realtime, self.health.started_at,
                                         managers=lambda: [v.sessions for v in self.agents])
        routes = [route_operation(route, plugin.name) for plugin in runtime.plugins for route in plugin.routes]
        operations = [*rest.operations(), *memory.operations(),
                      *SessionApi(runtime, sessions, self.policy).operations(), *eliza_sessions.operations(),
                      *(op for op in routes if op.path.startswith(API_PREFIX + "/"))]
        unlisted = [op for op in routes if not op.path.startswith(API_PREFIX + "/")]
        self.metrics.watch(runtime, agent.name)
        return AgentView(agent, runtime, sessions, operations, unlisted)

    def _names(self) -> list[str]:
        return [agent.name for agent in self.host.agents]

    def _build_app(self) -> web.Application:
        policy = self.policy
        app = build_application(state=self.state, policy=policy, max_body_bytes=self.settings.max_body_bytes)
        app.router.add_get("/health", self.health.health)
        app.router.add_get("/ready", self.health.ready)
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get(OPENAPI_PATH, self._openapi)
        policy.allow("GET", OPENAPI_PATH, Access.PUBLIC)
        for op in [*self.operations, *self._unlisted]:
            handler = self.agents.dispatch(op) if id(op) in self._dispatched else op.handler
            app.router.add_route(op.method, op.route_path, handler)
            policy.allow(op.method, op.path, op.access, op.body_types)
            if op.max_body_bytes is not None:
                limit_body(app, op.method, op.path, BodyLimit(op.max_body_bytes, op.max_body_reason or
                                                              f"the limit of {op.method} {op.path}"))
        self.realtime.attach(app)
        if self.settings.web_chat is not WebChatMode.OFF:
            app.router.add_get("/", self._index)
            app.router.add_static("/static/", STATIC, append_version=True)
        return app

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi)

    async def web_chat_info(self, request: web.Request) -> web.Response:
        """The running agents, the primary first: the page offers a choice when there are several."""
        access = "public" if self.settings.web_chat is WebChatMode.PUBLIC else "admin"
        agents = [WebChatAgent(id=a.id, name=a.name) for a in self.host.agents if a.running]
        return json_response(WebChatInfo(name=self.host.primary.name, access=access, agents=agents))

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        })

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("HTTP server listening on %s:%s", self.settings.host, self.port)
        self._warn_if_closed()

    def _warn_if_closed(self) -> None:
        """Reachable from other hosts with no API_KEY: say once what stays closed to them."""
        settings = self.settings
        if settings.api_key or is_loopback_host(settings.host):
            return
        page = {WebChatMode.OFF: "the web chat is off",
                WebChatMode.ADMIN: "the web chat page (WEB_CHAT=admin) works only from this machine",
                WebChatMode.PUBLIC: "web chat visitors (WEB_CHAT=public) can still chat"}[settings.web_chat]
        log.warning("HOST=%s and no API_KEY: the admin API (/api: messages, memories, all sessions) answers only "
                    "direct loopback clients, never requests through a proxy or tunnel; %s. Set API_KEY to use "
                    "the API remotely.", settings.host, page)

    def mark_started(self) -> None:
        self.state.lifecycle = Lifecycle.RUNNING
        self._cleanup = asyncio.create_task(self._clean_sessions(), name="session-cleanup")

    async def _clean_sessions(self) -> None:
        """Forever: each agent's expired sessions removed, then a sleep; a failing round is logged."""
        while True:
            for view in self.agents:
                try:
                    await view.sessions.cleanup()
                except Exception:
                    log.exception("session cleanup of %s failed", view.agent.name)
            await asyncio.sleep(self.settings.session_cleanup_interval_seconds)

    def mark_stopping(self) -> None:
        self.state.lifecycle = Lifecycle.STOPPING

    async def stop(self) -> None:
        self.state.lifecycle = Lifecycle.STOPPING
        if self._cleanup is not None:
            self._cleanup.cancel()
            await asyncio.gather(self._cleanup, return_exceptions=True)
            self._cleanup = None
        await self.realtime.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
