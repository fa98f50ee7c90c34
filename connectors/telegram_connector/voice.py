"""What Telegram media means to the agent: voice notes heard, photos seen, replies spoken.

Files are fetched with getFile and downloaded into memory; only the file_id is ever kept, since
a Telegram file URL embeds the bot token. The Bot API cannot download files over 20 MB, so
larger ones are noted without being read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telegram import Message
from telegram.error import TelegramError

from bot.types import Attachment, ModelType
from plugins.voice import to_ogg_opus

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
SOURCE = "telegram"


@dataclass
class Heard:
    """The text and attachments read from one message; `spoke` when the user sent a voice note."""

    text: str
    attachments: list[Attachment] = field(default_factory=list)
    spoke: bool = False
    unheard_voice: bool = False  # a voice note that could not be transcribed


class MediaReader:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def read(self, message: Message) -> Heard:
        heard = Heard(text=message.text or message.caption or "")
        audio = message.voice or message.audio
        if audio is not None:
            heard.spoke = message.voice is not None
            mime = audio.mime_type or "audio/ogg"
            attachment = Attachment(id=audio.file_unique_id, kind="voice" if heard.spoke else "audio",
                                    title="Voice message" if heard.spoke else getattr(audio, "title", None),
                                    source=SOURCE, content_type=mime, file_id=audio.file_id)
            transcript = await self._transcribe(message, audio.file_id, audio.file_size, mime)
            if transcript:
                attachment.text = transcript
                heard.text = f"{transcript}\n{heard.text}".strip()
            else:
                heard.unheard_voice = True
            heard.attachments.append(attachment)
        if message.photo:
            photo = message.photo[-1]  # the largest size
            attachment = Attachment(id=photo.file_unique_id, kind="image", title="Photo", source=SOURCE,
                                    content_type="image/jpeg", file_id=photo.file_id)
            await self._describe(message, photo.file_id, photo.file_size, attachment)
            heard.attachments.append(attachment)
        if message.document is not None:
            document = message.document
            heard.attachments.append(Attachment(
                id=document.file_unique_id, kind="file", title=document.file_name, source=SOURCE,
                content_type=document.mime_type, file_id=document.file_id,
            ))
        return heard

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

    async def _transcribe(self, message: Message, file_id: str, size: int | None, mime: str) -> str | None:
        if not self.runtime.has_model(ModelType.TRANSCRIPTION):
            return None
        audio = await self._download(message, file_id, size)
        if audio is None:
            return None
        try:
            text = await self.runtime.use_model(ModelType.TRANSCRIPTION, {
                "audio": audio, "mime_type": mime, "filename": f"voice.{mime.split('/')[-1]}",
            })
        except Exception as error:
            log.warning("transcription failed: %s", error)
            return None
        return str(text).strip() or None

    async def _describe(self, message: Message, file_id: str, size: int | None, attachment: Attachment) -> None:
        if not self.runtime.has_model(ModelType.IMAGE_DESCRIPTION):
            return
        image = await self._download(message, file_id, size)
        if image is None:
            return
        try:
            described = await self.runtime.use_model(ModelType.IMAGE_DESCRIPTION,
                                                     {"image": image, "mime_type": "image/jpeg"})
        except Exception as error:
            log.warning("image description failed: %s", error)
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
