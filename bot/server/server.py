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

from bot.settings import Settings

from .api import RestApi
from .app import API_PREFIX, PROTECTED, PUBLIC, Lifecycle, ServerState, build_application
from .health import Health
from .metrics import Metrics
from .openapi import Operation, build_openapi
from .session_api import SessionApi
from .sessions import SessionManager

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
OPENAPI_PATH = API_PREFIX + "/openapi.json"


def _version() -> str:
    try:
        return version("parley")
    except PackageNotFoundError:
        return "0.0.0"


class WebServer:
    def __init__(self, runtime: AgentRuntime, settings: Settings, *, clock: Callable[[], float] | None = None) -> None:
        self.runtime, self.settings = runtime, settings
        self.state = ServerState()
        self.sessions = SessionManager(runtime, clock=clock)
        self.metrics = Metrics(runtime, active_sessions=self.sessions.active_count)
        self.health = Health(runtime, self.state)
        rest = RestApi(runtime)
        self.operations: list[Operation] = [*rest.operations(), *SessionApi(runtime, self.sessions, rest).operations()]
        self.openapi = build_openapi(self.operations, title=f"parley: {runtime.character.name}", version=_version())
        self.app = self._build_app()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._cleanup: asyncio.Task[None] | None = None

    def _build_app(self) -> web.Application:
        api_key = self.settings.api_key.get_secret_value() if self.settings.api_key else None
        app = build_application(state=self.state, api_key=api_key, max_body_bytes=self.settings.max_body_bytes)
        app.router.add_get("/health", self.health.health)
        app.router.add_get("/ready", self.health.ready)
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get(OPENAPI_PATH, self._openapi)
        app[PUBLIC].add(("GET", OPENAPI_PATH))
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handler)
        for plugin in self.runtime.plugins:
            for route in plugin.routes:
                app.router.add_route(route.method, route.path, route.handler)
                key = (route.method.upper(), route.path)
                app[PUBLIC if route.public else PROTECTED].add(key)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC, append_version=True)
        return app

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi)

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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
