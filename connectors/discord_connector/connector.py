"""The Discord connector: a discord.py Client whose events become Memories and whose replies behave.

Etiquette enforced here: never answer itself or (by default) other bots, only allowlisted channels,
replies split at 2,000 characters, the first chunk replying to the message, no @everyone/role pings,
each channel's and the bot's sends paced under Discord's limits across processes (pacing.py), and a
403 logged once per channel instead of crashing; replies are shown while written (streaming.py).
Duplicate deliveries after a gateway RESUME are dropped by the pipeline's dedupe on message id.
"""

from __future__ import annotations

import asyncio
import io
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import aiohttp
import discord

from bot.delivery import before_send
from bot.lru import LRU
from bot.plugin import Connector, MessagePreparer
from bot.runtime import AgentRuntime, MessageTicket, ShuttingDown
from bot.sanitize import clean_text
from bot.store.budgets import send_budget
from bot.types import Content, Memory, MentionContext, Room

from .chunking import reply_text, split_message
from .client import configure_endpoints, make_client, post, shard_plan
from .events import SOURCE, Mapper, message_key
from .pacing import DiscordLimits, DiscordPacer
from .streaming import DiscordReply
from .typing_indicator import TypingIndicators
from .views import build_view, cache_key
from .voice import VoiceManager

log = logging.getLogger(__name__)

MAX_FORBIDDEN_CHANNELS = 4096  # channels whose 403 is remembered as logged
ANSWERED_TYPES = {discord.MessageType.default, discord.MessageType.reply}
RESTARTING = "I'm restarting; try again in a moment."
NOTHING_TO_ADD = "I've nothing to add to that one."
ANSWERED_IN_CHANNEL = "Answered in the channel."
INACTIVE = "This button is no longer active."

SendOne = Callable[..., Awaitable[discord.Message]]


class DiscordConnector(Connector):
    service_type = "discord"
    source = SOURCE
    guild_ready_timeout: float = 2.0  # how long discord.py waits for more GUILD_CREATEs before "ready"
    limits: ClassVar[DiscordLimits] = DiscordLimits()  # Discord's; tests scale them down

    def __init__(self, runtime: AgentRuntime) -> None:
        super().__init__(runtime)
        self.settings = runtime.settings
        self.mapper = Mapper(runtime)
        self.voice = VoiceManager(runtime)
        self.shards = shard_plan(self.settings)
        self.client: discord.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._order: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        # Shared by every process of this bot on a PostgreSQL store; keyed by the bot's id once logged in.
        self.pacer = DiscordPacer(send_budget(runtime.store), self.limits)
        self._forbidden: LRU[int, bool] = LRU(MAX_FORBIDDEN_CHANNELS)  # channels whose 403 was logged
        self.typing = TypingIndicators(self)

    # Lifecycle ---------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_ready() and not self.client.is_closed()

    @property
    def syncs_commands(self) -> bool:
        """Slash commands are the application's: synced by the process running shard 0 (or the unsharded
        one) alone, so N processes do not spend N syncs of Discord's daily command-update limit."""
        return self.shards is None or 0 in self.shards

    async def start(self) -> None:
        token = self.settings.discord_api_token
        if token is None:
            raise RuntimeError("DISCORD_API_TOKEN is not set")
        configure_endpoints(self.settings.discord_api_base, self.settings.discord_gateway_url)
        if self.shards is not None:
            log.info("Discord: this process runs shard(s) %s of %d%s", ", ".join(map(str, self.shards)),
                     self.settings.shard_count, "" if self.syncs_commands
                     else "; the process running shard 0 syncs the slash commands")
        self.client = make_client(self, self.shards, self.settings.shard_count,
                                  application_id=self.settings.discord_application_id,
                                  guild_ready_timeout=self.guild_ready_timeout)
        try:
            await self.client.login(token.get_secret_value())
        except BaseException as error:
            # login() opened discord.py's HTTP session: close it on every failure, or aiohttp prints
            # "Unclosed client session" / "Unclosed connector" after our one-line error.
            await self.client.close()
            if isinstance(error, discord.LoginFailure):
                raise RuntimeError("Discord rejected DISCORD_API_TOKEN; copy the bot token again from the "
                                   "Developer Portal") from None
            if isinstance(error, aiohttp.ClientError | OSError):
                raise RuntimeError(f"cannot reach Discord at {self.settings.discord_api_base} ({error}); "
                                   "Fix: check the network and DISCORD_API_BASE") from None
            raise
        assert self.client.user is not None  # login() fetched it
        self.pacer.bind(self.client.user.id, self.client.http)
        self._task = asyncio.create_task(self._run(), name="discord-gateway")

    async def _run(self) -> None:
        assert self.client is not None
        try:
            await self.client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            log.error("Discord refused the connection: enable the Message Content intent for this bot in "
                      "the Developer Portal (Bot → Privileged Gateway Intents)")
        except Exception as error:
            log.error("the Discord gateway connection ended: %s: %s", type(error).__name__, error)

    async def stop(self) -> None:
        if self.client is not None:
            for voice in list(self.client.voice_clients):
                await voice.disconnect(force=True)
            await self.client.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def on_ready(self) -> None:
        assert self.client is not None and self.client.user is not None
        log.info("Discord: logged in as %s in %d server(s)", self.client.user, len(self.client.guilds))
        channel_id = self.settings.discord_voice_channel_id
        if channel_id is None:
            return
        channel = self.client.get_channel(channel_id)
        if not isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            log.warning("DISCORD_VOICE_CHANNEL_ID %s is not a voice channel the bot can see", channel_id)
            return
        try:
            await self.voice.join(channel)
        except Exception as error:
            log.warning("could not join voice channel %s: %s", channel_id, error)

    # Incoming --------------------------------------------------------------------------------------------
    def allowed(self, channel: Any) -> bool:
        """CHANNEL_IDS allowlist; a thread is allowed when its parent is; DMs are always allowed."""
        allow = self.settings.channel_ids
        if not allow or isinstance(channel, discord.DMChannel):
            return True
        return channel.id in allow or getattr(channel, "parent_id", None) in allow

    async def on_message(self, message: discord.Message) -> None:
        client = self.client
        if client is None or client.user is None or message.author.id == client.user.id:
            return
        if message.type not in ANSWERED_TYPES or not self.allowed(message.channel):
            return
        if message.author.bot and self.settings.discord_ignore_bots:
            return
        # discord.py runs each event in its own task; the lock (FIFO) keeps a channel's messages in order.
        lock = self._order.setdefault(message.channel.id, asyncio.Lock())
        async with lock:
            memory = await self.mapper.message_memory(message, client.user)
            await self._submit(memory, self._channel_sender(message.channel), message.channel, message,
                               prepare=self.mapper.preparer(message))

    async def on_message_edit(self, before: discord.Message, after: discord.Message) -> None:
        """An edit updates the stored message (so later prompts see the new text), never replies again."""
        client = self.client
        if client is None or client.user is None or after.author.id == client.user.id:
            return
        if before.content == after.content or not self.allowed(after.channel):
            return
        stored = await self.runtime.store.get_memory(self.mapper.uuid(message_key(after.channel.id, after.id)))
        if stored is None:
            return
        content = stored.content.model_copy(update={"text": clean_text(after.clean_content)})
        await self.runtime.update_memory(stored.model_copy(update={
            "content": content, "metadata": {**stored.metadata, "edited": True}}))

    async def _submit(self, memory: Memory, send_one: SendOne, channel: Any,
                      reference: discord.Message | None, typing: bool = True, *,
                      prepare: MessagePreparer | None = None, streams: bool = True) -> MessageTicket | None:
        """Hand the message to the pipeline; None when it was not accepted (the process is shutting down)."""
        reply = DiscordReply(self, channel, send_one, reference, memory.id, streams=streams)
        if not typing:
            self.typing.quiet(memory.id)
        try:
            ticket = await self.runtime.receive_message(memory, reply, prepare=prepare)
        except ShuttingDown as error:
            log.info("Discord message %s not accepted: %s", memory.id, error)
            return None
        return ticket

    # Outgoing ------------------------------------------------------------------------------------------------
    def _channel_sender(self, channel: discord.abc.Messageable) -> SendOne:
        return channel.send

    async def deliver(self, channel: Any, content: Content, send_one: SendOne,
                      reference: discord.Message | discord.PartialMessage | None = None) -> list[str]:
        """Send one reply (several messages when long) and return their platform keys."""
        if content.in_reply_to is not None:
            self.typing.stop(content.in_reply_to)
        chunks = split_message(reply_text(content))
        files = [discord.File(io.BytesIO(a.data), filename=a.title or a.id) for a in content.attachments
                 if a.data is not None]
        view = await build_view(self.runtime, content.buttons) if content.buttons else None
        if not chunks and (files or view):
            chunks = [""]
        keys: list[str] = []
        for index, chunk in enumerate(chunks):
            extra: dict[str, Any] = {}
            if index == len(chunks) - 1:
                extra.update({"files": files} if files else {}, **({"view": view} if view else {}))
            try:
                await self.pacer.channel(channel.id)
                sent = await post(send_one, chunk, reference if index == 0 else None, **extra)
            except discord.Forbidden as error:
                if channel.id not in self._forbidden:
                    self._forbidden[channel.id] = True
                    log.warning("Discord: no permission to post in channel %s (%s); give the bot Send Messages "
                                "there or leave it out of CHANNEL_IDS", channel.id, error.text)
                return keys
            except discord.HTTPException as error:
                if not keys:
                    raise  # nothing was sent: the pipeline apologises (once)
                # Part of the reply is out: keep its keys so it is stored, and send no apology after it.
                log.warning("Discord: message %d of %d of a reply in channel %s failed (%s %s); the rest of "
                            "the reply was not sent", index + 1, len(chunks), channel.id, error.status,
                            error.text or error.response.reason)
                return keys
            keys.append(message_key(channel.id, sent.id))
        self.delivered(channel, content)
        return keys

    def delivered(self, channel: Any, content: Content) -> None:
        """A reply is out: the channel takes posts again, and a voice connection there speaks it."""
        self._forbidden.pop(channel.id, None)
        voice = self.voice.connected_client(channel)
        if voice is not None and content.text.strip():
            self.runtime.run_in_background(self.voice.speak(voice, channel.guild.id, content.text),
                                           f"discord-speak-{channel.id}")

    def sender_id(self, message: Memory) -> str | None:
        return message.metadata.get("discord", {}).get("user_id")

    async def is_admin(self, message: Memory) -> bool:
        return message.metadata.get("discord", {}).get("manages") is True

    async def send_to_room(self, room: Room, content: Content) -> list[str]:
        """Send to the room's channel; content answering a stored Discord message replies to it (one
        answered after a restart, or by another process than the one that received it).

        A channel of a guild on another process's shards is not in this client's cache; it is sent to
        through REST alone (a partial channel), which needs no gateway connection to its guild."""
        if self.client is None or room.channel_id is None:
            return []
        channel_id = int(room.channel_id)
        channel = self.client.get_channel(channel_id) or self.client.get_partial_messageable(
            channel_id, guild_id=int(room.server_id) if room.server_id else None)
        reference = await self._answered_message(content, channel)
        return await self.deliver(channel, content, channel.send, reference)  # type: ignore[union-attr]

    async def _answered_message(self, content: Content, channel: Any) -> discord.PartialMessage | None:
        """The Discord message `content` answers, when it is stored and was posted in `channel`."""
        if content.in_reply_to is None:
            return None
        original = await self.runtime.store.get_memory(content.in_reply_to)
        info = original.metadata.get("discord", {}) if original is not None else {}
        if info.get("channel_id") != str(channel.id) or not info.get("message_id"):
            return None
        return discord.PartialMessage(channel=channel, id=int(info["message_id"]))

    # Interactions ------------------------------------------------------------------------------------------
    def _interaction_sender(self, interaction: discord.Interaction) -> SendOne:
        async def send_one(reference: Any = None, **options: Any) -> discord.Message:
            await before_send()  # follow-ups bypass the paced HTTP client (bot.delivery)
            return await interaction.followup.send(wait=True, **options)

        return send_one

    async def _restarting(self, interaction: discord.Interaction, *, replace_original: bool = False) -> None:
        """Tell the user (only them) that the press or command was not taken because of a restart."""
        try:
            if replace_original:
                # The first follow-up after a public "thinking…" would be public too; drop that first.
                await interaction.delete_original_response()
            await interaction.followup.send(RESTARTING, ephemeral=True)
        except discord.HTTPException as error:
            log.info("could not tell %s about the restart: %s", interaction.user.id, error)

    async def on_button_press(self, interaction: discord.Interaction, token: str) -> None:
        """Acknowledge at once (Discord allows 3 s), then feed the button's value through the pipeline."""
        await interaction.response.defer()
        payload = await self.runtime.store.get_cache(self.runtime.agent_id, cache_key(token))
        channel, pressed_on = interaction.channel, interaction.message
        if payload is None or channel is None or pressed_on is None:
            await interaction.followup.send("This button has expired.", ephemeral=True)
            return
        if not self.allowed(channel):
            return
        memory = await self._interaction_memory(interaction, str(payload["value"]), is_reply=True)
        memory.content.in_reply_to = self.mapper.uuid(message_key(channel.id, pressed_on.id))
        memory.metadata["button"] = payload.get("label")
        if not await self._submit(memory, self._channel_sender(channel), channel, pressed_on):  # type: ignore[arg-type]
            await self._restarting(interaction)

    async def on_stray_interaction(self, interaction: discord.Interaction, custom_id: str) -> None:
        """Acknowledge a press the bot has no handler for, so the user is told rather than left hanging."""
        log.info("Discord: %s interaction with unknown custom_id %r from %s answered as inactive",
                 interaction.type.name, custom_id[:100], interaction.user.id)
        try:
            await interaction.response.send_message(INACTIVE, ephemeral=True)
        except discord.HTTPException as error:
            log.info("could not answer interaction %s: %s", interaction.id, error)

    async def _interaction_memory(self, interaction: discord.Interaction, text: str, *,
                                  is_reply: bool = False) -> Memory:
        channel = interaction.channel
        entity, room = await self.mapper.connect(interaction.user, channel)
        return Memory(
            id=self.mapper.uuid(f"discord:interaction:{interaction.id}"), entity_id=entity.id,
            agent_id=self.runtime.agent_id, room_id=room.id, world_id=room.world_id,
            content=Content(text=text, source=SOURCE, channel_type=room.type,
                            mention_context=MentionContext(is_mention=not is_reply, is_reply=is_reply)),
            metadata=self.mapper.metadata(interaction.user, channel, None),
        )

    async def on_ask(self, interaction: discord.Interaction, question: str) -> None:
        if interaction.channel is None or not self.allowed(interaction.channel):
            await interaction.response.send_message("I don't answer in this channel.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        memory = await self._interaction_memory(interaction, clean_text(question))
        sent: list[bool] = []
        send = self._interaction_sender(interaction)

        async def send_one(**options: Any) -> discord.Message:
            sent.append(True)
            return await send(**options)

        ticket = await self._submit(memory, send_one, interaction.channel, None, typing=False, streams=False)
        if ticket is None:
            await self._restarting(interaction, replace_original=True)
        else:
            self.runtime.run_in_background(self._settle_ask(interaction, ticket, sent), f"discord-ask-{memory.id}")

    async def _settle_ask(self, interaction: discord.Interaction, ticket: MessageTicket, sent: list[bool]) -> None:
        """A run that sends nothing (ignored, muted, failed with ERROR_REPLY off) must not leave
        the "thinking…" placeholder up until Discord gives up on it."""
        outcome = await ticket.outcome
        if sent:
            return
        if outcome.status == "error":
            text = "Sorry, I couldn't answer that."
        elif await self.runtime.replies_to(ticket.message):
            text = ANSWERED_IN_CHANNEL  # another process of a cluster ran it and posted the answer
        else:
            text = NOTHING_TO_ADD
        try:
            await interaction.edit_original_response(content=text)
        except discord.HTTPException as error:
            log.debug("could not settle /ask %s: %s", interaction.id, error)

    def voice_target(self, info: dict[str, Any]) -> discord.VoiceChannel | discord.StageChannel | None:
        """The voice channel a message points at: its own channel, else where its author is."""
        if self.client is None:
            return None
        channel = self.client.get_channel(int(info.get("channel_id") or 0))
        if isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            return channel
        guild = self.client.get_guild(int(info.get("guild_id") or 0))
        member = guild.get_member(int(info.get("user_id") or 0)) if guild else None
        state = member.voice if member else None
        return state.channel if state and isinstance(state.channel, discord.VoiceChannel) else None

    async def on_join_command(self, interaction: discord.Interaction, channel: Any) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        target = channel or self.voice_target({"guild_id": interaction.guild_id, "user_id": interaction.user.id})
        if target is None:
            await interaction.followup.send("Join a voice channel first, or name one.", ephemeral=True)
            return
        try:
            await self.voice.join(target)
        except Exception as error:
            log.warning("could not join voice channel %s: %s", target.id, error)
            await interaction.followup.send("I couldn't join that voice channel.", ephemeral=True)
            return
        await interaction.followup.send(f"Joined {target.name}.", ephemeral=True)

    async def on_leave_command(self, interaction: discord.Interaction) -> None:
        left = interaction.guild is not None and await self.voice.leave(interaction.guild)
        await interaction.response.send_message("Left the voice channel." if left else "I'm not in a voice "
                                                "channel.", ephemeral=True)


__all__ = ["DiscordConnector"]
