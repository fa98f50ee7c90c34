"""The action half of the runtime: which actions an asker may use, running one as the model asked
(role, validate, arguments, timeout), and the evaluators after a reply."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot.permissions import Role, refusal
from bot.plugin import Action, ActionContext, ActionResult, Evaluator, HandlerCallback, PluginError, State
from bot.settings import Settings
from bot.tools import argument_problem, normalise_action
from bot.types import EventType, Memory

from .runtime_models import ModelError

log = logging.getLogger("bot.runtime")


class ActionsMixin:
    """Part of AgentRuntime (see bot/runtime.py), kept apart so each file reads in one sitting."""

    settings: Settings
    actions: list[Action]
    evaluators: list[Evaluator]

    if TYPE_CHECKING:  # provided by AgentRuntime
        async def emit(self, event: EventType | str, payload: dict[str, Any]) -> None: ...

        async def role_of(self, message: Memory) -> Role: ...

    async def _valid(self, action: Action, message: Memory, state: State | None) -> bool:
        try:
            return bool(await action.validate(self, message, state))
        except Exception:
            log.exception("validate of action %s failed", action.name)
            return False

    async def allowed_actions(self, message: Memory, state: State | None) -> list[Action]:
        """The actions this asker may use here now: their role suffices and `validate` passes."""
        role = await self.role_of(message)
        return [action for action in self.actions if action.role <= role and await self._valid(action, message, state)]

    def find_action(self, name: str) -> Action | None:
        wanted = normalise_action(name)
        for action in self.actions:
            if normalise_action(action.name) == wanted:
                return action
        for action in self.actions:
            if any(normalise_action(s) == wanted for s in action.similes):
                return action
        return None

    def add_action(self, action: Action) -> None:
        """Offer an action from now on (an MCP server's tools as it connects)."""
        if any(normalise_action(a.name) == normalise_action(action.name) for a in self.actions):
            raise PluginError(f"action {action.name!r} is already registered")
        self.actions.append(action)

    def remove_action(self, name: str) -> None:
        """Stop offering an action (its MCP server went away)."""
        wanted = normalise_action(name)
        self.actions = [a for a in self.actions if normalise_action(a.name) != wanted]

    async def run_action(
        self,
        name: str,
        message: Memory,
        state: State,
        *,
        parameters: dict[str, Any] | None = None,
        callback: HandlerCallback | None = None,
        response: Memory | None = None,
        responses: Sequence[Memory] = (),
        run_id: uuid.UUID | None = None,
        role: Role | None = None,
        time_limit: float | None = None,
    ) -> tuple[Action | None, ActionResult]:
        """Run one action the model asked for, checked again here (the asker's role, `validate`,
        the arguments against its schema): what the model names is a request, not a permission.
        A refused, invalid, slow or failing action is reported in its result, never raised.

        A tool gets its `timeout` (or TOOL_TIMEOUT); `time_limit` (what is left of a reply's tool
        budget) bounds any action called as a tool, and tightens that."""
        action = self.find_action(name)
        if action is None:
            log.warning("model asked for unknown action %r", name)
            return None, ActionResult(success=False, error=f"there is no action named {name}")
        role = await self.role_of(message) if role is None else role
        if action.role > role:
            log.warning("refused %s for %s in room %s: needs %s, asker is %s", action.name,
                        message.entity_id, message.room_id, action.role.name, role.name)
            return action, ActionResult(success=False, error=refusal(action.role), data={"refused": True})
        if not await self._valid(action, message, state):
            log.info("action %s is not available for message %s", action.name, message.id)
            return action, ActionResult(success=False, error=f"{action.name} is not available here")
        parameters = dict(parameters or {})
        if action.parameters is not None and (problem := argument_problem(action.parameters, parameters)):
            return action, ActionResult(success=False, error=f"invalid arguments for {action.name}: {problem}")
        context = ActionContext(self, message, state, parameters, callback, response, list(responses), role, run_id)
        payload = {"runtime": self, "message": message, "action": action.name, "run_id": run_id,
                   "tool": action.is_tool}
        await self.emit(EventType.ACTION_STARTED, payload)
        started = time.perf_counter()
        try:
            limit = None  # an action run after the reply (not as a tool) has no limit of its own
            if action.is_tool or time_limit is not None:
                limit = min(action.timeout or self.settings.tool_timeout, time_limit or float("inf"))
            async with asyncio.timeout(limit):
                outcome = await action.handler(context)
            result = ActionResult(text=outcome) if isinstance(outcome, str) else outcome or ActionResult()
        except TimeoutError:
            log.warning("action %s timed out (run %s)", action.name, run_id)
            result = ActionResult(success=False, error=f"{action.name} took too long and was stopped")
        except Exception as error:
            log.exception("action %s failed (run %s)", action.name, run_id)
            result = ActionResult(success=False, error=f"{type(error).__name__}: {error}")
        await self.emit(EventType.ACTION_COMPLETED, {**payload, "result": result,
                                                     "duration": time.perf_counter() - started})
        return action, result

    async def process_actions(
        self,
        message: Memory,
        responses: Sequence[Memory],
        state: State,
        callback: HandlerCallback | None,
        *,
        run_id: uuid.UUID | None = None,
    ) -> list[ActionResult]:
        """Run every action named by the responses, in order, with the arguments the response
        carries in `content.metadata["params"]`. A refusal is in its result (`data["refused"]`)
        for the caller to say."""
        results: list[ActionResult] = []
        role = await self.role_of(message)
        for response in responses:
            arguments = response.content.metadata.get("params") or {}
            for name in response.content.actions:
                _, result = await self.run_action(
                    name, message, state, parameters=arguments.get(normalise_action(name)), callback=callback,
                    response=response, responses=responses, run_id=run_id, role=role)
                results.append(result)
        return results

    async def evaluate(
        self,
        message: Memory,
        state: State,
        did_respond: bool,
        responses: Sequence[Memory] = (),
    ) -> list[str]:
        """Run the evaluators whose validate passes, concurrently; return the names that ran."""
        chosen: list[Evaluator] = []
        for evaluator in self.evaluators:
            if not (did_respond or evaluator.always):
                continue
            try:
                if await evaluator.validate(self, message, state):
                    chosen.append(evaluator)
            except Exception:
                log.exception("evaluator %s validate failed", evaluator.name)
        results = await asyncio.gather(
            *(e.handler(self, message, state, list(responses)) for e in chosen), return_exceptions=True
        )
        for evaluator, result in zip(chosen, results, strict=True):
            if isinstance(result, BaseException):
                trace = None if isinstance(result, ModelError) else (type(result), result, result.__traceback__)
                log.error("evaluator %s failed: %s", evaluator.name, result, exc_info=trace)
            await self.emit(EventType.EVALUATOR_COMPLETED, {"runtime": self, "evaluator": evaluator.name})
        return [e.name for e in chosen]

