"""The model rounds of one reply: tools run and their results go back until the model replies.

Models with native tool calling (OpenAI `tool_calls`, Anthropic `tool_use`) get the allowed
actions as function definitions; the others name actions in the XML answer with arguments in
<params>. Either way a round's tools run through `runtime.run_action` (role, validate, schema,
timeout), each call is stored as a memory of the room, and the loop is bounded by MAX_TOOL_STEPS
rounds and TOOL_TIME_BUDGET seconds: after that the model must answer without calling more.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from bot.plugin import Action, State, ToolCall, ToolStep
from bot.tools import arguments_json, cut, result_for_model, steps_text, tool_spec
from bot.types import Content, Memory, ModelType

from .parsing import ParsedResponse, clean_plain_reply, parse_response
from .streaming import ReplyText
from .templates import render, template_for

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

    from .pipeline import ReplySender

# Ways to answer, never offered as tools: the final text is the answer.
ANSWERS = {"REPLY", "NONE", "IGNORE"}
RESULT_PREVIEW = 300  # characters of a result kept in the stored memory's text


def tool_memory(runtime: AgentRuntime, message: Memory, call: ToolCall, result: str, success: bool,
                run_id: uuid.UUID) -> Memory:
    """A tool call and its result as a memory of the room: in history, in the API, in prompts."""
    return Memory(
        entity_id=runtime.agent_id, agent_id=runtime.agent_id, room_id=message.room_id, world_id=message.world_id,
        content=Content(
            text=f"[{call.name} {arguments_json(call.arguments)} → {cut(result, RESULT_PREVIEW)}]",
            actions=[call.name], source=message.content.source, in_reply_to=message.id,
            metadata={"tool_call": {"id": call.id, "name": call.name, "arguments": call.arguments,
                                    "result": result, "success": success}},
        ),
        metadata={"run_id": str(run_id)},
    )


def is_tool_memory(memory: Memory) -> bool:
    return "tool_call" in memory.content.metadata


class Turn:
    """One message's model rounds: `native()` or `xml()` returns the final answer, or None when a
    tool already delivered the reply itself (an image, buttons)."""

    def __init__(self, runtime: AgentRuntime, message: Memory, state: State, sender: ReplySender,
                 run_id: uuid.UUID, plain: dict[str, Any] | None) -> None:
        self.runtime, self.message, self.state, self.sender = runtime, message, state, sender
        self.run_id, self.plain = run_id, plain
        self.steps: list[ToolStep] = []
        self.deadline = time.monotonic() + runtime.settings.tool_time_budget

    def _may_call_tools(self) -> bool:
        return len(self.steps) < self.runtime.settings.max_tool_steps and self._time_left() > 0

    def _time_left(self) -> float:
        return self.deadline - time.monotonic()

    def _base_params(self) -> dict[str, Any]:
        return {"system": self.runtime.character.system, "room_id": self.message.room_id,
                "entity_id": self.message.entity_id}

    async def _allowed(self) -> list[Action]:
        provided = self.state.data.get("providers", {}).get("ACTIONS")
        if provided is not None and "allowed" in provided.data:
            return list(provided.data["allowed"])
        return await self.runtime.allowed_actions(self.message, self.state)

    # Running tools -----------------------------------------------------------------------------
    async def call_tools(self, calls: list[ToolCall], response: Memory | None = None) -> ToolStep:
        """Run one round's calls in order, each within what is left of TOOL_TIME_BUDGET; the step
        holds each result (or error) as the model will read it."""
        runtime = self.runtime
        step = ToolStep(calls=calls, results=[], text=response.content.text if response else "")
        role = await runtime.role_of(self.message)
        for call in calls:
            left = self._time_left()
            if call.error:  # unreadable arguments: nothing runs, the model is told why
                success, text = False, f"error: {call.error}"
            elif left <= 0:
                success, text = False, "error: no time was left for this call (TOOL_TIME_BUDGET)"
            else:
                _, result = await runtime.run_action(
                    call.name, self.message, self.state, parameters=call.arguments, callback=self.sender,
                    response=response, responses=[response] if response else [], run_id=self.run_id, role=role,
                    time_limit=left)
                await self.sender.refuse([result])  # said to the asker plainly: the turn is over
                success = result.success
                text = cut(result_for_model(result.text, result.error, success), runtime.settings.tool_result_chars)
            await runtime.create_memory(tool_memory(runtime, self.message, call, text, success, self.run_id))
            step.results.append(text)
            step.success.append(success)
        self.steps.append(step)
        return step

    # Native tool calling -----------------------------------------------------------------------
    async def native(self) -> ParsedResponse | None:
        runtime = self.runtime
        tools = [tool_spec(a) for a in await self._allowed() if a.name not in ANSWERS]
        prompt = render(template_for(runtime.character.templates, "toolHandlerTemplate"), {
            **self.state.values, "providers": self.state.text, "agentName": runtime.character.name,
        })
        while True:
            # The last round still defines the tools (APIs refuse earlier tool turns without them)
            # but may not call them: tool_choice "none".
            may_call = bool(tools) and self._may_call_tools()
            params = {**self._base_params(), "prompt": prompt, "tools": tools, "tool_steps": list(self.steps),
                      "tool_choice": "auto" if may_call else "none"}
            sink = self.sender.text_sink(xml=False)
            output = await runtime.use_model_output(ModelType.TEXT_LARGE, params, plain=self.plain, stream=sink)
            if not output.tool_calls or not may_call:
                text = str(output.value or "")
                if output.structured:
                    return _native_answer(text)
                # A plain model's reply after tools states their results: nothing to clean from it.
                return ParsedResponse(text=text.strip(), actions=["REPLY"]) if self.steps else _plain_answer(text)
            if sink is not None:  # what it wrote before calling tools is not the reply
                await sink.reset()
            sent_before = len(self.sender.sent)
            await self.call_tools(output.tool_calls, _said(runtime, self.message, str(output.value or "")))
            if len(self.sender.sent) > sent_before:
                return None  # a tool sent the reply itself (an image, buttons)

    # XML ---------------------------------------------------------------------------------------
    async def xml(self) -> ParsedResponse | None:
        runtime = self.runtime
        template = template_for(runtime.character.templates, "messageHandlerTemplate")
        while True:
            may_call = self._may_call_tools()
            results = self._results_text(may_call)
            prompt = render(template, {
                **self.state.values, "providers": self.state.text, "agentName": runtime.character.name,
                "toolResults": results,
            })
            if results and "toolResults" not in template:  # a character's own template: results go last
                prompt = f"{prompt}\n\n{results}"
            sink = self.sender.text_sink(xml=True)
            parsed = await self._xml_round({**self._base_params(), "prompt": prompt}, sink)
            tools = [a for a in parsed.actions if (action := runtime.find_action(a)) is not None and action.is_tool]
            if not tools:
                return parsed
            if not may_call:  # out of rounds: the reply stands, the extra calls are dropped
                parsed.actions = [a for a in parsed.actions if a not in tools] or ["REPLY"]
                return parsed
            response = Memory(entity_id=runtime.agent_id, agent_id=runtime.agent_id, room_id=self.message.room_id,
                              content=Content(text=parsed.text, thought=parsed.thought or None, actions=tools,
                                              metadata={"options": parsed.options} if parsed.options else {}))
            calls = [ToolCall(id=f"xml-{len(self.steps)}-{i}", name=self._action_name(name),
                              arguments=parsed.arguments_for(name)) for i, name in enumerate(tools)]
            sent_before = len(self.sender.sent)
            await self.call_tools(calls, response)
            if len(self.sender.sent) > sent_before:
                return None  # a tool sent the reply itself, with the text the model wrote

    def _action_name(self, written: str) -> str:
        """The action's own name for what the model wrote (XML names are upper-cased, or a simile)."""
        action = self.runtime.find_action(written)
        return action.name if action is not None else written

    async def _xml_round(self, params: dict[str, Any], sink: ReplyText | None) -> ParsedResponse:
        output = None
        for _attempt in range(2):  # one retry when the XML is malformed, then the raw text is the reply
            output = await self.runtime.use_model_output(ModelType.TEXT_LARGE, params, plain=self.plain,
                                                         stream=sink)
            if not output.structured:
                return _plain_answer(str(output.value))
            parsed = parse_response(output.value)
            if parsed is not None:
                return parsed
        return ParsedResponse(text=str(output.value).strip() if output else "", actions=["REPLY"])

    def _results_text(self, may_call: bool) -> str:
        if not self.steps:
            return ""
        closing = ("Call another action only if these results are not enough; otherwise reply with them."
                   if may_call else "Write the reply now, using these results; call no more actions.")
        return f"# Results of the actions you took for this message\n{steps_text(self.steps)}\n{closing}"


def _said(runtime: AgentRuntime, message: Memory, text: str) -> Memory | None:
    """What the model wrote alongside its native calls, as the response the tools may read."""
    if not text.strip():
        return None
    return Memory(entity_id=runtime.agent_id, agent_id=runtime.agent_id, room_id=message.room_id,
                  content=Content(text=text))


def _plain_answer(raw: str) -> ParsedResponse:
    return ParsedResponse(text=clean_plain_reply(raw), actions=["REPLY"])


def _native_answer(raw: str) -> ParsedResponse:
    """The final text of a native round; an XML answer (a character's own template) still parses."""
    parsed = parse_response(raw) if "<text>" in raw else None
    if parsed is not None:
        return parsed
    text = raw.strip()
    if text.upper().strip(".! ") == "IGNORE":
        return ParsedResponse(text="", actions=["IGNORE"])
    return ParsedResponse(text=text, actions=["REPLY"])
