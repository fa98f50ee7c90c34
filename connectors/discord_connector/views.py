"""Buttons: `Content.buttons` → a discord.ui.View whose custom_ids are short server-side tokens.

The button's value never travels to Discord; it is kept in the store cache under `button:<token>`.
Presses are routed by a DynamicItem registered at start-up, so buttons sent before a restart keep
working after it (as long as their cache entry lives).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.types import Button

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

BUTTON_TTL_SECONDS = 30 * 24 * 3600
MAX_ROWS, MAX_PER_ROW = 5, 5  # Discord's limits for one message

PressHandler = Callable[[discord.Interaction, str], Awaitable[None]]


def cache_key(token: str) -> str:
    return f"button:{token}"


class PayloadButton(discord.ui.DynamicItem[discord.ui.Button], template=r"parley:(?P<token>[0-9a-f]{32})"):
    """A button whose custom_id is `parley:<token>`; a press goes to the client's `on_button_press`."""

    def __init__(self, token: str, label: str = "…", row: int | None = None) -> None:
        super().__init__(discord.ui.Button(label=label, custom_id=f"parley:{token}", row=row,
                                           style=discord.ButtonStyle.primary))
        self.token = token

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: Any) -> PayloadButton:
        return cls(match["token"], getattr(item, "label", None) or "…")

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.on_button_press(interaction, self.token)  # type: ignore[attr-defined]


async def build_view(runtime: AgentRuntime, rows: list[list[Button]]) -> discord.ui.View:
    """One View row per button row; value buttons get a stored token, url buttons link directly."""
    view = discord.ui.View(timeout=None)
    if len(rows) > MAX_ROWS or any(len(r) > MAX_PER_ROW for r in rows):
        log.warning("Discord shows at most %d rows of %d buttons; the rest are dropped", MAX_ROWS, MAX_PER_ROW)
    for index, row in enumerate(rows[:MAX_ROWS]):
        for button in row[:MAX_PER_ROW]:
            if button.url is not None:
                view.add_item(discord.ui.Button(label=button.label, url=button.url, row=index))
                continue
            token = secrets.token_hex(16)
            await runtime.store.set_cache(runtime.agent_id, cache_key(token),
                                          {"label": button.label, "value": button.value}, BUTTON_TTL_SECONDS)
            view.add_item(PayloadButton(token, button.label, row=index))
    return view
