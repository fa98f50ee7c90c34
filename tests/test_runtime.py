"""AgentRuntime and the plugin system: load order, settings, state, models, events, services, actions."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.plugin import (
    Action,
    ActionResult,
    Evaluator,
    ModelOutput,
    ModelRegistration,
    Plugin,
    PluginError,
    Priority,
    Provider,
    ProviderResult,
    Service,
    resolve_plugin_order,
)
from bot.runtime import STATE_CACHE_SIZE, AgentRuntime, ModelError
from bot.settings import settings_for_character
from bot.types import Content, EventType, Memory, ModelType
from tests.runtime_helpers import make_character, make_settings


async def _runtime(store, tmp_path, *plugins, character=None, **settings) -> AgentRuntime:
    runtime = AgentRuntime(character or make_character(), make_settings(tmp_path, **settings), store, list(plugins))
    await runtime.initialize()
    return runtime


def _message(runtime: AgentRuntime, text: str = "hi") -> Memory:
    import uuid

    return Memory(entity_id=uuid.uuid4(), agent_id=runtime.agent_id, room_id=uuid.uuid4(), content=Content(text=text))


# Plugin order ----------------------------------------------------------------------------------
def test_plugins_load_in_dependency_then_priority_order():
    order = resolve_plugin_order([
        Plugin("discord", priority=Priority.PLATFORM, dependencies=["voice"]),
        Plugin("voice", priority=Priority.FEATURE),
        Plugin("openai", priority=Priority.MODEL),
        Plugin("sql", priority=Priority.STORAGE),
        Plugin("bootstrap", priority=Priority.FEATURE, dependencies=["sql"]),
    ])
    names = [p.name for p in order]
    assert names.index("sql") < names.index("openai") < names.index("bootstrap") < names.index("discord")
    assert names.index("voice") < names.index("discord")


def test_missing_dependency_is_a_clear_error():
    with pytest.raises(PluginError, match="plugin 'a' needs plugin 'zzz', which is not loaded"):
        resolve_plugin_order([Plugin("a", dependencies=["zzz"])])


def test_dependency_cycle_and_duplicate_plugin_are_errors():
    with pytest.raises(PluginError, match="cycle"):
        resolve_plugin_order([Plugin("a", dependencies=["b"]), Plugin("b", dependencies=["a"])])
    with pytest.raises(PluginError, match="registered twice"):
        resolve_plugin_order([Plugin("a"), Plugin("a")])


async def _noop(*args):
    return None


def test_duplicate_component_name_is_a_clear_error(tmp_path, sqlite_store):
    a = Plugin("a", actions=[Action("WAVE", "wave", _noop)])
    b = Plugin("b", actions=[Action("wave", "wave too", _noop)])
    with pytest.raises(PluginError, match="action 'wave' is defined by both plugin 'a' and 'b'"):
        AgentRuntime(make_character(), make_settings(tmp_path), sqlite_store, [a, b])


# Settings --------------------------------------------------------------------------------------
async def test_get_setting_precedence_and_falsy_values(tmp_path, sqlite_store, monkeypatch):
    monkeypatch.setenv("FROM_ENV", "env")
    monkeypatch.setenv("SHARED", "env")
    character = make_character(secrets={"SHARED": "secret", "ZERO": 0},
                               settings={"SHARED": "setting", "ONLY_SETTING": "false",
                                         "secrets": {"NESTED": "nested", "SHARED": "nested"}})
    runtime = await _runtime(sqlite_store, tmp_path, character=character)
    assert runtime.get_setting("SHARED") == "secret"
    assert runtime.get_setting("ONLY_SETTING") == "false"
    assert runtime.get_setting("ZERO") == 0
    assert runtime.get_setting("NESTED") == "nested"
    assert runtime.get_setting("FROM_ENV") == "env"
    assert runtime.get_setting("CONVERSATION_LENGTH") == 32
    assert runtime.get_setting("MISSING", "default") == "default"


async def test_get_setting_gives_a_character_only_its_own_bot_token(tmp_path, sqlite_store, monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "111:process-token")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-process")
    process = make_settings(tmp_path, telegram_bot_token="111:process-token", openai_api_key="sk-process")
    own = make_character(name="Own", secrets={"TELEGRAM_BOT_TOKEN": "222:own-token"})
    other = make_character(name="Other")
    runtimes = [AgentRuntime(c, settings_for_character(process, c, source=f"{c.name}.json", alone=False),
                             sqlite_store, []) for c in (own, other)]
    assert runtimes[0].get_setting("TELEGRAM_BOT_TOKEN") == "222:own-token"
    assert runtimes[1].get_setting("TELEGRAM_BOT_TOKEN") is None, "several characters: no fallback to the process's"
    assert runtimes[1].get_setting("OPENAI_API_KEY") == "sk-process", "model keys are shared"


# State -----------------------------------------------------------------------------------------
async def test_compose_state_runs_providers_concurrently_in_position_order(tmp_path, sqlite_store):
    both = asyncio.Event()
    started = []

    def provider(name: str, position: int, **flags):
        async def get(runtime, message, state):
            started.append(name)
            if len(started) == 2:
                both.set()
            await asyncio.wait_for(both.wait(), 2)  # only completes if the two run at the same time
            return ProviderResult(text=f"[{name}]", values={name: True})
        return Provider(name, get, position=position, **flags)

    plugin = Plugin("p", providers=[provider("LATE", 9), provider("EARLY", 1),
                                    provider("DYN", 5, dynamic=True), provider("PRIV", 6, private=True)])
    runtime = await _runtime(sqlite_store, tmp_path, plugin)
    message = _message(runtime)
    state = await runtime.compose_state(message)
    assert state.text == "[EARLY]\n\n[LATE]"
    assert state.values == {"EARLY": True, "LATE": True}
    with_dynamic = await runtime.compose_state(message, include=["DYN", "PRIV"])
    assert with_dynamic.text == "[EARLY]\n\n[DYN]\n\n[PRIV]\n\n[LATE]"
    only = await runtime.compose_state(message, only=["LATE"])
    assert only.text == "[LATE]"
    assert started.count("EARLY") == 1, "cached per message"


async def test_failing_provider_is_skipped(tmp_path, sqlite_store, caplog):
    async def broken(runtime, message, state):
        raise ValueError("nope")

    async def fine(runtime, message, state):
        return ProviderResult(text="fine")

    runtime = await _runtime(sqlite_store, tmp_path, Plugin("p", providers=[Provider("B", broken), Provider("F", fine)]))
    state = await runtime.compose_state(_message(runtime))
    assert state.text == "fine" and "provider B failed" in caplog.text


async def test_state_cache_is_bounded(tmp_path, sqlite_store):
    async def get(runtime, message, state):
        return ProviderResult(text="x")

    runtime = await _runtime(sqlite_store, tmp_path, Plugin("p", providers=[Provider("X", get)]))
    for _ in range(STATE_CACHE_SIZE + 50):
        await runtime.compose_state(_message(runtime))
    assert len(runtime._state_cache) == STATE_CACHE_SIZE


# Models ----------------------------------------------------------------------------------------
async def test_use_model_falls_back_and_reports_usage(tmp_path, sqlite_store):
    async def failing(runtime, params):
        raise ConnectionError("down")

    async def working(runtime, params):
        return ModelOutput("hello", model="m2", prompt_tokens=7, completion_tokens=3)

    plugins = [Plugin("first", priority=Priority.MODEL, models=[ModelRegistration(ModelType.TEXT_LARGE, failing, "first", 0)]),
               Plugin("second", priority=Priority.MODEL, models=[ModelRegistration(ModelType.TEXT_LARGE, working, "second", 1)])]
    runtime = await _runtime(sqlite_store, tmp_path, *plugins)
    used = []

    async def on_model(payload):
        used.append((payload["provider"], payload["ok"], payload.get("prompt_tokens")))

    runtime.on(EventType.MODEL_USED, on_model)
    room = _message(runtime).room_id
    assert await runtime.use_model(ModelType.TEXT_LARGE, {"prompt": "p", "room_id": room}) == "hello"
    assert used == [("first", False, None), ("second", True, 7)]
    await runtime.flush_usage()
    totals = await sqlite_store.usage_totals(agent_id=runtime.agent_id, room_id=room)
    assert (totals.calls, totals.prompt_tokens, totals.completion_tokens) == (1, 7, 3)


async def test_use_model_without_handlers_or_all_failing(tmp_path, sqlite_store):
    async def failing(runtime, params):
        raise ConnectionError("down")

    runtime = await _runtime(sqlite_store, tmp_path,
                             Plugin("m", models=[ModelRegistration(ModelType.TEXT_SMALL, failing, "m")]))
    with pytest.raises(ModelError, match="no model is configured for TEXT_LARGE"):
        await runtime.use_model(ModelType.TEXT_LARGE, {"prompt": "x"})
    with pytest.raises(ModelError, match="every model for TEXT_SMALL failed: m: ConnectionError: down"):
        await runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "x"})


# Events ----------------------------------------------------------------------------------------
async def test_event_handlers_run_concurrently_and_failures_are_not_fatal(tmp_path, sqlite_store, caplog):
    both = asyncio.Event()
    calls = []

    async def waits(payload):
        calls.append("waits")
        await asyncio.wait_for(both.wait(), 2)

    async def sets(payload):
        calls.append("sets")
        both.set()

    async def fails(payload):
        raise RuntimeError("handler broke")

    runtime = await _runtime(sqlite_store, tmp_path, Plugin("e", events={"CUSTOM": [waits, fails, sets]}))
    with caplog.at_level(logging.ERROR):
        await runtime.emit("CUSTOM", {})
    assert sorted(calls) == ["sets", "waits"] and "handler broke" in caplog.text


# Services --------------------------------------------------------------------------------------
async def test_services_start_in_order_and_stop_in_reverse(tmp_path, sqlite_store):
    log: list[str] = []

    def service(name: str):
        class S(Service):
            service_type = name

            async def start(self):
                log.append(f"start {name}")

            async def stop(self):
                log.append(f"stop {name}")
                if name == "b":
                    raise RuntimeError("stop failed")
        return S

    runtime = await _runtime(sqlite_store, tmp_path,
                             Plugin("late", priority=Priority.PLATFORM, services=[service("c")]),
                             Plugin("early", priority=Priority.STORAGE, services=[service("a"), service("b")]))
    assert runtime.get_service("b") is not None
    await runtime.stop()
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


# Actions and evaluators ----------------------------------------------------------------------------
async def test_process_actions_matches_names_and_similes(tmp_path, sqlite_store):
    ran = []

    async def wave(ctx):
        ran.append(ctx.reply_text)
        await ctx.send("*waves*")
        return ActionResult(text="waved")

    async def broken(ctx):
        raise RuntimeError("bad action")

    runtime = await _runtime(sqlite_store, tmp_path, Plugin("a", actions=[
        Action("WAVE_HAND", "wave", wave, similes=["WAVE"]), Action("BREAK", "breaks", broken)]))
    message = _message(runtime)
    response = message.model_copy(update={"content": Content(text="r", actions=["wave", "break", "unknown"])})
    sent = []

    async def callback(content):
        sent.append(content.text)
        return []

    state = await runtime.compose_state(message)
    results = await runtime.process_actions(message, [response], state, callback)
    assert ran == ["r"] and sent == ["*waves*"]
    assert [r.success for r in results] == [True, False, False] and "bad action" in results[1].error
    assert results[2].error == "there is no action named unknown"


async def test_evaluate_runs_only_valid_evaluators(tmp_path, sqlite_store):
    ran = []

    def evaluator(name, valid, always=False):
        async def validate(runtime, message, state):
            return valid

        async def handler(runtime, message, state, responses):
            ran.append(name)
        return Evaluator(name, name, handler, validate, always=always)

    runtime = await _runtime(sqlite_store, tmp_path, Plugin("e", evaluators=[
        evaluator("yes", True), evaluator("no", False), evaluator("always", True, always=True)]))
    message = _message(runtime)
    state = await runtime.compose_state(message)
    assert sorted(await runtime.evaluate(message, state, did_respond=True)) == ["always", "yes"]
    ran.clear()
    assert await runtime.evaluate(message, state, did_respond=False) == ["always"]
