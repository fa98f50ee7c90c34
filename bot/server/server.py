"""`WebServer`: the process's one HTTP face on $PORT, started before the runtime so /health answers
during start-up, and told by `App` when the runtime is ready and when shutdown begins."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from bot.settings import Settings, WebChatMode

from .access import API_PREFIX, Access, AccessPolicy, is_loopback_host
from .api import RestApi
from .app import BodyLimit, Lifecycle, ServerState, build_application, json_response, limit_body
from .eliza.agents import ElizaApi
from .eliza.realtime import Realtime
from .eliza.sessions import ElizaSessionApi
from .health import Health
from .metrics import Metrics
from .models import WebChatInfo
from .openapi import Operation, build_openapi, route_operation
from .session_api import SessionApi
from .sessions import SessionManager

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
OPENAPI_PATH = API_PREFIX + "/openapi.json"
WEB_CHAT_PATH = API_PREFIX + "/web-chat"


def _version() -> str:
    try:
        return version("parley")
    except PackageNotFoundError:
        return "0.0.0"


class WebServer:
    def __init__(self, runtime: AgentRuntime, settings: Settings, *, clock: Callable[[], float] | None = None) -> None:
        self.runtime, self.settings = runtime, settings
        self.state = ServerState()
        self.policy = AccessPolicy(settings)
        self.sessions = SessionManager(runtime, clock=clock)
        self.metrics = Metrics(runtime, active_sessions=self.sessions.active_count)
        self.health = Health(runtime, self.state)
        self.realtime = Realtime(runtime, self.policy, self.sessions)
        rest = RestApi(runtime)
        self.operations: list[Operation] = [
            *rest.operations(), *ElizaApi(runtime, rest, self.sessions).operations(),
            *SessionApi(runtime, self.sessions, rest, self.policy).operations(),
            *ElizaSessionApi(runtime, self.sessions, rest, self.realtime, self.health.started_at).operations(),
        ]
        if settings.web_chat is not WebChatMode.OFF:
            self.operations.append(Operation("GET", WEB_CHAT_PATH, self.web_chat_info, "What the web chat page "
                                             "needs: the character's name and who may chat", "web chat",
                                             {200: WebChatInfo}, access=Access.PUBLIC))
        # Plugins' routes are mounted and guarded like ours; those under /api are documented too, the rest
        # (a platform's webhook) are not part of the API.
        routes = [route_operation(route, plugin.name) for plugin in runtime.plugins for route in plugin.routes]
        self.operations += [op for op in routes if op.path.startswith(API_PREFIX + "/")]
        self._unlisted = [op for op in routes if not op.path.startswith(API_PREFIX + "/")]
        self.openapi = build_openapi(self.operations, title=f"parley: {runtime.character.name}", version=_version(),
                                     visitors=self.policy.visitors)
        self.app = self._build_app()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._cleanup: asyncio.Task[None] | None = None

    def _build_app(self) -> web.Application:
        policy = self.policy
        app = build_application(state=self.state, policy=policy, max_body_bytes=self.settings.max_body_bytes)
        app.router.add_get("/health", self.health.health)
        app.router.add_get("/ready", self.health.ready)
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get(OPENAPI_PATH, self._openapi)
        policy.allow("GET", OPENAPI_PATH, Access.PUBLIC)
        for op in [*self.operations, *self._unlisted]:
            app.router.add_route(op.method, op.route_path, op.handler)
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
        access = "public" if self.settings.web_chat is WebChatMode.PUBLIC else "admin"
        return json_response(WebChatInfo(name=self.runtime.character.name, access=access))

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
        self._cleanup = asyncio.create_task(
            self.sessions.run_cleanup(self.settings.session_cleanup_interval_seconds), name="session-cleanup"
        )

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
