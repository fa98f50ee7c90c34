"""What Telegram media means to the agent: voice notes heard, photos seen, replies spoken.

Attachments are noted from the update first and the message is stored with them; files are then
fetched (getFile) and read in the message's turn. Only the file_id is ever kept, since a Telegram
file URL embeds the bot token. The Bot API cannot download files over 20 MB, so larger ones are
noted without being read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telegram import Message
from telegram.error import TelegramError

from bot.types import Attachment, Memory, ModelType
from plugins.voice import to_ogg_opus

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
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

    @property
    def audio(self) -> Attachment | None:
        return next((a for a in self.attachments if a.kind in AUDIO_KINDS), None)

    @property
    def readable(self) -> bool:
        """Whether there is something for `enrich` to download (a voice note, audio or a photo)."""
        return any(a.kind in AUDIO_KINDS or a.kind == "image" for a in self.attachments)


class MediaReader:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    @property
    def can_hear(self) -> bool:
        return self.runtime.has_model(ModelType.TRANSCRIPTION)

    def note(self, message: Message) -> Heard:
        """The message's text (or caption) and attachments, without downloading anything."""
        heard = Heard(text=message.text or message.caption or "")
        audio = message.voice or message.audio
        if audio is not None:
            heard.spoke = message.voice is not None
            heard.attachments.append(Attachment(
                id=audio.file_unique_id, kind="voice" if heard.spoke else "audio",
                title="Voice message" if heard.spoke else getattr(audio, "title", None), source=SOURCE,
                content_type=audio.mime_type or "audio/ogg", file_id=audio.file_id,
            ))
        if message.photo:
            photo = message.photo[-1]  # the largest size
            heard.attachments.append(Attachment(
                id=photo.file_unique_id, kind="image", title="Photo", source=SOURCE, content_type="image/jpeg",
                file_id=photo.file_id,
            ))
        if message.document is not None:
            document = message.document
            heard.attachments.append(Attachment(
                id=document.file_unique_id, kind="file", title=document.file_name, source=SOURCE,
                content_type=document.mime_type, file_id=document.file_id,
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
                transcript = await self._transcribe(message, attachment, audio.file_size if audio else None)
                if transcript:
                    attachment.text = transcript
                    content.text = f"{transcript}\n{caption}".strip()
                else:
                    attachment.title = f"{attachment.title or 'Audio'} ({UNHEARD})"
            elif attachment.kind == "image":
                photo = message.photo[-1] if message.photo else None
                await self._describe(message, attachment, photo.file_size if photo else None)
        return enriched

    async def _download(self, message: Message, file_id: str, size: int | None) -> bytes | None:
        if size is not None and size > MAX_DOWNLOAD_BYTES:
            log.info("not downloading a %d-byte file: over the Bot API's 20 MB limit", size)
            return None
        try:
            file = await message.get_bot().get_file(file_id)
            if file.file_size is not None and file.file_size > MAX_DOWNLOAD_BYTES:
                return None
            return bytes(await file.download_as_bytearray())
        except TelegramError as error:
            log.warning("could not download a file from chat %s: %s", message.chat_id, error)
            return None

    async def _transcribe(self, message: Message, attachment: Attachment, size: int | None) -> str | None:
        if not self.can_hear or attachment.file_id is None:
            return None
        audio = await self._download(message, attachment.file_id, size)
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
        image = await self._download(message, attachment.file_id, size)
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
