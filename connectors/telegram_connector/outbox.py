"""Everything the bot sends: formatted chunks, keyboards, voice notes, photos, the typing indicator.

One place applies the etiquette: per-chat pacing, the reply and topic of every chunk, the plain
resend when Telegram rejects the markup, and silence towards chats that blocked or removed the bot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from telegram import Bot, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Forbidden, TelegramError

from bot.types import Attachment, Content

from .formatting import CAPTION_LIMIT, html_to_plain, markdown_to_html, render_chunks, visible_length
from .keyboards import ButtonStore
from .pacing import ChatPacer

log = logging.getLogger(__name__)

TYPING_INTERVAL = 4.0  # Telegram shows "typing…" for 5 s after each chat action


def message_key(chat_id: int, message_id: int) -> str:
    """The platform key of a message; memory ids are `create_unique_uuid(agent_id, key)`."""
    return f"telegram:msg:{chat_id}:{message_id}"


@dataclass(frozen=True)
class Target:
    """Where a reply goes: the chat, the forum topic, and the message the first chunk answers."""

    chat_id: int
    thread_id: int | None = None
    reply_to: int | None = None
    voice: bool = False  # the user spoke, so VOICE_REPLIES=auto answers by voice too


class Typing:
    """Shows "typing…" in a chat until stopped, refreshing it before Telegram lets it lapse."""

    def __init__(self, bot: Bot, target: Target, interval: float = TYPING_INTERVAL) -> None:
        self.bot, self.target, self.interval = bot, target, interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Typing:
        self._task = asyncio.create_task(self._run(), name=f"typing-{self.target.chat_id}")
        return self

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                await self.bot.send_chat_action(self.target.chat_id, ChatAction.TYPING,
                                                message_thread_id=self.target.thread_id)
            except Forbidden:
                return
            except TelegramError as error:
                log.debug("typing indicator failed in chat %s: %s", self.target.chat_id, error)
            await asyncio.sleep(self.interval)


class Outbox:
    def __init__(self, bot: Bot, buttons: ButtonStore, pacer: ChatPacer) -> None:
        self.bot = bot
        self.buttons = buttons
        self.pacer = pacer
        self.blocked: set[int] = set()

    def unblock(self, chat_id: int) -> None:
        """The chat wrote to us again (a user who unblocked the bot sends /start)."""
        self.blocked.discard(chat_id)

    async def send(self, target: Target, content: Content, voice: bytes | None = None) -> list[str]:
        """Send a reply; returns the keys of the messages sent, even when a later part failed."""
        if target.chat_id in self.blocked:
            log.info("not sending to chat %s: the bot was blocked or removed there", target.chat_id)
            return []
        sent: list[Message] = []
        try:
            await self._send(target, content, voice, sent)
        except Forbidden as error:
            self.blocked.add(target.chat_id)
            log.warning("chat %s refuses messages (%s); not sending there any more", target.chat_id, error)
        return [message_key(m.chat_id, m.message_id) for m in sent]

    async def _send(self, target: Target, content: Content, voice: bytes | None, sent: list[Message]) -> None:
        """Send every part in order; once one part is out, a failing part ends the reply there.

        The first part's error propagates (nothing reached the user, so the pipeline may apologise);
        after that the parts already sent stand as the reply and their keys are returned, because an
        apology after half an answer, or a lost key for a message the user can see, is worse.
        Forbidden always propagates: `send` then stops writing to that chat.
        """
        markup = await self.buttons.keyboard(content.buttons) if content.buttons else None
        if len(content.text) > 2000:  # linear, but a long hostile reply costs tens of ms: off the event loop
            chunks = await asyncio.to_thread(render_chunks, content.text)
        else:
            chunks = render_chunks(content.text)
        parts: list[Callable[[int | None], Awaitable[Message | None]]] = []
        if voice is not None:
            caption = markdown_to_html(content.text)
            fits = len(chunks) == 1 and visible_length(caption) <= CAPTION_LIMIT
            parts.append(partial(self._voice, target, voice, caption if fits else None,
                                 markup=markup if fits else None))
            if fits:
                chunks = []
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            parts.append(partial(self.text_message, target, chunk, markup=markup if last else None))
        parts.extend(partial(self._attachment, target, attachment) for attachment in content.attachments)
        reply_to = target.reply_to  # only the first part replies to the message
        for number, part in enumerate(parts, 1):
            try:
                message = await part(reply_to)
            except Forbidden:
                raise
            except TelegramError as error:
                if not sent:
                    raise
                log.warning("sending part %d of %d to chat %s failed (%s: %s); the reply stops after %d part(s)",
                            number, len(parts), target.chat_id, type(error).__name__, error, len(sent))
                return
            if message is not None:
                sent.append(message)
                reply_to = None

    @staticmethod
    def _reply(message_id: int | None) -> ReplyParameters | None:
        return ReplyParameters(message_id, allow_sending_without_reply=True) if message_id else None

    async def text_message(self, target: Target, chunk: str, reply_to: int | None, *,
                           markup: InlineKeyboardMarkup | None = None) -> Message:
        """One HTML chunk as a message, paced; resent as plain text if Telegram rejects the markup."""
        async with self.pacer.slot(target.chat_id):
            try:
                return await self.bot.send_message(
                    target.chat_id, chunk, parse_mode=ParseMode.HTML, message_thread_id=target.thread_id,
                    reply_parameters=self._reply(reply_to), reply_markup=markup,
                )
            except BadRequest as error:
                if "parse entities" not in str(error).lower():
                    raise
                log.warning("Telegram rejected the formatting (%s); resending as plain text", error)
                return await self.bot.send_message(
                    target.chat_id, html_to_plain(chunk), message_thread_id=target.thread_id,
                    reply_parameters=self._reply(reply_to), reply_markup=markup,
                )

    async def _voice(self, target: Target, voice: bytes, caption: str | None, reply_to: int | None, *,
                     markup: InlineKeyboardMarkup | None = None) -> Message:
        async with self.pacer.slot(target.chat_id):
            try:
                return await self.bot.send_voice(
                    target.chat_id, voice, caption=caption, parse_mode=ParseMode.HTML if caption else None,
                    message_thread_id=target.thread_id, reply_parameters=self._reply(reply_to),
                    reply_markup=markup, filename="reply.ogg",
                )
            except BadRequest as error:
                if caption is None or "parse entities" not in str(error).lower():
                    raise
                return await self.bot.send_voice(
                    target.chat_id, voice, caption=html_to_plain(caption), message_thread_id=target.thread_id,
                    reply_parameters=self._reply(reply_to), reply_markup=markup, filename="reply.ogg",
                )

    async def _attachment(self, target: Target, attachment: Attachment, reply_to: int | None) -> Message | None:
        """Outgoing files: bytes or a public URL (never a Telegram file URL, which holds the token)."""
        media = attachment.data or attachment.file_id or attachment.url
        if media is None:
            return None
        send = self.bot.send_photo if attachment.kind == "image" else self.bot.send_document
        options = {"filename": attachment.title or attachment.id} if attachment.data else {}
        async with self.pacer.slot(target.chat_id):
            return await send(target.chat_id, media, caption=attachment.description and attachment.description[:1000],
                              message_thread_id=target.thread_id, reply_parameters=self._reply(reply_to),
                              **options)
