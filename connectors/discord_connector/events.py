"""Discord objects → parley's data model: ids, rooms, worlds, entities and message Memories."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot.ids import create_unique_uuid
from bot.sanitize import clean_text, one_line
from bot.types import Attachment, ChannelType, Content, Entity, Memory, MentionContext, ModelType, Room, World

if TYPE_CHECKING:
    from bot.plugin import MessagePreparer
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

SOURCE = "discord"
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024  # larger images are listed but not sent to a model
DOWNLOAD_CHUNK = 64 * 1024
PROBE_TIMEOUT = 10.0


def manages(user: discord.abc.User, channel: Any) -> bool:
    """Whether a server member may manage the server or this channel (the platform's own answer,
    from the roles Discord sent with the message): such members are admins to the bot."""
    if not isinstance(user, discord.Member):
        return False
    try:
        in_channel = channel.permissions_for(user).manage_channels if hasattr(channel, "permissions_for") else False
    except Exception:  # a partial channel without its overwrites: fall back to the server roles
        in_channel = False
    return bool(user.guild_permissions.manage_guild or user.guild_permissions.manage_channels or in_channel)


class Refused(Exception):
    """An audio attachment the VOICE_MAX_* caps keep from the model; the message is the note stored."""


def message_key(channel_id: int, message_id: int) -> str:
    """The platform key of a message; replies return these so reply-to-the-bot resolves."""
    return f"discord:msg:{channel_id}:{message_id}"


def room_type(channel: Any) -> ChannelType:
    if isinstance(channel, discord.DMChannel | discord.GroupChannel):
        return ChannelType.DM
    if isinstance(channel, discord.Thread):
        return ChannelType.THREAD
    if isinstance(channel, discord.VoiceChannel | discord.StageChannel):
        return ChannelType.VOICE_GROUP
    return ChannelType.GROUP


def attachment_kind(content_type: str | None) -> str:
    major = (content_type or "").split("/", 1)[0]
    return major if major in {"image", "audio", "video"} else "file"


def mentions_bot(message: discord.Message, bot_user: discord.ClientUser) -> bool:
    """A user mention of the bot, or a mention of the role Discord manages for it."""
    if bot_user in message.mentions:
        return True
    me = message.guild.me if message.guild else None
    return me is not None and any(r.is_bot_managed() and r in me.roles for r in message.role_mentions)


class Mapper:
    """Builds entities, rooms, worlds and memories with the ids every other part of parley expects."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    def uuid(self, key: str) -> Any:
        return create_unique_uuid(self.runtime.agent_id, key)

    def entity(self, user: discord.abc.User) -> Entity:
        names = list(dict.fromkeys(one_line(n) for n in (user.display_name, user.name) if n))
        return Entity(id=self.uuid(f"discord:user:{user.id}"), agent_id=self.runtime.agent_id, names=names,
                      metadata={"discord": {"id": str(user.id), "username": one_line(user.name), "bot": user.bot}})

    def world(self, guild: discord.Guild | None) -> World | None:
        if guild is None:
            return None
        return World(id=self.uuid(f"discord:guild:{guild.id}"), agent_id=self.runtime.agent_id,
                     name=one_line(guild.name or ""),
                     server_id=str(guild.id))

    def room(self, channel: Any) -> Room:
        guild = getattr(channel, "guild", None)
        parent = getattr(channel, "parent_id", None)
        return Room(
            id=self.uuid(f"discord:channel:{channel.id}"), agent_id=self.runtime.agent_id,
            name=one_line(getattr(channel, "name", None) or "direct message"), source=SOURCE,
            type=room_type(channel),
            channel_id=str(channel.id), server_id=str(guild.id) if guild else None,
            world_id=self.uuid(f"discord:guild:{guild.id}") if guild else None,
            metadata={"parent_id": str(parent)} if parent else {},
        )

    async def connect(self, user: discord.abc.User, channel: Any) -> tuple[Entity, Room]:
        entity, room = self.entity(user), self.room(channel)
        await self.runtime.ensure_connection(entity, room, self.world(getattr(channel, "guild", None)))
        return entity, room

    def metadata(self, user: discord.abc.User, channel: Any, message_id: int | None) -> dict[str, Any]:
        guild = getattr(channel, "guild", None)
        return {"author_is_bot": user.bot, "discord": {
            "user_id": str(user.id), "channel_id": str(channel.id), "guild_id": str(guild.id) if guild else None,
            "message_id": str(message_id) if message_id else None, "manages": manages(user, channel)}}

    async def message_memory(self, message: discord.Message, bot_user: discord.ClientUser) -> Memory:
        """The message as received: attachments are listed, not yet described (see `preparer`)."""
        entity, room = await self.connect(message.author, message.channel)
        reference = message.reference
        replied = reference.resolved if reference and isinstance(reference.resolved, discord.Message) else None
        in_reply_to = None
        if reference is not None and reference.message_id is not None:
            in_reply_to = self.uuid(message_key(reference.channel_id, reference.message_id))
        content = Content(
            text=clean_text(message.clean_content), source=SOURCE, channel_type=room.type, in_reply_to=in_reply_to,
            attachments=[self.attachment(a) for a in message.attachments],
            mention_context=MentionContext(
                is_mention=mentions_bot(message, bot_user),
                is_reply=replied is not None and replied.author.id == bot_user.id,
                is_thread=room.type is ChannelType.THREAD,
            ),
        )
        return Memory(id=self.uuid(message_key(message.channel.id, message.id)), entity_id=entity.id,
                      agent_id=self.runtime.agent_id, room_id=room.id, world_id=room.world_id, content=content,
                      metadata=self.metadata(message.author, message.channel, message.id))

    def attachment(self, item: discord.Attachment) -> Attachment:
        """The attachment as noted at intake; an audio file over the VOICE_MAX_* caps says so."""
        noted = Attachment(id=str(item.id), kind=attachment_kind(item.content_type), title=one_line(item.filename),
                           source=SOURCE, content_type=one_line(item.content_type) if item.content_type else None,
                           url=item.url,
                           description=one_line(item.description) if item.description else None)
        if noted.kind == "audio" and self.runtime.has_model(ModelType.TRANSCRIPTION):
            refusal = self.audio_refusal(item)
            if refusal is not None:
                return noted.model_copy(update={"description": refusal})
        return noted

    def audio_refusal(self, item: discord.Attachment) -> str | None:
        """Why an audio file is not transcribed, judged from what Discord says about it before any download."""
        settings = self.runtime.settings
        if item.size > settings.voice_max_mb * 1024 * 1024:
            return f"not transcribed: larger than {settings.voice_max_mb:g} MB"
        duration = getattr(item, "duration", None)  # set for Discord voice messages
        if duration is not None and duration > settings.voice_max_seconds:
            return f"not transcribed: longer than {settings.voice_max_seconds} seconds"
        return None

    def enrichment_model(self, item: discord.Attachment) -> ModelType | None:
        """IMAGE_DESCRIPTION for images, TRANSCRIPTION for audio, when configured and within the caps."""
        model = {"image": ModelType.IMAGE_DESCRIPTION, "audio": ModelType.TRANSCRIPTION}.get(
            attachment_kind(item.content_type))
        if model is None or not self.runtime.has_model(model):
            return None
        if model is ModelType.TRANSCRIPTION:
            return model if self.audio_refusal(item) is None else None
        return model if item.size <= MAX_ATTACHMENT_BYTES else None

    def preparer(self, message: discord.Message) -> MessagePreparer | None:
        """The enrichment to run after the message is stored (`receive_message(prepare=...)`), if any.

        Downloads and model calls happen in the message's turn, after storing and deduplication, so a
        crash or a slow model never loses the message and a RESUME replay never repeats them.
        """
        pending = {str(a.id): (a, model) for a in message.attachments if (model := self.enrichment_model(a))}
        if not pending:
            return None

        async def prepare(memory: Memory) -> Memory:
            # Start from the stored copy: an edit may have landed while the message waited its turn.
            current = await self.runtime.store.get_memory(memory.id) or memory
            attachments = list(current.content.attachments)
            indexes = [i for i, a in enumerate(attachments) if a.id in pending]
            enriched = await asyncio.gather(*(self.enrich(attachments[i], *pending[attachments[i].id])
                                              for i in indexes))
            for i, attachment in zip(indexes, enriched, strict=True):
                attachments[i] = attachment
            content = current.content.model_copy(update={"attachments": attachments})
            return current.model_copy(update={"content": content})

        return prepare

    async def enrich(self, noted: Attachment, item: discord.Attachment, model: ModelType) -> Attachment:
        """An image's description or an audio file's transcript; on failure the attachment as noted."""
        try:
            if model is ModelType.IMAGE_DESCRIPTION:
                data = await item.read()
                described = await self.runtime.use_model(model, {"image": data, "mime_type": item.content_type})
                return noted.model_copy(update={"title": described.get("title") or noted.title,
                                                "description": described.get("description") or noted.description})
            return noted.model_copy(update={"text": await self.transcribe(item)})
        except Refused as refusal:
            log.info("attachment %s not transcribed: %s", noted.title, refusal)
            return noted.model_copy(update={"description": str(refusal)})
        except Exception as error:  # one failed attachment must not cost the others, nor the message
            log.warning("could not process attachment %s (%s): %s: %s", noted.title, noted.kind,
                        type(error).__name__, error)
            return noted

    async def transcribe(self, item: discord.Attachment) -> str:
        """Stream the file to disk within the size cap, check its length, then transcribe it."""
        settings = self.runtime.settings
        with tempfile.TemporaryDirectory(prefix="parley-discord-") as folder:
            path = Path(folder) / "audio"
            await download(item.url, path, settings.voice_max_mb)
            if getattr(item, "duration", None) is None:
                seconds = await audio_seconds(path)
                if seconds is None:
                    raise Refused("not transcribed: its length could not be read")
                if seconds > settings.voice_max_seconds:
                    raise Refused(f"not transcribed: longer than {settings.voice_max_seconds} seconds")
            # The TRANSCRIPTION contract takes bytes: the cap bounds what is read back, the slot how often.
            async with self.runtime.media_slots:
                return await self.runtime.use_model(ModelType.TRANSCRIPTION, {
                    "audio": path.read_bytes(), "mime_type": item.content_type,
                    "filename": one_line(item.filename)})


async def download(url: str, path: Path, max_mb: float) -> None:
    """Stream `url` into `path`, refusing (before or while reading) anything over `max_mb` megabytes."""
    limit, too_big = max_mb * 1024 * 1024, Refused(f"not transcribed: larger than {max_mb:g} MB")
    async with aiohttp.ClientSession() as session, session.get(url, raise_for_status=True) as response:
        if (response.content_length or 0) > limit:
            raise too_big
        received = 0
        with path.open("wb") as out:
            async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                received += len(chunk)
                if received > limit:
                    raise too_big
                out.write(chunk)


async def audio_seconds(path: Path) -> float | None:
    """The length of an audio file by ffprobe; None when it cannot be read."""
    try:
        probe = await asyncio.create_subprocess_exec(
            "ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError as error:
        log.warning("cannot measure audio length (ffprobe: %s); install ffmpeg", error)
        return None
    try:
        output, _ = await asyncio.wait_for(probe.communicate(), PROBE_TIMEOUT)
    except TimeoutError:
        probe.kill()
        await probe.wait()
        return None
    try:
        return float(output.decode().strip())
    except ValueError:
        return None
