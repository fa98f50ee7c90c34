"""Slash commands (/ask, /join, /leave) and the JOIN_VOICE / LEAVE_VOICE actions."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.permissions import Role
from bot.plugin import Action, ActionContext, ActionResult
from bot.types import Content, Memory

from .events import SOURCE

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

    from .connector import DiscordConnector

log = logging.getLogger(__name__)


def build_tree(client: discord.Client, connector: DiscordConnector) -> app_commands.CommandTree:
    tree = app_commands.CommandTree(client)

    @tree.command(name="ask", description=f"Ask {connector.runtime.character.name} something")
    @app_commands.describe(question="What you want to ask")
    async def ask(interaction: discord.Interaction, question: app_commands.Range[str, 1, 2000]) -> None:
        await connector.on_ask(interaction, question)

    @tree.command(name="join", description="Join a voice channel (yours if none is given)")
    @app_commands.describe(channel="The voice channel to join")
    @app_commands.guild_only()
    async def join(interaction: discord.Interaction, channel: discord.VoiceChannel | None = None) -> None:
        await connector.on_join_command(interaction, channel)

    @tree.command(name="leave", description="Leave the voice channel")
    @app_commands.guild_only()
    async def leave(interaction: discord.Interaction) -> None:
        await connector.on_leave_command(interaction)

    @tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        # One line (traceback at DEBUG) and an answer, instead of a traceback and "This interaction failed".
        name = interaction.command.name if interaction.command else (interaction.data or {}).get("name")
        log.error("Discord /%s failed: %s: %s", name, type(error).__name__, error)
        log.debug("Discord /%s traceback", name, exc_info=error)
        if not interaction.response.is_done():
            try:
                await interaction.response.send_message("Sorry, that didn't work.", ephemeral=True)
            except discord.HTTPException as failure:
                log.info("could not answer /%s: %s", name, failure)

    return tree


async def sync_tree(tree: app_commands.CommandTree, guild_id: int | None) -> bool:
    """Guild commands appear at once; global ones can take up to an hour to show up.

    A refused sync (no applications.commands scope, a DISCORD_GUILD_ID the bot is not in) leaves the
    slash commands out but never stops the bot: messages and buttons work without them.
    """
    try:
        if guild_id is None:
            await tree.sync()
        else:
            guild = discord.Object(id=guild_id)
            tree.copy_global_to(guild=guild)
            await tree.sync(guild=guild)
    except discord.HTTPException as error:
        where = f"server {guild_id}" if guild_id is not None else "all servers"
        log.warning("Discord refused the slash commands for %s (%s %s); /ask, /join and /leave are unavailable. "
                    "Re-invite the bot with the applications.commands scope (OAuth2 URL: scope=bot+"
                    "applications.commands) and check that DISCORD_GUILD_ID is a server the bot is in",
                    where, error.status, error.text or error.response.reason)
        return False
    return True


def _connector(runtime: AgentRuntime) -> DiscordConnector | None:
    from .connector import DiscordConnector

    connector = runtime.connector_for(SOURCE)
    return connector if isinstance(connector, DiscordConnector) else None


async def _from_discord(runtime: AgentRuntime, message: Memory, _: Any) -> bool:
    """Voice is a Discord server's: asked from Discord, in one of its servers."""
    return (message.content.source == SOURCE and _connector(runtime) is not None
            and bool(message.metadata.get("discord", {}).get("guild_id")))


async def _reply(ctx: ActionContext, name: str, text: str) -> None:
    await ctx.send(Content(text=text, actions=[name]))


async def join_voice_handler(ctx: ActionContext) -> ActionResult:
    connector = _connector(ctx.runtime)
    info = ctx.message.metadata.get("discord", {})
    channel = connector.voice_target(info) if connector else None
    if connector is None or channel is None:
        await _reply(ctx, "JOIN_VOICE", "Join a voice channel first, then ask me again.")
        return ActionResult(success=False, error="no voice channel to join")
    await connector.voice.join(channel)
    await _reply(ctx, "JOIN_VOICE", ctx.reply_text or f"Joining {channel.name}.")
    return ActionResult(text=f"joined {channel.name}", values={"voice_channel": str(channel.id)})


async def leave_voice_handler(ctx: ActionContext) -> ActionResult:
    connector = _connector(ctx.runtime)
    guild_id = ctx.message.metadata.get("discord", {}).get("guild_id")
    guild = connector.client.get_guild(int(guild_id)) if connector and connector.client and guild_id else None
    left = guild is not None and await connector.voice.leave(guild)  # type: ignore[union-attr]
    await _reply(ctx, "LEAVE_VOICE", (ctx.reply_text or "Left the voice channel.") if left
                 else "I'm not in a voice channel.")
    return ActionResult(success=left, text="left the voice channel" if left else "not in a voice channel")


VOICE_ACTIONS = [
    Action("JOIN_VOICE", "Join the speaker's Discord voice channel and speak replies there.", join_voice_handler,
           _from_discord, ["JOIN_VC", "JOIN_VOICE_CHANNEL"], role=Role.MEMBER),
    Action("LEAVE_VOICE", "Leave the Discord voice channel.", leave_voice_handler, _from_discord,
           ["LEAVE_VC", "LEAVE_VOICE_CHANNEL"], role=Role.MEMBER),
]
