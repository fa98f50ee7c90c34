"""The bootstrap plugin: the message pipeline and the built-in actions, providers and evaluators."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.plugin import Plugin, Priority
from bot.types import EventType

from .actions import ACTIONS
from .dispatcher import MessageDispatcher, ShuttingDown
from .embeddings import VectorSizeCheck
from .evaluators import ReflectionCounter, reflection_evaluator
from .providers import Recall, make_providers

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime


def bootstrap_plugin() -> Plugin:
    counter = ReflectionCounter()
    recall = Recall()

    async def init(config: dict[str, Any], runtime: AgentRuntime) -> None:
        runtime.message_handler = MessageDispatcher(runtime)

    return Plugin(
        name="bootstrap",
        description="Message pipeline, core actions, providers and evaluators",
        priority=Priority.FEATURE,
        init=init,
        actions=list(ACTIONS),
        providers=make_providers(recall),
        evaluators=[reflection_evaluator(counter, recall)],
        services=[VectorSizeCheck],
        events={EventType.MESSAGE_RECEIVED: [counter.on_message]},
    )


__all__ = ["MessageDispatcher", "ShuttingDown", "bootstrap_plugin"]
