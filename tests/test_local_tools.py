"""The offline model calls tools: the bundled SmolLM2 chooses a plugin's tool through a JSON-schema
grammar, the pipeline runs it, and the result reaches the reply; ordinary chat calls none."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.plugin import Action, ActionContext, Plugin, ToolCall, ToolSpec, ToolStep
from bot.runtime import AgentRuntime
from bot.store.factory import create_store
from plugins.bootstrap import bootstrap_plugin
from plugins.bootstrap.parsing import clean_plain_reply
from plugins.dice import ROLL_DICE
from plugins.local_provider import (
    candidate_tools,
    fit_numbers,
    local_plugin,
    parse_tool_call,
    results_reply,
    runtime_installed,
    tool_call_schema,
)
from tests.runtime_helpers import make_character, make_chat, make_settings

SIDES = {"type": "object", "properties": {"sides": {"type": "integer", "minimum": 2,
                                                    "description": "how many sides the die has (default 6)"}},
         "required": []}
ROLL = ToolSpec("ROLL_DIE", "Roll a die with the given number of sides.", SIDES)
STATE_TOOLS = [ToolSpec(name, text, {"type": "object", "properties": {}}) for name, text in (
    ("MUTE_ROOM", "Stop answering in this room unless named."),
    ("FOLLOW_ROOM", "Take part in this room more actively."),
    ("UPDATE_ENTITY", "Remember what the speaker tells you about themself."),
    ("CHOOSE_OPTION", "Offer choices as buttons (in XML, list them in <options>a|b|c</options>)."),
)]
CHAT = ["hello, how are you?", "hi! I'm Sam.", "My dog is called Rex.", "tell me a joke", "I live in Lisbon.",
        "what's a good way to spend a rainy afternoon?", "do you like music?", "What is my dog called?",
        "thanks, that's all for now", "I love rock and roll", "my die is cast", "can you recommend a book?"]


# The gate and the grammar, without the model ----------------------------------------------------
@pytest.mark.parametrize("text", CHAT)
def test_ordinary_chat_names_no_tool(text: str) -> None:
    assert candidate_tools([ROLL, *STATE_TOOLS], text) == []


@pytest.mark.parametrize("text", ["roll a die", "please roll a 20-sided die", "Roll the die, 12 sides"])
def test_a_message_naming_a_tool_makes_it_a_candidate(text: str) -> None:
    assert candidate_tools([*STATE_TOOLS, ROLL], text) == [ROLL]


def test_number_fields_take_only_numbers_the_user_wrote() -> None:
    assert fit_numbers(SIDES, "a 20-sided die")["properties"]["sides"]["enum"] == [20]
    assert fit_numbers(SIDES, "a 1-sided die")["properties"] == {}  # below the minimum: the tool's default
    assert fit_numbers(SIDES, "a die")["properties"] == {}
    required = {**SIDES, "required": ["sides"]}
    assert fit_numbers(required, "a die")["properties"]["sides"] == SIDES["properties"]["sides"]
    assert fit_numbers(required, "2.5 sides")["required"] == ["sides"]  # not an integer: still free
    schema = tool_call_schema([ROLL], "roll a d8")
    assert schema["anyOf"][0]["properties"]["arguments"]["properties"]["sides"]["enum"] == [8]
    assert schema["anyOf"][-1]["properties"]["tool"] == {"const": "none"}


@pytest.mark.parametrize(("text", "fields"), [
    ("roll a die", {}),
    ("roll a 20-sided die", {"sides": [20]}),
    ("roll 2 dice", {"count": [2]}),
    ("roll 4 dice with 8 sides", {"sides": [8], "count": [4]}),
    ("roll two 12-sided dice", {"sides": [12]}),
    ("roll 3d20", {"sides": [3, 20]}),  # dice notation is not understood: the model picks one
])
def test_each_number_goes_to_the_field_beside_it(text: str, fields: dict[str, list[int]]) -> None:
    properties = fit_numbers(ROLL_DICE.parameters, text)["properties"]
    assert {key: spec["enum"] for key, spec in properties.items()} == fields


def test_tool_call_parsing_accepts_only_offered_tools() -> None:
    call = parse_tool_call('{"tool": "ROLL_DIE", "arguments": {"sides": 20}}', [ROLL])
    assert call is not None and call.name == "ROLL_DIE" and call.arguments == {"sides": 20}
    assert parse_tool_call('{"tool": "none"}', [ROLL]) is None
    assert parse_tool_call('{"tool": "MUTE_ROOM", "arguments": {}}', [ROLL]) is None
    assert parse_tool_call('{"tool": "ROLL_DIE", "argu', [ROLL]) is None  # cut at TOOL_CALL_TOKENS


def test_results_reply_states_each_result() -> None:
    steps = [ToolStep(calls=[ToolCall("1", "ROLL_DIE", {}), ToolCall("2", "ROLL_DIE", {"sides": 0})],
                      results=["rolled 4", "error: invalid arguments for ROLL_DIE: sides: 0 is less than 2"])]
    reply = results_reply(steps)
    assert reply == "ROLL_DIE → rolled 4\nROLL_DIE failed → invalid arguments for ROLL_DIE: sides: 0 is less than 2"
    assert clean_plain_reply(reply) == reply  # not mistaken for a "Name: " lead and cut


# The real model through the pipeline -----------------------------------------------------------
needs_model = pytest.mark.skipif(not runtime_installed(), reason="xllamacpp is not installed")


class Dice:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.rng = random.Random(7)

    async def roll(self, ctx: ActionContext) -> str:
        self.calls.append(dict(ctx.parameters))
        sides = int(ctx.parameters.get("sides", 6))
        return f"rolled {self.rng.randint(1, sides)} on a {sides}-sided die"

    def plugin(self) -> Plugin:
        return Plugin("dice", actions=[Action("ROLL_DIE", ROLL.description, self.roll, parameters=SIDES)])


# Keys or model settings in the developer's environment must not change what is tested.
pytestmark = pytest.mark.usefixtures("no_model_environment")


@pytest.fixture
async def dice_runtime(tmp_path: Path) -> AsyncIterator[tuple[AgentRuntime, Dice]]:
    settings = make_settings(tmp_path, model_providers="local", local_context_size=1024, local_max_tokens=48)
    model, reason = local_plugin(settings)
    assert model is not None, reason
    dice = Dice()
    runtime = AgentRuntime(make_character(), settings, create_store(settings),
                           [bootstrap_plugin(), model, dice.plugin()])
    await runtime.initialize()
    yield runtime, dice
    await runtime.stop()
    await runtime.store.close()


@needs_model
async def test_the_offline_model_rolls_a_die(dice_runtime: tuple[AgentRuntime, Dice]) -> None:
    runtime, dice = dice_runtime
    chat = make_chat(runtime)
    outcome = await chat.send("roll a die")
    assert outcome.status == "completed"
    assert dice.calls == [{}]  # no number given: the tool's default, not one the model made up
    assert [c.text for c in chat.sent] == ["ROLL_DIE → rolled 3 on a 6-sided die"]
    stored = await runtime.store.get_memories(agent_id=runtime.agent_id, room_id=chat.room.id, count=10)
    assert any(m.content.metadata.get("tool_call", {}).get("name") == "ROLL_DIE" for m in stored)

    outcome = await chat.send("please roll a 20-sided die")
    assert dice.calls[-1] == {"sides": 20}
    assert chat.sent[-1].text.endswith("on a 20-sided die")


@needs_model
async def test_the_offline_model_calls_no_tool_on_ordinary_chat(dice_runtime: tuple[AgentRuntime, Dice]) -> None:
    runtime, dice = dice_runtime
    chat = make_chat(runtime)
    for text in ("hello, how are you?", "I love rock and roll", "tell me a joke"):
        outcome = await chat.send(text)
        assert outcome.status == "completed" and chat.sent[-1].text.strip()
    assert dice.calls == []


@needs_model
async def test_the_offline_model_uses_the_dice_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plugins/dice.py as shipped: ROLL_DICE with optional sides and count."""
    from plugins import dice

    calls: list[dict[str, Any]] = []

    async def counted(ctx: ActionContext) -> Any:
        calls.append(dict(ctx.parameters))
        return await dice.roll_dice(ctx)

    monkeypatch.setattr(dice.ROLL_DICE, "handler", counted)
    settings = make_settings(tmp_path, model_providers="local")
    model, reason = local_plugin(settings)
    assert model is not None, reason
    runtime = AgentRuntime(make_character(), settings, create_store(settings), [bootstrap_plugin(), model, dice.plugin])
    await runtime.initialize()
    try:
        chat = make_chat(runtime)
        for text, arguments, rolled in (("roll a die", {}, "1d6"), ("roll a 20-sided die", {"sides": 20}, "1d20"),
                                         ("roll 2 dice", {"count": 2}, "2d6"), ("hello!", None, None)):
            await chat.send(text)
            if arguments is None:
                assert len(calls) == 3 and "ROLL_DICE" not in chat.sent[-1].text
            else:
                assert calls[-1] == arguments
                assert re.fullmatch(rf"ROLL_DICE → rolled {rolled}: \d+.*", chat.sent[-1].text)
    finally:
        await runtime.stop()
        await runtime.store.close()
