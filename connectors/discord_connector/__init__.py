"""Discord: servers, DMs and threads, buttons and slash commands, voice channels (discord.py)."""

from __future__ import annotations

from bot.plugin import Plugin, Priority
from bot.settings import Settings

from .commands import VOICE_ACTIONS
from .connector import DiscordConnector


def create_plugin(settings: Settings) -> Plugin | None:
    """The Discord plugin, or None when DISCORD_API_TOKEN is not set."""
    if settings.discord_api_token is None:
        return None
    return Plugin(name="discord", description="Discord connector", priority=Priority.PLATFORM,
                  services=[DiscordConnector], actions=list(VOICE_ACTIONS))


__all__ = ["DiscordConnector", "create_plugin"]
