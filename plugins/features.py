"""Feature plugins that load by themselves when their configuration asks for them.

Each module listed here has `create_plugin(settings, character) -> Plugin | None` (None: not
configured, so not loaded). `bot/` asks this list rather than naming features itself.
"""

from __future__ import annotations

import importlib

from bot.character import Character
from bot.plugin import Plugin
from bot.settings import Settings

FEATURES: list[str] = ["plugins.mcp", "plugins.tasks", "plugins.knowledge"]


def feature_plugins(settings: Settings, character: Character) -> list[Plugin]:
    plugins = []
    for module_name in FEATURES:
        plugin = importlib.import_module(module_name).create_plugin(settings, character)
        if plugin is not None:
            plugins.append(plugin)
    return plugins
