"""Discord's "typing…" for the run in progress only.

Shown from the start of a message's run (not from its arrival: a channel with a backlog would show
it for every queued message, and each refresh costs a request of the bot's budget) until its first
reply goes out or the run ends. Run events drive it, so it also shows for a message another process
received and this one answers, or one answered after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from uuid import UUID

import discord

from bot.lru import LRU
from bot.types import EventType, Memory

from .events import SOURCE

if TYPE_CHECKING:
    from .connector import DiscordConnector

log = logging.getLogger(__name__)

TYPING_LIMIT = 120.0  # never show "typing…" longer than this, whatever happens to the run
MAX_QUIET = 10_000  # remembered interactions (they show Discord's own "thinking…")


class TypingIndicators:
    def __init__(self, connector: DiscordConnector) -> None:
        self.connector = connector
        self.runtime = connector.runtime
        self._shown: dict[UUID, asyncio.Event] = {}
        self._quiet: LRU[UUID, bool] = LRU(MAX_QUIET)
        self.runtime.on(EventType.RUN_STARTED, self._run_started)
        self.runtime.on(EventType.RUN_ENDED, self._run_ended)

    def quiet(self, message_id: UUID) -> None:
        """Show nothing for this message (a slash command: Discord shows "thinking…" itself)."""
        self._quiet[message_id] = True

    def stop(self, message_id: UUID) -> None:
        done = self._shown.pop(message_id, None)
        if done is not None:
            done.set()

    async def _run_started(self, payload: dict[str, Any]) -> None:
        message: Memory = payload["message"]
        client = self.connector.client
        channel_id = message.metadata.get("discord", {}).get("channel_id")
        if (client is None or message.content.source != SOURCE or not channel_id or message.id in self._quiet
                or message.id in self._shown or not self.runtime.is_addressed(message)):
            return
        channel = client.get_channel(int(channel_id)) or client.get_partial_messageable(int(channel_id))
        done = self._shown[message.id] = asyncio.Event()
        self.runtime.run_in_background(self._show(channel, done), f"discord-typing-{channel_id}")

    async def _run_ended(self, payload: dict[str, Any]) -> None:
        self.stop(payload["message"].id)

    async def _show(self, channel: Any, done: asyncio.Event) -> None:
        try:
            async with channel.typing():
                await asyncio.wait_for(done.wait(), TYPING_LIMIT)
        except (discord.HTTPException, TimeoutError) as error:
            log.debug("typing indicator in %s stopped: %s", channel.id, error)
