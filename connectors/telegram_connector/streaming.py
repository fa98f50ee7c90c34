"""Telegram replies shown while the model writes them.

Private chats get a draft (`sendMessageDraft`, Bot API 9.5): an animated preview that is not a
message, replaced by the real message when the reply is done. Groups and forum topics get one
message that is edited as the text grows. Either way:

- previews take only spare budget (`ChatPacer.spare_slot`, and a free slot of the bot's 30/s):
  they are skipped, never queued, so a streamed reply causes no 429 and never delays the final
  text, which waits for its slot like any message;
- a preview that meets RetryAfter is not retried (the next one, or the final text, replaces it);
- every preview is valid HTML of a prefix of the final text (`stable_prefix`), with a cursor;
- the final text is sent (drafts) or edited in (groups) exactly once;
- a reply that outgrows one message continues in a new one: the full part is final at once.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from telegram import Message
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from bot.streaming import PacedStream
from bot.types import Content

from .formatting import html_to_plain, markdown_to_html, render_chunks, stable_prefix
from .outbox import message_key
from .pacing import PREVIEW, NoSlot

if TYPE_CHECKING:
    from .outbox import Outbox, Target, Typing

log = logging.getLogger(__name__)

CURSOR = " ▌"
DRAFT_SECONDS = 0.25  # drafts are not messages: they animate, and only the bot's overall budget bounds them
PART_CHARS = 3500  # streamed Markdown longer than this moves on to a new message (4096 after rendering)
_BREAKS = (re.compile(r"\n\n"), re.compile(r"\n"), re.compile(r"\s"))
_draft_ids = itertools.count(random.randrange(1, 2**30))


def split_point(text: str, limit: int = PART_CHARS) -> int:
    """Where a long streamed text ends its full part: the last paragraph, line or word break before
    `limit`, outside a code block (a cut inside one would show the fence as text)."""
    for pattern in _BREAKS:
        for match in reversed(list(pattern.finditer(text, 0, limit))):
            if text.count("```", 0, match.start()) % 2 == 0 and match.start() > 0:
                return match.end()
    return limit


class TelegramStream(PacedStream):
    """One streamed reply in one chat (see the module docstring)."""

    def __init__(self, outbox: Outbox, target: Target, typing: Typing | None, *, draft: bool,
                 edit_seconds: float) -> None:
        super().__init__()
        self.outbox, self.target, self.typing, self.draft = outbox, target, typing, draft
        self.interval = DRAFT_SECONDS if draft else edit_seconds
        self.draft_id = next(_draft_ids)
        self.parts: list[Message] = []  # full parts, final as sent
        self.parts_text = ""  # the Markdown they hold
        self.current: Message | None = None  # groups: the message being edited
        self.current_html = ""
        self.quiet_until = 0.0  # after a RetryAfter: no previews until then
        self.delivered = False

    async def reset(self) -> None:
        self.text = self.shown = ""

    async def show(self, text: str) -> bool:
        if time.monotonic() < self.quiet_until:
            return False
        if not text.startswith(self.parts_text):
            return True  # the text started over past a full part: only the final text can sort that out
        rest = text[len(self.parts_text):]
        if len(rest) > PART_CHARS:
            cut = split_point(rest)
            await self._complete_part(rest[:cut])
            rest = text[len(self.parts_text):]
        preview = stable_prefix(rest)
        if not preview:
            return True
        markup = markdown_to_html(preview) + CURSOR
        if self.typing is not None:
            self.typing.stop()
        try:
            if self.draft:
                return await self._draft(markup)
            if self.current is None:
                self.current = await self.outbox.text_message(self.target, markup, self._reply_to())
                self.current_html = markup
                return True
            return await self._edit(markup)
        except NoSlot:
            return False
        except RetryAfter as error:
            wait = error.retry_after
            self.quiet_until = time.monotonic() + (wait.total_seconds() if isinstance(wait, timedelta) else wait)
            return False

    def _reply_to(self) -> int | None:
        return None if self.parts else self.target.reply_to

    async def _draft(self, markup: str) -> bool:
        await self.outbox.bot.send_message_draft(
            self.target.chat_id, self.draft_id, markup, message_thread_id=self.target.thread_id,
            parse_mode=ParseMode.HTML, rate_limit_args=PREVIEW)
        return True

    async def _edit(self, markup: str) -> bool:
        assert self.current is not None
        if not await self.outbox.pacer.spare_slot(self.target.chat_id):
            return False
        await self.outbox.bot.edit_message_text(
            markup, self.target.chat_id, self.current.message_id, parse_mode=ParseMode.HTML,
            rate_limit_args=PREVIEW)
        self.current_html = markup
        return True

    async def _complete_part(self, part: str) -> None:
        """A full part of a long reply: final now, as its own message (the stream goes on in the next)."""
        chunks = render_chunks(part.strip())
        for chunk in chunks:
            if self.current is not None:
                self.parts.append(await self._final_edit(self.current, chunk, None))
                self.current = None
            else:
                self.parts.append(await self.outbox.text_message(self.target, chunk, self._reply_to()))
        self.parts_text += part

    async def _final_edit(self, message: Message, chunk: str, markup: object) -> Message:
        """The final text of a streamed message: waits for its slot (and RetryAfter), like a send."""
        if chunk == self.current_html and markup is None:
            return message
        async with self.outbox.pacer.slot(self.target.chat_id):
            try:
                edited = await self.outbox.bot.edit_message_text(
                    chunk, self.target.chat_id, message.message_id, parse_mode=ParseMode.HTML, reply_markup=markup)
            except BadRequest as error:
                text = str(error).lower()
                if "not modified" in text:
                    return message
                if "parse entities" not in text:
                    raise
                edited = await self.outbox.bot.edit_message_text(
                    html_to_plain(chunk), self.target.chat_id, message.message_id, reply_markup=markup)
        return edited if isinstance(edited, Message) else message

    async def finish(self, content: Content) -> list[str] | None:
        await self.stop()
        self.delivered = True
        if self.typing is not None:
            self.typing.stop()
        if not self.parts and self.current is None:
            return None  # nothing but a draft was shown: the reply goes out as usual, replacing it
        if content.attachments or not content.text.strip() or not content.text.startswith(self.parts_text):
            log.info("chat %s: the reply is not the streamed text; its preview is withdrawn", self.target.chat_id)
            await self._withdraw()
            return None
        try:
            return await self._deliver(content)
        except Forbidden:
            raise
        except TelegramError as error:
            # What is shown stands: sending the text again could show it twice.
            log.warning("finishing a streamed reply in chat %s failed (%s: %s); its last preview stands",
                        self.target.chat_id, type(error).__name__, error)
            return self._keys()

    async def _deliver(self, content: Content) -> list[str]:
        markup = await self.outbox.buttons.keyboard(content.buttons) if content.buttons else None
        chunks = render_chunks(content.text[len(self.parts_text):]) or []
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            if index == 0 and self.current is not None:
                self.parts.append(await self._final_edit(self.current, chunk, markup if last else None))
                self.current = None
            else:
                self.parts.append(await self.outbox.text_message(
                    self.target, chunk, self._reply_to(), markup=markup if last else None))
        if self.current is not None:  # the final text is shorter than what was shown: nothing left for it
            await self._delete(self.current)
            self.current = None
        return self._keys()

    def _keys(self) -> list[str]:
        messages = [*self.parts, *([self.current] if self.current else [])]
        return [message_key(m.chat_id, m.message_id) for m in messages]

    async def close(self) -> None:
        """A preview that no reply finished (the model called a tool that answered, or nothing was
        said) is withdrawn; a draft simply lapses."""
        if self.delivered:
            return
        await self.stop()
        if self.current is not None or self.parts:
            await self._withdraw()

    async def _withdraw(self) -> None:
        for message in [*self.parts, *([self.current] if self.current else [])]:
            await self._delete(message)
        self.parts, self.parts_text, self.current = [], "", None

    async def _delete(self, message: Message) -> None:
        try:
            await self.outbox.bot.delete_message(self.target.chat_id, message.message_id)
        except TelegramError as error:
            log.warning("could not withdraw a streamed preview in chat %s: %s", self.target.chat_id, error)
