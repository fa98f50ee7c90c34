"""The discord.py client parley runs, unsharded or as some of the bot's shards.

Discord sends each guild's events to one shard, `(guild_id >> 22) % shard_count`, and DMs to shard 0,
so several processes can share one bot when each runs its own shards (SHARD_COUNT, SHARD_IDS).
Both clients get their behaviour from one mixin, so a sharded process answers exactly as an
unsharded one does.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord
import yarl
from discord import app_commands

from bot.settings import Settings

from .commands import build_tree, sync_tree
from .views import PayloadButton

if TYPE_CHECKING:
    from .connector import DiscordConnector

log = logging.getLogger(__name__)

SAFE_MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=True)


async def post(send_one: Callable[..., Awaitable[discord.Message]], chunk: str,
               reference: discord.Message | discord.PartialMessage | None = None, **extra: Any) -> discord.Message:
    """Send one message of a reply (its channel's slot taken), replying to `reference` if given."""
    options: dict[str, Any] = {"content": chunk or None, "allowed_mentions": SAFE_MENTIONS, **extra}
    if reference is not None:
        options["reference"] = reference.to_reference(fail_if_not_exists=False)
    return await send_one(**options)


def configure_endpoints(api_base: str, gateway_url: str) -> None:
    """Point discord.py at the REST base and gateway (a proxy, or the fake in tests); process-wide."""
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    discord.utils._from_json = _from_json  # type: ignore[assignment]


_strict_from_json = discord.utils._from_json


def _from_json(data: str | bytes) -> Any:
    """discord.py's JSON decoding, except that a lone surrogate escape (which orjson rejects, and which
    would end the gateway connection) decodes as the standard library does; intake then cleans it."""
    try:
        return _strict_from_json(data)
    except ValueError:
        return json.loads(data)


def shard_plan(settings: Settings) -> list[int] | None:
    """The shards this process runs: SHARD_IDS, else all of 0..SHARD_COUNT-1; None when unsharded."""
    if settings.shard_count is None:
        return None
    return sorted(set(settings.shard_ids)) or list(range(settings.shard_count))


class ParleyEvents:
    """What parley adds to a discord.py client: intents, safe mentions, the slash commands, the
    buttons, and every event handed to the connector. Mixed in before discord.Client or
    discord.AutoShardedClient, whose __init__ it completes."""

    connector: DiscordConnector
    tree: app_commands.CommandTree

    def __init__(self, connector: DiscordConnector, **options: Any) -> None:
        intents = discord.Intents.none()
        intents.guilds = intents.guild_messages = intents.message_content = True
        intents.dm_messages = intents.voice_states = True
        intents.guild_reactions = intents.dm_reactions = True
        super().__init__(intents=intents, allowed_mentions=SAFE_MENTIONS, **options)  # type: ignore[call-arg]
        self.connector = connector
        self.tree = build_tree(self, connector)  # type: ignore[arg-type]

    async def setup_hook(self) -> None:
        self.add_dynamic_items(PayloadButton)  # type: ignore[attr-defined]
        # Commands belong to the application, not to a shard: one process syncs them for all.
        if self.connector.syncs_commands:
            await sync_tree(self.tree, self.connector.runtime.settings.discord_guild_id)

    async def on_ready(self) -> None:
        await self.connector.on_ready()

    async def on_message(self, message: discord.Message) -> None:
        await self.connector.on_message(message)

    async def on_message_edit(self, before: discord.Message, after: discord.Message) -> None:
        await self.connector.on_message_edit(before, after)

    async def on_voice_state_update(self, member: discord.Member, before: Any, after: Any) -> None:
        await self.connector.voice.leave_if_alone(member.guild)

    async def on_button_press(self, interaction: discord.Interaction, token: str) -> None:
        await self.connector.on_button_press(interaction, token)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Commands and our own buttons are answered by the tree and PayloadButton; anything else
        # (a button from an older version, a modal) would otherwise show "This interaction failed".
        custom_id = (interaction.data or {}).get("custom_id")
        if interaction.type is discord.InteractionType.modal_submit or (
                interaction.type is discord.InteractionType.component
                and not PayloadButton.__discord_ui_compiled_template__.fullmatch(str(custom_id))):
            await self.connector.on_stray_interaction(interaction, str(custom_id))

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        """A failed event handler costs one log line (the traceback at DEBUG), never the connection."""
        error = sys.exc_info()[1]
        log.error("Discord %s handler failed: %s: %s", event_method, type(error).__name__, error)
        log.debug("Discord %s handler traceback", event_method, exc_info=True)


class ParleyClient(ParleyEvents, discord.Client):
    """One gateway connection receiving every guild and DM (SHARD_COUNT unset)."""


class ShardedParleyClient(ParleyEvents, discord.AutoShardedClient):
    """One gateway connection per shard this process runs, through discord.py's own sharding."""


def make_client(connector: DiscordConnector, shards: list[int] | None, shard_count: int | None,
                **options: Any) -> discord.Client:
    """The unsharded client when `shards` is None, else a client running exactly `shards` of `shard_count`."""
    if shards is None:
        return ParleyClient(connector, **options)
    return ShardedParleyClient(connector, shard_ids=shards, shard_count=shard_count, **options)
