"""Wiring for `python -m bot`: settings + character → runtime with plugins → connectors + HTTP.

Platform connectors are imported by name only when their token is set, so `bot/` never imports a
platform SDK and a missing optional dependency only matters to the platform that needs it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import logging
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.character import Character, CharacterError, load_character
from bot.plugin import Plugin, Priority
from bot.runtime import AgentRuntime
from bot.settings import Settings, SettingsError
from bot.store.base import Store

log = logging.getLogger(__name__)

# Connector plugins: setting that enables each, and the module whose `create_plugin(settings)` builds it.
CONNECTORS: dict[str, tuple[str, str]] = {
    "telegram": ("telegram_bot_token", "connectors.telegram_connector"),
    "discord": ("discord_api_token", "connectors.discord_connector"),
}
BUILTIN = {"sql", "bootstrap", "openai", "anthropic", "local", "telegram", "discord"}


class StartupError(Exception):
    """Start-up cannot continue; the message is one line for the operator."""


@dataclass
class PluginSelection:
    plugins: list[Plugin]
    notes: list[str] = field(default_factory=list)


_PYTHON_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_python_plugin(spec: str, settings: Settings) -> Plugin:
    """`package.module:name` names a Plugin, or a function taking the settings and returning one."""
    module_name, attribute = spec.split(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise StartupError(f"character plugin {spec!r}: cannot load it ({error}). "
                           "Fix: install the package or correct the module:name in the character's plugins") from None
    if isinstance(target, Plugin):
        plugin = target
    elif inspect.isfunction(target):  # a factory written in Python, never a builtin like os:abort
        try:
            plugin = target(settings)
        except Exception as error:  # the plugin's own factory failed: say so in one line
            raise StartupError(f"character plugin {spec!r}: {attribute}(settings) failed: "
                               f"{type(error).__name__}: {error}") from None
    else:
        plugin = None
    if not isinstance(plugin, Plugin):
        raise StartupError(f"character plugin {spec!r}: {attribute} is not a Plugin or a function returning one")
    return plugin


def character_plugins(character: Character, settings: Settings) -> tuple[list[Plugin], list[str]]:
    """Plugins named in the character file: elizaOS package names map to built-ins (already
    loaded), `module:name` entries load a Python plugin, anything else warns and is skipped."""
    from plugins.models import PLUGIN_ALIASES

    plugins, notes = [], []
    for name in character.plugins:
        if PLUGIN_ALIASES.get(name, name if name in BUILTIN else None) is not None:
            continue
        if _PYTHON_PLUGIN.match(name):
            plugins.append(load_python_plugin(name, settings))
        else:
            notes.append(f"character plugin {name!r} has no parley equivalent; ignored")
    return plugins, notes


def select_plugins(
    settings: Settings,
    character: Character,
    *,
    console_finished: Callable[[], None] | None = None,
    models: list[Plugin] | None = None,
) -> PluginSelection:
    """Bootstrap, the model providers in fallback order, and a connector per configured platform.

    `models` replaces provider discovery, embeddings included (benchmarks and tests bring their
    own model).
    """
    from plugins.bootstrap import bootstrap_plugin
    from plugins.features import feature_plugins
    from plugins.models import model_plugins
    from plugins.offline_embedding import choose_embedding

    notes: list[str] = []
    if models is None:
        models, notes = model_plugins(settings, character)
        models, embedding_notes = choose_embedding(settings, models)
        notes += embedding_notes
    extra, extra_notes = character_plugins(character, settings)
    features = feature_plugins(settings, character)
    selection = PluginSelection([bootstrap_plugin(), *models, *features, *extra], [*notes, *extra_notes])
    for name, (setting, module_name) in CONNECTORS.items():
        if getattr(settings, setting) is None:
            continue
        module = importlib.import_module(module_name)
        plugin = module.create_plugin(settings)
        if plugin is not None:
            selection.plugins.append(plugin)
            log.info("%s connector enabled", name)
    if console_finished is not None:
        from connectors.console import console_plugin

        selection.plugins.append(console_plugin(console_finished))
    return selection


def has_platform_token(settings: Settings) -> bool:
    return any(getattr(settings, setting) is not None for setting, _ in CONNECTORS.values())


def load_character_or_raise(settings: Settings) -> Character:
    try:
        loaded = load_character(settings.character_path)
    except CharacterError as error:
        raise StartupError(str(error)) from None
    for warning in loaded.warnings:
        log.warning("%s: %s", loaded.path, warning)
    return loaded.character


def create_runtime(settings: Settings, character: Character, store: Store, plugins: list[Plugin]) -> AgentRuntime:
    try:
        return AgentRuntime(character, settings, store, plugins)
    except Exception as error:
        raise StartupError(f"plugins: {error}") from None


class App:
    """The whole process: runtime, connectors (as services) and the HTTP server, with clean shutdown."""

    def __init__(self, settings: Settings, character: Character, *, console: bool = False,
                 store_factory: Callable[[Settings], Store] | None = None,
                 model_plugins: list[Plugin] | None = None) -> None:
        from bot.store.factory import create_store

        self.settings = settings
        self.character = character
        self._stopping = asyncio.Event()
        self.selection = select_plugins(settings, character, models=model_plugins,
                                        console_finished=self.request_stop if console else None)
        self.store = (store_factory or create_store)(settings)
        self.runtime = create_runtime(settings, character, self.store, self.selection.plugins)
        self.server = None

    async def start(self) -> None:
        from bot.server import WebServer

        for note in self.selection.notes:
            log.warning("%s", note)
        self.server = WebServer(self.runtime, self.settings)
        try:
            await self.server.start()
        except OSError as error:
            raise StartupError(
                f"PORT: cannot listen on {self.settings.host}:{self.settings.port} ({error.strerror or error}). "
                "Fix: stop whatever uses that port or set PORT to a free one"
            ) from None
        try:
            await self._open_store()
            await self.runtime.initialize()
        except BaseException as error:
            await self.server.stop()
            await self.runtime.stop()
            await self.store.close()
            if isinstance(error, StartupError | asyncio.CancelledError):
                raise
            raise StartupError(f"start-up failed: {type(error).__name__}: {error}") from error
        await self._resume()
        self.server.mark_started()
        # Start-up objects live for the whole process: keep them out of every future GC pass.
        gc.freeze()
        log.info("%s is ready (agent %s) on port %s", self.character.name, self.runtime.agent_id,
                 self.server.port)

    async def _open_store(self) -> None:
        """Create or upgrade the schema, turning connection failures into one actionable line."""
        try:
            await self.store.init()
        except Exception as error:
            if self.settings.database_url:
                raise StartupError(
                    f"DATABASE_URL: cannot use the database ({type(error).__name__}: {error}). "
                    "Fix: check the URL and that the server is running and reachable"
                ) from None
            raise StartupError(
                f"DATA_DIR: cannot open the SQLite database {self.settings.sqlite_path} ({error}). "
                "Fix: set DATA_DIR to a writable directory"
            ) from None

    async def _resume(self) -> None:
        """Answer what the last process stored but never answered, now that connectors can send."""
        handler = self.runtime.message_handler
        if handler is None:
            return
        try:
            await handler.resume(self.settings.resume_window)
        except Exception as error:  # the bot still serves new messages; those stay queued for the next start
            log.error("could not resume unanswered messages (%s: %s); they stay queued for the next start",
                      type(error).__name__, error)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_for_stop(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Stop taking work, finish replies in flight (≤ SHUTDOWN_TIMEOUT), then close everything."""
        if self.server is not None:
            self.server.mark_stopping()
        try:
            for connector in self.runtime.connectors:
                try:
                    await connector.stop_receiving()
                except Exception:
                    log.exception("%s connector could not stop receiving", connector.source)
            if self.runtime.message_handler is not None:
                await self.runtime.message_handler.drain(self.settings.shutdown_timeout)
            await self.runtime.stop()
        finally:
            # Whatever failed above, the port and the database are let go: an open SQLite
            # connection's worker thread would keep the process from exiting.
            try:
                if self.server is not None:
                    await self.server.stop()
            finally:
                await self.store.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):
                pass
        await self.start()
        try:
            await self.wait_for_stop()
        finally:
            log.info("shutting down")
            await self.stop()


__all__ = ["App", "StartupError", "SettingsError", "Priority"]
