"""Prometheus metrics, fed by runtime events rather than by calls sprinkled through the pipeline.

Each server owns its registry, so several runtimes in one process (tests) never collide.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
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
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


def _platform(message: Memory | None) -> str:
    return (message.content.source if message is not None else None) or "unknown"


class Metrics:
    def __init__(self, runtime: AgentRuntime, *, active_sessions: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("parley_messages_received", "Messages received", ["platform"], registry=r)
        self.replied = Counter("parley_messages_replied", "Replies sent", ["platform"], registry=r)
        self.reply_latency = Histogram("parley_reply_latency_seconds", "From a message stored to its first reply",
                                       ["platform"], buckets=LATENCY_BUCKETS, registry=r)
        self.run_duration = Histogram("parley_run_duration_seconds", "Pipeline run time, by outcome",
                                      ["platform", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_calls = Counter("parley_model_calls", "Model calls", ["provider", "type", "outcome"], registry=r)
        self.model_errors = Counter("parley_model_errors", "Failed model calls", ["provider", "type"], registry=r)
        self.model_tokens = Counter("parley_model_tokens", "Model tokens", ["provider", "type", "kind"], registry=r)
        self.actions = Counter("parley_actions", "Actions and tool calls run, by outcome", ["action", "tool", "outcome"],
                               registry=r)
        self.action_duration = Histogram("parley_action_duration_seconds", "Time one action or tool call took",
                                         ["action"], buckets=LATENCY_BUCKETS, registry=r)
        queue = Gauge("parley_queue_depth", "Messages waiting in room queues", registry=r)
        queue.set_function(self._queue_depth)
        sessions = Gauge("parley_active_sessions", "Open API chat sessions", registry=r)
        sessions.set_function(active_sessions)
        self._pending: OrderedDict[Any, float] = OrderedDict()
        self._runs: OrderedDict[Any, float] = OrderedDict()
        runtime.on(EventType.MESSAGE_RECEIVED, self._on_received)
        runtime.on(EventType.MESSAGE_SENT, self._on_sent)
        runtime.on(EventType.RUN_STARTED, self._on_run_started)
        runtime.on(EventType.RUN_ENDED, self._on_run_ended)
        runtime.on(EventType.MODEL_USED, self._on_model_used)
        runtime.on(EventType.ACTION_COMPLETED, self._on_action)

    def _queue_depth(self) -> float:
        handler = self.runtime.message_handler
        return float(getattr(handler, "queue_depth", 0))

    @staticmethod
    def _remember(table: OrderedDict[Any, float], key: Any, value: float) -> None:
        table[key] = value
        while len(table) > MAX_PENDING:
            table.popitem(last=False)

    async def _on_received(self, payload: dict[str, Any]) -> None:
        message: Memory = payload["message"]
        self.received.labels(_platform(message)).inc()
        self._remember(self._pending, message.id, self.clock())

    async def _on_sent(self, payload: dict[str, Any]) -> None:
        original: Memory | None = payload.get("in_reply_to")
        platform = _platform(original or payload.get("message"))
        self.replied.labels(platform).inc()
        started = self._pending.pop(original.id, None) if original is not None else None
        if started is not None:
            self.reply_latency.labels(platform).observe(self.clock() - started)

    async def _on_run_started(self, payload: dict[str, Any]) -> None:
        self._remember(self._runs, payload["run_id"], self.clock())

    async def _on_run_ended(self, payload: dict[str, Any]) -> None:
        message: Memory = payload["message"]
        self._pending.pop(message.id, None)
        started = self._runs.pop(payload["run_id"], None)
        if started is not None:
            self.run_duration.labels(_platform(message), str(payload.get("status"))).observe(self.clock() - started)

    async def _on_model_used(self, payload: dict[str, Any]) -> None:
        provider, model_type = str(payload.get("provider")), str(payload.get("type"))
        ok = bool(payload.get("ok"))
        self.model_calls.labels(provider, model_type, "ok" if ok else "error").inc()
        if not ok:
            self.model_errors.labels(provider, model_type).inc()
        for kind in ("prompt", "completion"):
            tokens = int(payload.get(f"{kind}_tokens") or 0)
            if tokens:
                self.model_tokens.labels(provider, model_type, kind).inc(tokens)

    async def _on_action(self, payload: dict[str, Any]) -> None:
        name, result = str(payload.get("action")), payload.get("result")
        outcome = "ok" if result is None or result.success else "error"
        self.actions.labels(name, "yes" if payload.get("tool") else "no", outcome).inc()
        if payload.get("duration") is not None:
            self.action_duration.labels(name).observe(float(payload["duration"]))

    async def handle(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
