"""What tools share across providers: checking a model's arguments, naming, and cutting results.

An action with a `parameters` JSON schema is a tool. Models with native tool calling get it as a
function definition; others see the schema in the XML prompt. Either way the model's arguments
are checked here before the handler runs, and a bad call goes back to the model as an error it
can correct rather than reaching the handler.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from bot.plugin import Action, ToolSpec, ToolStep

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
# OpenAI and Anthropic both accept function names of at most 64 of these characters.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
NAME_LIMIT = 64


def normalise_action(name: str) -> str:
    """How action names compare: case, surrounding space and inner spaces do not matter."""
    return name.strip().upper().replace(" ", "_")


def tool_name(*parts: str) -> str:
    """A function name every tool API accepts, from parts such as an MCP server and tool name."""
    name = "__".join(_UNSAFE.sub("_", p).strip("_") for p in parts if p)
    return name[:NAME_LIMIT] or "tool"


def argument_problem(schema: dict[str, Any], arguments: dict[str, Any]) -> str:
    """Why the arguments do not fit the schema ("" when they do), in one line for the model."""
    try:
        error = next(iter(Draft202012Validator(schema).iter_errors(arguments)), None)
    except SchemaError:  # the tool's own schema is broken: let the tool judge its input
        return ""
    if error is None:
        return ""
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


def tool_spec(action: Action) -> ToolSpec:
    return ToolSpec(name=action.name, description=action.description,
                    parameters=action.parameters if action.parameters is not None else EMPTY_SCHEMA)


def cut(text: str, limit: int) -> str:
    """A tool result cut to `limit` characters, saying so, so a huge page never floods the prompt."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[cut: {len(text) - limit} more characters]"


def result_for_model(text: str | None, error: str | None, success: bool) -> str:
    """What the model reads back for one call."""
    if success:
        return text or "done"
    return f"error: {error or 'the tool failed'}"


def arguments_json(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def steps_text(steps: list[ToolStep]) -> str:
    """Earlier tool rounds as lines of text, for prompts that cannot carry tool turns."""
    return "\n".join(f"- {call.name} {arguments_json(call.arguments)} → {result}"
                     for step in steps for call, result in zip(step.calls, step.results, strict=True))
