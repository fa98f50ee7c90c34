"""`/health` (the process is alive) and `/ready` (it can do its job: database, connectors, a model)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.types import ModelType

from .app import Lifecycle, ServerState

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

PING_TIMEOUT = 3.0


class Health:
    def __init__(self, runtime: AgentRuntime, state: ServerState) -> None:
        self.runtime, self.state = runtime, state
        self.started_at = time.monotonic()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "agent": self.runtime.character.name,
                                  "lifecycle": str(self.state.lifecycle),
                                  "uptime_seconds": round(time.monotonic() - self.started_at, 1)})

    async def _database(self) -> bool:
        try:
            return await asyncio.wait_for(self.runtime.store.ping(), PING_TIMEOUT)
        except Exception:  # a hung or broken database is simply "not ready"
            return False

    async def ready(self, request: web.Request) -> web.Response:
        """200 when every part is ready, else 503 naming the parts that are not."""
        runtime = self.runtime
        connectors = {c.source or type(c).__name__: c.connected for c in runtime.connectors}
        checks: dict[str, Any] = {
            "lifecycle": str(self.state.lifecycle),
            "database": await self._database(),
            "connectors": connectors,
            "model": runtime.has_model(ModelType.TEXT_LARGE),
        }
        failing = [name for name in ("database", "model") if not checks[name]]
        failing += [f"connector:{name}" for name, ok in connectors.items() if not ok]
        if self.state.lifecycle is not Lifecycle.RUNNING:
            failing.insert(0, "lifecycle")
        body = {"ready": not failing, "failing": failing, "checks": checks}
        return web.json_response(body, status=200 if not failing else 503)
