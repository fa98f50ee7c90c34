"""Tools: actions with parameters, called natively (OpenAI tool_calls, Anthropic tool_use) or named
in the XML answer, run by the real pipeline with their results fed back to the model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from bot.app import App
from bot.permissions import Role
from bot.plugin import Action, ActionContext, ActionResult, ModelOutput, Plugin, ToolCall
from bot.runtime import AgentRuntime
from bot.types import ChannelType, ModelType
from plugins.anthropic_provider import anthropic_plugin
from plugins.bootstrap import bootstrap_plugin
from plugins.dice import ROLL_DICE
from plugins.openai_provider import openai_plugin
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI, ToolCalls
from tests.fakes.telegram_api import FakeTelegram
from tests.runtime_helpers import (
    ScriptedModel,
    make_character,
    make_chat,
    make_settings,
    start_runtime,
    xml_reply,
)
from tests.server_helpers import character, settings_for
from tests.test_telegram import TOKEN, quick_connector  # noqa: F401 - fixture: short polls


def tool_results(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body.get("messages", []) if m.get("role") == "tool"]


async def test_a_telegram_dm_rolls_a_die_through_native_tool_calls(tmp_path: Path) -> None:
    """The issue's example: the fake OpenAI server answers with tool_calls, the plugin tool runs
    with the model's arguments, and its result reaches the reply in the same chat."""

    def reply(body: dict[str, Any]) -> str | ToolCalls:
        results = tool_results(body)
        return f"The die says {results[0].split(': ')[1]}." if results else ToolCalls([("ROLL_DICE", {"sides": 6})])

    async with FakeOpenAI(reply=reply) as model, FakeTelegram(TOKEN) as telegram:
        settings = settings_for(tmp_path, model.base_url, telegram_bot_token=TOKEN, telegram_api_root=telegram.root,
                                shutdown_timeout=3)
        app = App(settings, character(plugins=["plugins.dice:plugin"]))
        await app.start()
        try:
            user = FakeTelegram.user()
            telegram.push({"message": telegram.message(user, FakeTelegram.private_chat(user), "roll a die")})
            (sent,) = await telegram.wait_for("sendMessage", timeout=10)
            first, second = [r.body for r in model.requests_to("/chat/completions")][:2]
            offered = {t["function"]["name"]: t["function"] for t in first["tools"]}
            assert offered["ROLL_DICE"]["parameters"]["properties"]["sides"]["type"] == "integer"
            assert "REPLY" not in offered and "IGNORE" not in offered  # the final text is the answer
            [result] = tool_results(second)
            assert result.startswith("rolled 1d6: ") and 1 <= int(result.split(": ")[1]) <= 6
            assert sent["text"] == f"The die says {result.split(': ')[1]}."
            assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "ROLL_DICE"
            history = await app.runtime.store.get_memories(agent_id=app.runtime.agent_id, count=10)
            [stored] = [m for m in history if "tool_call" in m.content.metadata]
            assert stored.content.metadata["tool_call"]["arguments"] == {"sides": 6}
            assert stored.content.metadata["tool_call"]["result"] == result
            metrics = await _metrics(app)
            assert 'parley_actions_total{action="ROLL_DICE",outcome="ok",tool="yes"} 1.0' in metrics
        finally:
            await app.stop()


async def _metrics(app: App) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.server.port}/metrics") as response:
        return await response.text()


async def test_anthropic_tool_use_round_trip(tmp_path: Path, sqlite_store) -> None:
    def reply(body: dict[str, Any]) -> str | ToolCalls:
        results = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]
                   if b.get("type") == "tool_result"]
        return f"Result: {results[0]['content']}" if results else ToolCalls([("ROLL_DICE", {"sides": 20, "count": 2})])

    async with FakeAnthropic(reply=reply) as fake:
        settings = make_settings(tmp_path, anthropic_base_url=fake.base_url)
        runtime = await _dice_runtime(sqlite_store, settings, anthropic_plugin(settings, "sk-ant-test"))
        try:
            chat = make_chat(runtime)
            await chat.send("roll 2d20")
            assert chat.sent[-1].text.startswith("Result: rolled 2d20: ")
            second = fake.requests[-1].body
            assert {t["name"] for t in second["tools"]} >= {"ROLL_DICE"}
            use, result = second["messages"][1]["content"][0], second["messages"][2]["content"][0]
            assert use["type"] == "tool_use" and use["input"] == {"sides": 20, "count": 2}
            assert result["tool_use_id"] == use["id"] and result["is_error"] is False
        finally:
            await runtime.stop()


# The loop's bounds and bad calls, with a scripted native model --------------------------------------
def _native(*replies: Any) -> ScriptedModel:
    model = ScriptedModel()
    model.script(ModelType.TEXT_LARGE, *replies)
    return model


def _calls(*calls: tuple[str, dict[str, Any]]) -> ModelOutput:
    return ModelOutput(value="", tool_calls=[ToolCall(id=f"c{i}", name=n, arguments=a) for i, (n, a) in enumerate(calls)])


async def _runtime(store, tmp_path: Path, model: ScriptedModel, *actions: Action, **settings: Any):
    plugin = model.plugin(native_tools=True)
    runtime = AgentRuntime(make_character(), make_settings(tmp_path, **settings), store,
                           [bootstrap_plugin(), plugin, Plugin("tools", actions=list(actions))])
    await runtime.initialize()
    return runtime


def _echo(name: str = "ECHO", role: Role = Role.VISITOR, seen: list | None = None, delay: float = 0) -> Action:
    async def handler(ctx: ActionContext) -> str:
        if seen is not None:
            seen.append(ctx.parameters)
        if delay:
            await asyncio.sleep(delay)
        return f"echo {ctx.parameters.get('word')}"

    return Action(name, "Echo a word.", handler, role=role,
                  parameters={"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]})


async def test_tool_rounds_stop_at_max_tool_steps(sqlite_store, tmp_path: Path) -> None:
    model = _native(*[_calls(("ECHO", {"word": str(i)})) for i in range(10)])
    model.defaults[ModelType.TEXT_LARGE] = "done"
    seen: list = []
    runtime = await _runtime(sqlite_store, tmp_path, model, _echo(seen=seen), max_tool_steps=3)
    chat = make_chat(runtime)
    outcome = await chat.send("echo forever")
    calls = [p for t, p in model.calls if t == ModelType.TEXT_LARGE]
    assert len(seen) == 3 and len(calls) == 4
    # The last round may only answer: the tools stay defined (APIs refuse tool turns without them).
    assert [p["tool_choice"] for p in calls] == ["auto", "auto", "auto", "none"] and all(p["tools"] for p in calls)
    assert [len(p["tool_steps"]) for p in calls] == [0, 1, 2, 3]
    # It still asked for a tool with none offered, writing no text: the asker gets the apology, not silence.
    assert outcome.status == "completed" and [c.text for c in chat.sent] == [runtime.settings.error_reply]


async def test_the_time_budget_ends_tool_rounds(sqlite_store, tmp_path: Path) -> None:
    model = _native(_calls(("ECHO", {"word": "slow"})), _calls(("ECHO", {"word": "again"})), "finished")
    seen: list = []
    runtime = await _runtime(sqlite_store, tmp_path, model, _echo(seen=seen, delay=0.3), tool_time_budget=0.2)
    chat = make_chat(runtime)
    await chat.send("go")
    calls = [p for t, p in model.calls if t == ModelType.TEXT_LARGE]
    assert len(seen) == 1 and calls[1]["tool_choice"] == "none"  # over budget: the next round may only answer


async def test_bad_calls_go_back_to_the_model_and_never_reach_the_handler(sqlite_store, tmp_path: Path) -> None:
    seen: list = []
    hung = Action("HANG", "Never returns.", lambda ctx: asyncio.Event().wait(),
                  parameters={"type": "object", "properties": {}}, timeout=0.2)
    model = _native(_calls(("ECHO", {"word": 5}), ("NOPE", {}), ("HANG", {})),
                    ModelOutput(value="", tool_calls=[ToolCall(id="x", name="ECHO", arguments={}, error="not JSON")]),
                    "I could not do it.")
    runtime = await _runtime(sqlite_store, tmp_path, model, _echo(seen=seen), hung)
    chat = make_chat(runtime)
    await chat.send("try things")
    assert seen == []
    second, third = [p["tool_steps"] for t, p in model.calls if t == ModelType.TEXT_LARGE][1:3]
    invalid, unknown, slow = second[0].results
    assert invalid == "error: invalid arguments for ECHO: word: 5 is not of type 'string'"
    assert unknown == "error: there is no action named NOPE"
    assert slow == "error: HANG took too long and was stopped"
    assert third[1].results == ["error: not JSON"]
    assert chat.sent[-1].text == "I could not do it."


async def test_tools_beyond_the_askers_role_are_not_offered_and_refused_if_called(sqlite_store, tmp_path: Path):
    seen: list = []
    model = _native(_calls(("ADMIN_ECHO", {"word": "x"})), "unused")
    runtime = await _runtime(sqlite_store, tmp_path, model, _echo(seen=seen), _echo("ADMIN_ECHO", Role.OWNER, seen))
    chat = make_chat(runtime, "dm", ChannelType.DM)  # a DM's asker is ADMIN, not OWNER
    await chat.send("do the admin thing")
    [first] = [p for t, p in model.calls if t == ModelType.TEXT_LARGE]
    assert "ADMIN_ECHO" not in {t.name for t in first["tools"]} and "ECHO" in {t.name for t in first["tools"]}
    assert seen == [] and chat.sent[-1].text == "Sorry, only my owner can ask me to do that."


async def test_xml_models_call_tools_with_params_and_read_the_results(sqlite_store, tmp_path: Path) -> None:
    model = ScriptedModel()
    model.script(ModelType.TEXT_LARGE,
                 '<response><actions>ECHO</actions><params>{"ECHO": {"word": "hi"}}</params><text>one sec</text></response>',
                 xml_reply("It said hi."))
    seen: list = []
    runtime = await start_runtime(sqlite_store, make_settings(tmp_path), model, Plugin("t", actions=[_echo(seen=seen)]))
    chat = make_chat(runtime)
    await chat.send("echo hi")
    assert seen == [{"word": "hi"}]
    prompts = model.prompts(ModelType.TEXT_LARGE)
    assert "- ECHO(word: string): Echo a word." in prompts[0]
    assert '- ECHO {"word":"hi"} → echo hi' in prompts[1]
    assert [c.text for c in chat.sent] == ["It said hi."]  # "one sec" was not the answer
    history = await runtime.store.get_memories(agent_id=runtime.agent_id, room_id=chat.room.id, count=10)
    assert any(m.content.metadata.get("tool_call", {}).get("result") == "echo hi" for m in history)


async def test_a_tool_that_sends_the_reply_itself_ends_the_turn(sqlite_store, tmp_path: Path) -> None:
    async def show(ctx: ActionContext) -> ActionResult:
        await ctx.send("here is the chart")
        return ActionResult(text="chart sent")

    chart = Action("SHOW_CHART", "Send a chart.", show, parameters={"type": "object", "properties": {}})
    model = _native(_calls(("SHOW_CHART", {})))
    runtime = await _runtime(sqlite_store, tmp_path, model, chart)
    chat = make_chat(runtime)
    await chat.send("chart please")
    assert [c.text for c in chat.sent] == ["here is the chart"] and model.count(ModelType.TEXT_LARGE) == 1


async def test_openai_bad_json_arguments_are_reported_to_the_model(tmp_path: Path, sqlite_store) -> None:
    async with FakeOpenAI() as fake:
        fake.script(ToolCalls([("ROLL_DICE", "{not json")]), "Sorry, let me try that again later.")
        runtime = await _openai_runtime(sqlite_store, make_settings(tmp_path, openai_base_url=fake.base_url))
        try:
            chat = make_chat(runtime)
            await chat.send("roll")
            assert tool_results(fake.requests[-1].body) == [
                "error: the arguments were not a JSON object; call it again with valid JSON"]
            assert chat.sent[-1].text == "Sorry, let me try that again later."
        finally:
            await runtime.stop()


async def _openai_runtime(store, settings) -> AgentRuntime:
    return await _dice_runtime(store, settings, openai_plugin(settings, None))


async def _dice_runtime(store, settings, model: Plugin) -> AgentRuntime:
    """A runtime answered by a real provider plugin (against a fake API), with the dice tool."""
    runtime = AgentRuntime(make_character(), settings, store, [bootstrap_plugin(), model,
                                                               Plugin("dice", actions=[ROLL_DICE])])
    await runtime.initialize()
    return runtime


async def test_openai_native_tools_can_be_turned_off(tmp_path: Path, sqlite_store) -> None:
    async with FakeOpenAI(reply=xml_reply("plain XML it is")) as fake:
        settings = make_settings(tmp_path, openai_base_url=fake.base_url, openai_native_tools=False)
        runtime = await _openai_runtime(sqlite_store, settings)
        try:
            chat = make_chat(runtime)
            await chat.send("roll")
            body = fake.requests[-1].body
            assert "tools" not in body and "ROLL_DICE(sides?: integer, count?: integer)" in json.dumps(body)
            assert chat.sent[-1].text == "plain XML it is"
        finally:
            await runtime.stop()


async def test_anthropic_last_round_keeps_tools_defined_but_forbids_calls(tmp_path: Path, sqlite_store) -> None:
    """The real API refuses tool turns without tool definitions (the fake does too): the round
    after MAX_TOOL_STEPS sends them with tool_choice none, and the reply arrives."""

    def reply(body: dict[str, Any]) -> str | ToolCalls:
        if body.get("tool_choice", {}).get("type") == "none":
            return "Here is what I found."
        return ToolCalls([("ROLL_DICE", {"sides": 6})])

    async with FakeAnthropic(reply=reply) as fake:
        settings = make_settings(tmp_path, anthropic_base_url=fake.base_url, max_tool_steps=1)
        runtime = await _dice_runtime(sqlite_store, settings, anthropic_plugin(settings, "sk-ant-test"))
        try:
            chat = make_chat(runtime)
            await chat.send("roll and roll and roll")
            assert [c.text for c in chat.sent] == ["Here is what I found."]
            last = fake.requests[-1].body
            assert last["tools"] and last["tool_choice"] == {"type": "none"}
        finally:
            await runtime.stop()


async def test_a_plain_models_reply_after_tools_is_not_cut_at_a_colon(sqlite_store, tmp_path: Path) -> None:
    """A small local model's reply states the results; a result line like "High: 20 C" is kept."""
    forecast = Action("FORECAST", "Forecast.", lambda ctx: _return("Berlin today\nHigh: 20 C\nLow: 10 C"),
                      parameters={"type": "object", "properties": {}})

    def answer(params: dict[str, Any]) -> Any:
        if params["tool_steps"]:
            return ModelOutput(value="FORECAST → " + params["tool_steps"][0].results[0])
        return _calls(("FORECAST", {}))

    model = ScriptedModel()
    model.defaults[ModelType.TEXT_LARGE] = answer
    plugin = model.plugin(structured=False, native_tools=True)
    runtime = AgentRuntime(make_character(), make_settings(tmp_path), sqlite_store,
                           [bootstrap_plugin(), plugin, Plugin("tools", actions=[forecast])])
    await runtime.initialize()
    chat = make_chat(runtime)
    await chat.send("forecast?")
    assert chat.sent[-1].text == "FORECAST → Berlin today\nHigh: 20 C\nLow: 10 C"


async def _return(value: str) -> str:
    return value


async def test_the_time_budget_bounds_the_calls_inside_a_round(sqlite_store, tmp_path: Path) -> None:
    """A call gets at most what is left of TOOL_TIME_BUDGET, whatever its own timeout; a call with
    no time left does not start."""
    started: list[str] = []

    async def hang(ctx: ActionContext) -> str:
        started.append(ctx.parameters["word"])
        await asyncio.Event().wait()
        return "never"

    slow = Action("SLOW", "Slow.", hang, timeout=600,
                  parameters={"type": "object", "properties": {"word": {"type": "string"}}})
    model = _native(_calls(("SLOW", {"word": "a"}), ("SLOW", {"word": "b"})), "gave up")
    runtime = await _runtime(sqlite_store, tmp_path, model, slow, tool_time_budget=0.3)
    chat = make_chat(runtime)
    await asyncio.wait_for(chat.send("go"), 10)
    [step] = [p["tool_steps"] for t, p in model.calls if t == ModelType.TEXT_LARGE][1]
    assert started == ["a"]
    assert step.results == ["error: SLOW took too long and was stopped",
                            "error: no time was left for this call (TOOL_TIME_BUDGET)"]
    assert step.success == [False, False] and chat.sent[-1].text == "gave up"


async def test_openai_without_native_tools_reads_earlier_results_as_text(tmp_path: Path, sqlite_store) -> None:
    """OPENAI_NATIVE_TOOLS=false holds even when OpenAI is the fallback of a model that ran tools."""
    from bot.plugin import ToolStep
    from bot.tools import tool_spec

    async with FakeOpenAI(reply="fine") as fake:
        runtime = await _openai_runtime(sqlite_store, make_settings(tmp_path, openai_base_url=fake.base_url,
                                                                    openai_native_tools=False))
        try:
            step = ToolStep(calls=[ToolCall(id="c1", name="ROLL_DICE", arguments={"sides": 6})],
                            results=["rolled 1d6: 4"], success=[True])
            await runtime.use_model(ModelType.TEXT_LARGE, {"prompt": "roll", "tools": [tool_spec(ROLL_DICE)],
                                                           "tool_steps": [step], "tool_choice": "auto"})
            body = fake.requests[-1].body
            assert "tools" not in body and "tool_choice" not in body
            assert not any(m.get("role") == "tool" or m.get("tool_calls") for m in body["messages"])
            assert '- ROLL_DICE {"sides":6} → rolled 1d6: 4' in body["messages"][-1]["content"]
        finally:
            await runtime.stop()
