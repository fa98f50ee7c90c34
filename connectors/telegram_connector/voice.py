"""What Telegram media means to the agent: voice notes heard, photos seen, replies spoken.

Attachments are noted from the update first and the message is stored with them; files are then
fetched (getFile) and read in the message's turn. Only the file_id is ever kept, since a Telegram
file URL embeds the bot token. The Bot API cannot download files over 20 MB, so larger ones are
noted without being read. Voice notes and audio over VOICE_MAX_MB or VOICE_MAX_SECONDS (both known
from the update) are noted as refused and never downloaded; downloads stream to a temporary file,
so a file is held in memory once, for the model call, not three times over.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from telegram import Audio, Message, Voice
from telegram.error import TelegramError

from bot.types import Attachment, Memory, ModelType
from plugins.voice import to_ogg_opus

from .intake import message_text, name_of

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

MB = 1024 * 1024
MAX_DOWNLOAD_BYTES = 20 * MB
DOWNLOAD_TIMEOUT = 60.0
SOURCE = "telegram"
AUDIO_KINDS = ("voice", "audio")
UNHEARD = "could not be transcribed"


@dataclass
class Heard:
    """What one message brings before any file is read: its caption or text and its attachments.

    Attachments are noted from the update alone (kind, file_id, never a URL); `MediaReader.enrich`
    later downloads what can be read and adds transcripts and descriptions. `spoke` is set when
    the user sent a voice note (VOICE_REPLIES=auto answers those by voice).
    """

    text: str
    attachments: list[Attachment] = field(default_factory=list)
    spoke: bool = False
    refused: bool = False  # the audio is over VOICE_MAX_MB or VOICE_MAX_SECONDS: it is not downloaded

    @property
    def audio(self) -> Attachment | None:
        return next((a for a in self.attachments if a.kind in AUDIO_KINDS), None)

    @property
    def readable(self) -> bool:
        """Whether there is something for `enrich` to download (a voice note, audio or a photo)."""
        return any((a.kind in AUDIO_KINDS and not self.refused) or a.kind == "image" for a in self.attachments)


class MediaReader:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    @property
    def can_hear(self) -> bool:
        return self.runtime.has_model(ModelType.TRANSCRIPTION)

    @property
    def max_audio_bytes(self) -> int:
        return int(self.runtime.settings.voice_max_mb * MB)

    def refusal(self, audio: Voice | Audio) -> str | None:
        """Why this voice note or audio file will not be downloaded (too big or too long), or None."""
        settings = self.runtime.settings
        size = audio.file_size
        duration = audio.duration.total_seconds() if isinstance(audio.duration, dt.timedelta) else audio.duration
        if isinstance(size, int | float) and size > self.max_audio_bytes:
            return f"over {settings.voice_max_mb:g} MB"
        if isinstance(duration, int | float) and duration > settings.voice_max_seconds:
            return f"longer than {settings.voice_max_seconds} seconds"
        return None

    def note(self, message: Message) -> Heard:
        """The message's text (or caption) and attachments, without downloading anything."""
        heard = Heard(text=message_text(message))
        audio = message.voice or message.audio
        if isinstance(audio, Voice | Audio) and isinstance(audio.file_id, str):
            heard.spoke = isinstance(audio, Voice)
            title = "Voice message" if heard.spoke else name_of(getattr(audio, "title", None)) or None
            refused = self.refusal(audio)
            if refused is not None:
                heard.refused = True
                title = f"{title or 'Audio'} (not transcribed: {refused})"
                log.info("not transcribing audio in chat %s: %s", message.chat.id, refused)
            heard.attachments.append(Attachment(
                id=name_of(audio.file_unique_id) or audio.file_id, kind="voice" if heard.spoke else "audio",
                title=title, source=SOURCE, content_type=name_of(audio.mime_type) or "audio/ogg",
                file_id=audio.file_id,
            ))
        if message.photo and isinstance(message.photo[-1].file_id, str):
            photo = message.photo[-1]  # the largest size
            heard.attachments.append(Attachment(
                id=name_of(photo.file_unique_id) or photo.file_id, kind="image", title="Photo", source=SOURCE,
                content_type="image/jpeg", file_id=photo.file_id,
            ))
        if message.document is not None and isinstance(message.document.file_id, str):
            document = message.document
            heard.attachments.append(Attachment(
                id=name_of(document.file_unique_id) or document.file_id, kind="file",
                title=name_of(document.file_name) or None, source=SOURCE,
                content_type=name_of(document.mime_type) or None, file_id=document.file_id,
            ))
        return heard

    async def enrich(self, memory: Memory, message: Message) -> Memory:
        """The stored `memory` of `message` with its voice note transcribed and its photo described.

        Runs in the message's turn, after it is stored (the `prepare` step of receive_message), so
        a slow or failing model never stands between receiving a message and keeping it. A voice
        note that could not be heard says so in its title, so the reply can say so too.
        """
        enriched = memory.model_copy(deep=True)
        content = enriched.content
        caption = content.text
        for attachment in content.attachments:
            if attachment.kind in AUDIO_KINDS:
                audio = message.voice or message.audio
                if audio is None or self.refusal(audio) is not None:
                    continue  # its title already says why it is not heard
                transcript = await self._transcribe(message, attachment, audio.file_size)
                if transcript:
                    attachment.text = transcript
                    content.text = f"{transcript}\n{caption}".strip()
                else:
                    attachment.title = f"{attachment.title or 'Audio'} ({UNHEARD})"
            elif attachment.kind == "image":
                photo = message.photo[-1] if message.photo else None
                await self._describe(message, attachment, photo.file_size if photo else None)
        return enriched

    async def _download(self, message: Message, file_id: str, size: int | None, limit: int) -> bytes | None:
        """The file's bytes, streamed to a temporary file on the way; None (logged) when it is over
        `limit` bytes (as announced or as received) or cannot be fetched."""
        if isinstance(size, int) and size > limit:
            log.info("not downloading a %d-byte file: over the %d-byte limit", size, limit)
            return None
        try:
            file = await message.get_bot().get_file(file_id)
        except TelegramError as error:
            log.warning("could not download a file from chat %s: %s", message.chat_id, error)
            return None
        if isinstance(file.file_size, int) and file.file_size > limit:
            log.info("not downloading a %d-byte file: over the %d-byte limit", file.file_size, limit)
            return None
        if not file.file_path:
            log.warning("could not download a file from chat %s: Telegram gave no path", message.chat_id)
            return None
        with tempfile.TemporaryFile() as spool:
            received = 0
            try:
                async with httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT) as http, \
                        http.stream("GET", file.file_path) as response:
                    if response.status_code != 200:
                        log.warning("could not download a file from chat %s: HTTP %d", message.chat_id,
                                    response.status_code)
                        return None
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        if received > limit:
                            log.info("stopped downloading a file from chat %s: over the %d-byte limit",
                                     message.chat_id, limit)
                            return None
                        spool.write(chunk)
            except httpx.HTTPError as error:  # its text would quote the URL, which embeds the token
                log.warning("could not download a file from chat %s: %s", message.chat_id, type(error).__name__)
                return None
            spool.seek(0)
            return spool.read()

    async def _transcribe(self, message: Message, attachment: Attachment, size: int | None) -> str | None:
        if not self.can_hear or attachment.file_id is None:
            return None
        async with self.runtime.media_slots:  # the audio is in memory from download to transcript
            audio = await self._download(message, attachment.file_id, size, self.max_audio_bytes)
            if audio is None:
                return None
            mime = attachment.content_type or "audio/ogg"
            try:
                text = await self.runtime.use_model(ModelType.TRANSCRIPTION, {
                    "audio": audio, "mime_type": mime, "filename": f"voice.{mime.split('/')[-1]}",
                })
            except Exception as error:
                log.warning("transcription failed in chat %s: %s", message.chat_id, error)
                return None
        return str(text).strip() or None

    async def _describe(self, message: Message, attachment: Attachment, size: int | None) -> None:
        if not self.runtime.has_model(ModelType.IMAGE_DESCRIPTION) or attachment.file_id is None:
            return
        image = await self._download(message, attachment.file_id, size, MAX_DOWNLOAD_BYTES)
        if image is None:
            return
        try:
            described = await self.runtime.use_model(ModelType.IMAGE_DESCRIPTION,
                                                     {"image": image, "mime_type": "image/jpeg"})
        except Exception as error:
            log.warning("image description failed in chat %s: %s", message.chat_id, error)
            return
        attachment.title = str(described.get("title") or attachment.title)
        attachment.description = str(described.get("description") or "") or None


async def speak(runtime: AgentRuntime, text: str) -> bytes | None:
    """The text as an OGG/Opus voice note, or None when there is no speech model or it fails."""
    if not text.strip() or not runtime.has_model(ModelType.TEXT_TO_SPEECH):
        return None
    try:
        audio = await runtime.use_model(ModelType.TEXT_TO_SPEECH, {"text": text})
        return await to_ogg_opus(bytes(audio))
    except Exception as error:  # a voice note is a bonus: the text reply still goes out
        log.warning("could not make a voice reply: %s", error)
        return None
