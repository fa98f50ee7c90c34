"""`/health` (the process is alive) and `/ready` (it can do its job: database, every agent, their connectors,
a model; and what services are busy with, e.g. knowledge indexing, which never makes it unready).

With several characters /ready lists each agent's state under checks.agents ("running", "stopped",
"failed"; the reason is for admins, in GET /api/agents). It is 200 when the database answers and every agent that should run does, with
its connectors and a model: an agent an admin stopped is left out, but one that failed makes it 503
naming it (`agent:Name`), since that character is not doing its job until someone fixes it and
starts it (POST /api/agents/{id}/start) or restarts the process.
"""

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

    from .directory import Host

log = logging.getLogger(__name__)

PING_TIMEOUT = 3.0
FAILED = "failed"


class Health:
    def __init__(self, host: Host, state: ServerState) -> None:
        self.host, self.state = host, state
        self.started_at = time.monotonic()

    @property
    def runtime(self) -> AgentRuntime:
        """The primary agent's runtime (its store is every agent's)."""
        runtime = self.host.primary.runtime
        assert runtime is not None
        return runtime

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "agent": self.host.primary.name,
                                  "lifecycle": str(self.state.lifecycle),
                                  "uptime_seconds": round(time.monotonic() - self.started_at, 1)})

    async def _database(self) -> bool:
        try:
            return await asyncio.wait_for(self.runtime.store.ping(), PING_TIMEOUT)
        except Exception:  # a hung or broken database is simply "not ready"
            return False

    @staticmethod
    def _services(runtime: AgentRuntime) -> dict[str, Any]:
        """Each service's own status, by service type; one that fails to say is left out (logged at debug):
        /ready must answer whatever a plugin does."""
        found: dict[str, Any] = {}
        for service in runtime.services:
            try:
                status = service.status()
            except Exception:
                log.debug("status of the %s service failed", service.service_type, exc_info=True)
                continue
            if status is not None:
                found[service.service_type] = status
        return found

    async def ready(self, request: web.Request) -> web.Response:
        """200 when every part is ready, else 503 naming the parts that are not (see the module's docstring)."""
        several = len(self.host.agents) > 1
        running = [a for a in self.host.running() if a.runtime is not None]
        connectors: dict[str, bool] = {}
        services: dict[str, Any] = {}
        for agent in running:
            prefix = f"{agent.name}/" if several else ""
            for c in agent.runtime.connectors:
                connectors[prefix + (c.source or type(c).__name__)] = c.connected
            if found := self._services(agent.runtime):
                services.update({agent.name: found} if several else found)
        checks: dict[str, Any] = {
            "lifecycle": str(self.state.lifecycle),
            "database": await self._database(),
            "connectors": connectors,
            "model": bool(running) and all(a.runtime.has_model(ModelType.TEXT_LARGE) for a in running),
            # /ready is public: a failure's reason (which may quote a plugin's error) is for admins (/api/agents)
            "agents": {name: FAILED if state.startswith(FAILED) else state for name, state in self.host.status().items()},
        }
        if services:
            checks["services"] = services
        failing = [name for name in ("database", "model") if not checks[name]]
        failing += [f"connector:{name}" for name, ok in connectors.items() if not ok]
        failing += [f"agent:{name}" for name, state in checks["agents"].items() if state.startswith(FAILED)]
        if self.state.lifecycle is not Lifecycle.RUNNING:
            failing.insert(0, "lifecycle")
        body = {"ready": not failing, "failing": failing, "checks": checks}
        return web.json_response(body, status=200 if not failing else 503)
