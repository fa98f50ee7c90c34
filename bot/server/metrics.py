"""Prometheus metrics, fed by runtime events rather than by calls sprinkled through the pipeline.

Each server owns its registry, so several servers in one process (tests) never collide.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bot.types import EventType, Memory

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

# Messages waiting for their first reply; bounded because some never get one (rate-limited, ignored).
MAX_PENDING = 10_000
Labels = tuple[str, ...]  # the agent's label value, or nothing with one agent
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


def _platform(message: Memory | None) -> str:
    return (message.content.source if message is not None else None) or "unknown"


class Metrics:
    """One registry for the process. With several agents every series but the gauges carries an `agent`
    label (the character's name); with one, the series are as they always were."""

    def __init__(self, *, active_sessions: Callable[[], int], queue_depth: Callable[[], int],
                 per_agent: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.per_agent = per_agent
        self.registry = CollectorRegistry()
        r, a = self.registry, ["agent"] if per_agent else []
        self.received = Counter("parley_messages_received", "Messages received", [*a, "platform"], registry=r)
        self.replied = Counter("parley_messages_replied", "Replies sent", [*a, "platform"], registry=r)
        self.reply_latency = Histogram("parley_reply_latency_seconds", "From a message stored to its first reply",
                                       [*a, "platform"], buckets=LATENCY_BUCKETS, registry=r)
        self.run_duration = Histogram("parley_run_duration_seconds", "Pipeline run time, by outcome",
                                      [*a, "platform", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_calls = Counter("parley_model_calls", "Model calls", [*a, "provider", "type", "outcome"],
                                   registry=r)
        self.model_errors = Counter("parley_model_errors", "Failed model calls", [*a, "provider", "type"],
                                    registry=r)
        self.model_tokens = Counter("parley_model_tokens", "Model tokens", [*a, "provider", "type", "kind"],
                                    registry=r)
        self.actions = Counter("parley_actions", "Actions and tool calls run, by outcome",
                               [*a, "action", "tool", "outcome"], registry=r)
        self.action_duration = Histogram("parley_action_duration_seconds", "Time one action or tool call took",
                                         [*a, "action"], buckets=LATENCY_BUCKETS, registry=r)
        queue = Gauge("parley_queue_depth", "Messages waiting in room queues", registry=r)
        queue.set_function(queue_depth)
        sessions = Gauge("parley_active_sessions", "Open API chat sessions", registry=r)
        sessions.set_function(active_sessions)
        self._pending: OrderedDict[Any, float] = OrderedDict()
        self._runs: OrderedDict[Any, float] = OrderedDict()

    def watch(self, runtime: AgentRuntime, agent: str) -> None:
        """Count what `runtime` (the agent named `agent`) does, from its events."""
        labels = (agent,) if self.per_agent else ()
        for event, handler in ((EventType.MESSAGE_RECEIVED, self._on_received), (EventType.MESSAGE_SENT, self._on_sent),
                               (EventType.RUN_STARTED, self._on_run_started), (EventType.RUN_ENDED, self._on_run_ended),
                               (EventType.MODEL_USED, self._on_model_used),
                               (EventType.ACTION_COMPLETED, self._on_action)):
            runtime.on(event, partial(handler, labels))

    @staticmethod
    def _remember(table: OrderedDict[Any, float], key: Any, value: float) -> None:
        table[key] = value
        while len(table) > MAX_PENDING:
            table.popitem(last=False)

    async def _on_received(self, agent: Labels, payload: dict[str, Any]) -> None:
        message: Memory = payload["message"]
        self.received.labels(*agent, _platform(message)).inc()
        self._remember(self._pending, message.id, self.clock())

    async def _on_sent(self, agent: Labels, payload: dict[str, Any]) -> None:
        original: Memory | None = payload.get("in_reply_to")
        platform = _platform(original or payload.get("message"))
        self.replied.labels(*agent, platform).inc()
        started = self._pending.pop(original.id, None) if original is not None else None
        if started is not None:
            self.reply_latency.labels(*agent, platform).observe(self.clock() - started)

    async def _on_run_started(self, agent: Labels, payload: dict[str, Any]) -> None:
        self._remember(self._runs, payload["run_id"], self.clock())

    async def _on_run_ended(self, agent: Labels, payload: dict[str, Any]) -> None:
        message: Memory = payload["message"]
        self._pending.pop(message.id, None)
        started = self._runs.pop(payload["run_id"], None)
        if started is not None:
            self.run_duration.labels(*agent, _platform(message), str(payload.get("status"))).observe(
                self.clock() - started)

    async def _on_model_used(self, agent: Labels, payload: dict[str, Any]) -> None:
        provider, model_type = str(payload.get("provider")), str(payload.get("type"))
        ok = bool(payload.get("ok"))
        self.model_calls.labels(*agent, provider, model_type, "ok" if ok else "error").inc()
        if not ok:
            self.model_errors.labels(*agent, provider, model_type).inc()
        for kind in ("prompt", "completion"):
            tokens = int(payload.get(f"{kind}_tokens") or 0)
            if tokens:
                self.model_tokens.labels(*agent, provider, model_type, kind).inc(tokens)

    async def _on_action(self, agent: Labels, payload: dict[str, Any]) -> None:
        name, result = str(payload.get("action")), payload.get("result")
        outcome = "ok" if result is None or result.success else "error"
        self.actions.labels(*agent, name, "yes" if payload.get("tool") else "no", outcome).inc()
        if payload.get("duration") is not None:
            self.action_duration.labels(*agent, name).observe(float(payload["duration"]))

    async def handle(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
