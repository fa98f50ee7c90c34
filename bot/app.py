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

from bot.agents import AgentConfig, AgentHost, HostedAgent, Selection, StartupError, configure_agent
from bot.character import Character
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


def create_runtime(settings: Settings, character: Character, store: Store, plugins: list[Plugin]) -> AgentRuntime:
    try:
        return AgentRuntime(character, settings, store, plugins)
    except Exception as error:
        raise StartupError(f"plugins: {error}") from None


class App:
    """The whole process: one runtime per character (`agents`), their connectors (as services) and
    the HTTP server on the primary character's runtime, with clean shutdown."""

    def __init__(self, settings: Settings, character: Character | None = None, *, console: bool = False,
                 agents: list[AgentConfig] | None = None,
                 store_factory: Callable[[Settings], Store] | None = None,
                 model_plugins: list[Plugin] | None = None) -> None:
        """`agents` (from `bot.agents.load_agent_configs`) runs several characters; `character` alone
        runs one with the process settings and its own secrets. The console needs a single character."""
        from bot.store.factory import create_store

        if agents is None:
            if character is None:
                raise ValueError("App needs a character or agents")
            agents = [configure_agent(settings, character, settings.character_path)]
        self.settings = settings
        self._stopping = asyncio.Event()
        self._model_plugins = model_plugins
        self._console_finished = self.request_stop if console and len(agents) == 1 else None
        self.store = (store_factory or create_store)(settings)
        self.agents = AgentHost(agents, self._build)
        self.server = None

    def _build(self, config: AgentConfig) -> Selection:
        selection = select_plugins(config.settings, config.character, models=self._model_plugins,
                                   console_finished=self._console_finished)
        runtime = create_runtime(config.settings, config.character, self.store, selection.plugins)
        connectors = sum(1 for plugin in selection.plugins if plugin.name in CONNECTORS)
        return Selection(selection.notes, runtime, connectors, selection.plugins)

    @property
    def primary(self) -> HostedAgent:
        return self.agents.primary

    @property
    def runtime(self) -> AgentRuntime:
        """The primary character's runtime: the one the HTTP server and single-character code use."""
        assert self.primary.runtime is not None
        return self.primary.runtime

    @property
    def character(self) -> Character:
        return self.primary.config.character

    @property
    def selection(self) -> Selection:
        assert self.primary.selection is not None
        return self.primary.selection

    async def start_agent(self, key: str) -> HostedAgent:
        """Start a stopped or failed agent (by id or name); see `AgentHost.start_agent`."""
        return await self.agents.start_agent(key)

    async def stop_agent(self, key: str) -> HostedAgent:
        """Stop one running agent (by id or name); the others keep running."""
        return await self.agents.stop_agent(key)

    async def start(self) -> None:
        from bot.server import WebServer

        self.server = WebServer(self.agents, self.primary.config.settings)
        try:
            await self.server.start()
        except OSError as error:
            raise StartupError(
                f"PORT: cannot listen on {self.settings.host}:{self.settings.port} ({error.strerror or error}). "
                "Fix: stop whatever uses that port or set PORT to a free one"
            ) from None
        try:
            await self._open_store()
            await self.agents.start()
        except BaseException as error:
            await self.server.stop()
            await self.store.close()
            if isinstance(error, StartupError | asyncio.CancelledError):
                raise
            raise StartupError(f"start-up failed: {type(error).__name__}: {error}") from error
        self.server.mark_started()
        # Start-up objects live for the whole process: keep them out of every future GC pass.
        gc.freeze()
        for agent in self.agents.running():
            log.info("%s is ready (agent %s) on port %s", agent.name, agent.id, self.server.port)

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

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_for_stop(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Stop taking work, finish replies in flight (≤ SHUTDOWN_TIMEOUT), then close everything."""
        if self.server is not None:
            self.server.mark_stopping()
        try:
            await self.agents.stop(self.settings.shutdown_timeout)
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


__all__ = ["App", "StartupError", "SettingsError", "Priority", "PluginSelection"]
