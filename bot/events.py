"""A small event bus: handlers run concurrently and a failing handler never breaks the emitter."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from bot.plugin import EventHandler
from bot.types import EventType

log = logging.getLogger(__name__)


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[EventHandler]] = defaultdict(list)

    def on(self, event: EventType | str, handler: EventHandler) -> None:
        self._handlers[str(event)].append(handler)

    def off(self, event: EventType | str, handler: EventHandler) -> None:
        handlers = self._handlers.get(str(event), [])
        if handler in handlers:
            handlers.remove(handler)

    async def emit(self, event: EventType | str, payload: dict[str, Any]) -> None:
        handlers = self._handlers.get(str(event))
        if not handlers:
            return
        results = await asyncio.gather(*(h(payload) for h in handlers), return_exceptions=True)
        for handler, result in zip(handlers, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "event handler %s for %s failed: %s",
                    getattr(handler, "__qualname__", handler), event, result,
                    exc_info=(type(result), result, result.__traceback__),
                )
