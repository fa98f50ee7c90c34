"""Telegram: DMs, groups and forum topics, inline keyboards, voice notes, polling or webhook."""

from __future__ import annotations

from bot.plugin import Plugin, Priority, Route
from bot.settings import Settings

from .connector import WEBHOOK_PATH, TelegramConnector, WebhookEndpoint, webhook_secret


def create_plugin(settings: Settings) -> Plugin | None:
    """The Telegram plugin, or None without TELEGRAM_BOT_TOKEN.

    Each plugin gets its own connector subclass bound to its webhook endpoint, because the
    runtime builds services from their class alone.
    """
    if settings.telegram_bot_token is None:
        return None
    endpoint = WebhookEndpoint(webhook_secret(settings))
    connector = type("TelegramConnector", (TelegramConnector,), {"webhook": endpoint})
    routes = [Route("POST", WEBHOOK_PATH, endpoint.handle, public=True)] if settings.telegram_webhook_url else []
    return Plugin(name="telegram", description="Telegram connector", priority=Priority.PLATFORM,
                  services=[connector], routes=routes)


__all__ = ["TelegramConnector", "WebhookEndpoint", "create_plugin", "webhook_secret"]
