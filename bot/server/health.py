"""`/health` (the process is alive) and `/ready` (it can do its job: database, connectors, a model; and what
services are busy with, e.g. knowledge indexing, which never makes it unready)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.types import ModelType

from .app import Lifecycle, ServerState

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

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

    def _services(self) -> dict[str, Any]:
        """Each service's own status, by service type; one that fails to say is left out (logged at debug):
        /ready must answer whatever a plugin does."""
        found: dict[str, Any] = {}
        for service in self.runtime.services:
            try:
                status = service.status()
            except Exception:
                log.debug("status of the %s service failed", service.service_type, exc_info=True)
                continue
            if status is not None:
                found[service.service_type] = status
        return found

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
        if services := self._services():
            checks["services"] = services
        failing = [name for name in ("database", "model") if not checks[name]]
        failing += [f"connector:{name}" for name, ok in connectors.items() if not ok]
        if self.state.lifecycle is not Lifecycle.RUNNING:
            failing.insert(0, "lifecycle")
        body = {"ready": not failing, "failing": failing, "checks": checks}
        return web.json_response(body, status=200 if not failing else 503)
