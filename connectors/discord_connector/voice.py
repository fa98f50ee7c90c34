"""Voice channels: join, leave, and speak replies (TEXT_TO_SPEECH → ffmpeg → 48 kHz PCM → VoiceClient).

Playing needs discord.py[voice] (PyNaCl for transport encryption and davey for DAVE, the
end-to-end encryption Discord requires for voice) plus libopus and ffmpeg from the OS packages.
"""

from __future__ import annotations

import asyncio
import io
import logging
import weakref
from typing import TYPE_CHECKING, Any, Protocol

import discord

from bot.types import ModelType
from plugins.voice import to_pcm

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

FRAME_BYTES = discord.opus.Encoder.FRAME_SIZE  # 20 ms of 48 kHz 16-bit stereo: 3,840 bytes
MAX_SPOKEN_CHARS = 1500  # longer replies are read out only up to here; the text stays in chat


class Playable(Protocol):
    """What speaking needs from discord.VoiceClient (a fake in tests)."""

    def is_connected(self) -> bool: ...

    def is_playing(self) -> bool: ...

    def play(self, source: discord.AudioSource, *, after: Any = None) -> None: ...


def pcm_source(pcm: bytes) -> discord.PCMAudio:
    """A source of whole 20 ms frames: the tail is padded with silence, not dropped."""
    remainder = len(pcm) % FRAME_BYTES
    if remainder:
        pcm += b"\x00" * (FRAME_BYTES - remainder)
    return discord.PCMAudio(io.BytesIO(pcm))


class VoiceManager:
    """One voice connection per guild; speaking is serialised so replies never talk over each other."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()  # idle: dropped

    @staticmethod
    def connected_client(channel: Any) -> discord.VoiceClient | None:
        """The bot's voice connection if it is in exactly this channel."""
        guild = getattr(channel, "guild", None)
        client = guild.voice_client if guild is not None else None
        if client is not None and client.is_connected() and client.channel.id == channel.id:
            return client  # type: ignore[return-value]
        return None

    async def join(self, channel: discord.VoiceChannel | discord.StageChannel) -> discord.VoiceClient:
        current = channel.guild.voice_client
        if current is not None and current.is_connected():
            if current.channel.id != channel.id:
                await current.move_to(channel)  # type: ignore[attr-defined]
            return current  # type: ignore[return-value]
        log.info("joining voice channel %s in %s", channel.name, channel.guild.name)
        return await channel.connect(self_deaf=True)

    async def leave(self, guild: discord.Guild) -> bool:
        client = guild.voice_client
        if client is None:
            return False
        await client.disconnect(force=False)
        return True

    async def speak(self, voice: Playable, guild_id: int, text: str) -> bool:
        """Say `text` in the voice channel; False when there is nothing to say it with."""
        if not text.strip() or not self.runtime.has_model(ModelType.TEXT_TO_SPEECH):
            return False
        audio = await self.runtime.use_model(ModelType.TEXT_TO_SPEECH, {"text": text[:MAX_SPOKEN_CHARS]})
        source = pcm_source(await to_pcm(audio))
        async with self._locks.setdefault(guild_id, asyncio.Lock()):
            if not voice.is_connected():
                return False
            loop = asyncio.get_running_loop()
            finished = loop.create_future()

            def after(error: Exception | None) -> None:
                if error is not None:
                    log.warning("voice playback failed: %s", error)
                loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

            voice.play(source, after=after)
            await finished
        return True

    async def leave_if_alone(self, guild: discord.Guild) -> None:
        """Leave when nobody but bots is left in the bot's voice channel."""
        client = guild.voice_client
        channel = getattr(client, "channel", None)
        if client is not None and channel is not None and not any(not m.bot for m in channel.members):
            log.info("leaving voice channel %s: nobody is listening", channel.name)
            await client.disconnect(force=False)
