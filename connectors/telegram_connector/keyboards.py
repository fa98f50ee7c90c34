"""Inline keyboards whose button payloads live in the database, not in callback_data.

Telegram limits callback_data to 64 bytes and echoes it back unchecked, so a button carries only
a random token; the value it stands for is kept with `store.set_cache` (surviving restarts) and
looked up when pressed. A token that is unknown or expired resolves to nothing.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.store.base import Store
from bot.types import Button

PREFIX = "b:"
CACHE_PREFIX = "button:"
DEFAULT_TTL = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Pressed:
    label: str
    value: str


class ButtonStore:
    def __init__(self, store: Store, agent_id: uuid.UUID, ttl_seconds: float = DEFAULT_TTL) -> None:
        self.store = store
        self.agent_id = agent_id
        self.ttl_seconds = ttl_seconds

    async def keyboard(self, rows: list[list[Button]]) -> InlineKeyboardMarkup | None:
        """The markup for `Content.buttons`, storing each value button's payload under a new token."""
        markup: list[list[InlineKeyboardButton]] = []
        for row in rows:
            buttons = []
            for button in row:
                if button.url is not None:
                    buttons.append(InlineKeyboardButton(button.label, url=button.url))
                    continue
                token = secrets.token_urlsafe(12)
                payload: dict[str, Any] = {"label": button.label, "value": button.value}
                await self.store.set_cache(self.agent_id, CACHE_PREFIX + token, payload, self.ttl_seconds)
                buttons.append(InlineKeyboardButton(button.label, callback_data=PREFIX + token))
            if buttons:
                markup.append(buttons)
        return InlineKeyboardMarkup(markup) if markup else None

    async def resolve(self, callback_data: str | None) -> Pressed | None:
        """The pressed button, or None for data we did not issue or a token that has expired."""
        if not callback_data or not callback_data.startswith(PREFIX):
            return None
        payload = await self.store.get_cache(self.agent_id, CACHE_PREFIX + callback_data[len(PREFIX):])
        if not isinstance(payload, dict) or not isinstance(payload.get("value"), str):
            return None
        return Pressed(label=str(payload.get("label", "")), value=payload["value"])
