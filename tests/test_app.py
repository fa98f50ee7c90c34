"""Start-up wiring: plugin selection from settings and character, and when the console runs."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest

from bot.app import select_plugins
from bot.settings import ConsoleMode, Settings
from connectors.console import console_wanted
from tests.runtime_helpers import make_character, make_settings


def test_elizaos_plugin_names_map_to_builtins_and_unknown_ones_warn(tmp_path: Path):
    character = make_character(plugins=["@elizaos/plugin-openai", "@elizaos/plugin-bootstrap",
                                        "@elizaos/plugin-solana", "web-search"])
    selection = select_plugins(make_settings(tmp_path, openai_api_key="sk-x"), character)
    notes = [n for n in selection.notes if "no parley equivalent" in n]
    assert len(notes) == 2
    assert "'@elizaos/plugin-solana'" in notes[0] and "'web-search'" in notes[1]
    names = [p.name for p in selection.plugins]
    assert names[0] == "bootstrap" and "openai" in names


def test_platform_plugins_start_only_with_their_token(tmp_path: Path):
    plain = [p.name for p in select_plugins(make_settings(tmp_path), make_character(), models=[]).plugins]
    assert plain[0] == "bootstrap" and not {"telegram", "discord"} & set(plain)  # features such as tasks load too
    both = select_plugins(make_settings(tmp_path, telegram_bot_token="123456:" + "a" * 35,
                                        discord_api_token="x" * 60), make_character(), models=[])
    assert {p.name for p in both.plugins} >= {"telegram", "discord"}


def _pipe() -> io.TextIOWrapper:
    read, write = os.pipe()
    os.close(write)
    return io.TextIOWrapper(os.fdopen(read, "rb"))


def test_console_runs_for_pipes_and_files_but_not_dev_null_or_with_a_platform(tmp_path: Path):
    settings = make_settings(tmp_path)
    with _pipe() as pipe:
        assert console_wanted(settings, has_platform=False, stdin=pipe)
        assert not console_wanted(settings, has_platform=True, stdin=pipe)
    script = tmp_path / "script.txt"
    script.write_text("hi\n")
    with script.open() as file:
        assert console_wanted(settings, has_platform=False, stdin=file)
    with open(os.devnull) as devnull:
        assert not console_wanted(settings, has_platform=False, stdin=devnull)


@pytest.mark.parametrize(("mode", "expected"), [(ConsoleMode.ON, True), (ConsoleMode.OFF, False)])
def test_console_setting_overrides_detection(tmp_path: Path, mode: ConsoleMode, expected: bool):
    with open(os.devnull) as devnull:
        assert console_wanted(make_settings(tmp_path, console=mode), has_platform=True, stdin=devnull) is expected


async def test_shutdown_tells_connectors_to_stop_receiving_before_draining(tmp_path: Path):
    from bot.app import App
    from bot.plugin import Connector, Plugin, Priority
    from tests.runtime_helpers import ScriptedModel

    order: list[str] = []

    class Recording(Connector):
        source = "recording"

        async def stop_receiving(self) -> None:
            order.append("stop_receiving")

        async def stop(self) -> None:
            order.append("stop")

    app = App(make_settings(tmp_path, host="127.0.0.1"), make_character(), model_plugins=[
        ScriptedModel().plugin(), Plugin("recording", priority=Priority.PLATFORM, services=[Recording])])
    await app.start()
    drain = app.runtime.message_handler.drain

    async def recording_drain(timeout: float) -> None:
        order.append("drain")
        await drain(timeout)

    app.runtime.message_handler.drain = recording_drain
    await app.stop()
    # App's drain (SHUTDOWN_TIMEOUT), then the runtime's own at stop (nothing left to cut short).
    assert order == ["stop_receiving", "drain", "drain", "stop"]


def test_character_can_load_python_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from bot.app import StartupError

    (tmp_path / "weather_mod.py").write_text(
        "from bot.plugin import Plugin, Provider, ProviderResult\n"
        "async def now(runtime, message, state):\n"
        "    return ProviderResult(text='Weather: sunny')\n"
        "weather = Plugin(name='weather', providers=[Provider('WEATHER', now)])\n"
        "def build(settings):\n"
        "    return Plugin(name='built-' + str(settings.port))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    character = make_character(plugins=["@elizaos/plugin-bootstrap", "weather_mod:weather", "weather_mod:build"])
    names = [p.name for p in select_plugins(make_settings(tmp_path), character, models=[]).plugins]
    assert [n for n in names if n not in ("tasks", "knowledge")] == ["bootstrap", "weather", "built-0"]
    with pytest.raises(StartupError, match=r"character plugin 'weather_mod:nope': cannot load it"):
        select_plugins(make_settings(tmp_path), make_character(plugins=["weather_mod:nope"]), models=[])


def test_a_character_plugin_that_is_not_a_plugin_is_one_startup_line(tmp_path: Path, monkeypatch) -> None:
    import types

    from bot.app import StartupError, load_python_plugin

    settings = Settings(_env_file=None, data_dir=tmp_path)
    with pytest.raises(StartupError, match=r"'os:abort': abort is not a Plugin or a function returning one"):
        load_python_plugin("os:abort", settings)

    def factory(settings):
        raise KeyError("WEATHER_KEY")

    monkeypatch.setitem(sys.modules, "brokenplugin", types.SimpleNamespace(plugin=factory))
    with pytest.raises(StartupError, match=r"'brokenplugin:plugin': plugin\(settings\) failed: KeyError"):
        load_python_plugin("brokenplugin:plugin", settings)


async def test_shutdown_closes_the_store_and_stops_services_when_usage_cannot_be_written(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A failed last usage write (e.g. `database is locked`) is one log line: the services still
    stop and the store still closes, whose open SQLite connection would keep the process alive."""
    import logging
    import threading

    from bot.app import App
    from bot.plugin import Connector, Plugin, Priority
    from bot.types import ModelType
    from tests.runtime_helpers import ScriptedModel

    stopped = []

    class Recording(Connector):
        source = "recording"

        async def stop(self) -> None:
            stopped.append(self.source)

    model = ScriptedModel()
    app = App(make_settings(tmp_path, host="127.0.0.1"), make_character(), model_plugins=[
        model.plugin(), Plugin("recording", priority=Priority.PLATFORM, services=[Recording])])
    model.script(ModelType.TEXT_SMALL, "ok")
    before = set(threading.enumerate())  # other tests' connections may still be closing
    await app.start()
    await app.runtime.use_model(ModelType.TEXT_SMALL, {"prompt": "count these tokens, please"})
    assert app.runtime._usage, "the call's usage waits in the buffer for the next batch"

    async def locked(usages: object) -> None:
        raise RuntimeError("database is locked")

    app.store.record_model_usage = locked
    with caplog.at_level(logging.ERROR, logger="bot.runtime"):
        await app.stop()
    assert stopped == ["recording"]
    assert [r.getMessage() for r in caplog.records if r.name == "bot.runtime"] == [
        "shutdown: token usage could not be stored: database is locked"]
    workers = [t for t in set(threading.enumerate()) - before if "_connection_worker_thread" in t.name]
    for worker in workers:  # a closed connection's thread ends right after close returns
        await asyncio.to_thread(worker.join, 10)
    assert not [t.name for t in workers if t.is_alive()]
