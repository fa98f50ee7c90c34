"""Discord replies shown while the model writes them: a message edited as the text grows.

The first text goes out at once as the reply's first message, exactly as `deliver` sends one
(replying to the user's message, after the channel's slot, through the HTTP client that announces
the send).
Later texts edit it, at most once per STREAM_EDIT_SECONDS and only when the channel's budget has a
slot free now with `EDIT_SPARE` more to spare: Discord counts a channel's edits with its messages
(5 per 5 s), and an edit skipped costs nothing, while one queued would hold up the channel's next
reply. A text past 2,000 characters is shown split as `split_message` will split the final text:
a cut, once made, stays where it is as the text grows, so every part but the last is final (only a
line still being written may move on to the next message when it outgrows the last one).
Discord notifies mentions when a message is sent, not when it is edited: the reply's ping to the
user goes out with the first message, a user mentioned only later in a streamed text is not pinged.

`finish` turns what was shown into the final reply: it edits a part only where it differs, sends
the parts still missing, deletes those no longer needed, and waits for the channel's slot for each,
so the final text is never lost to a rate limit. Content an edit does not carry here (files) is not
streamed: what was shown is deleted and the reply is sent as usual.

Slash-command /ask replies are interaction follow-ups (webhook messages, with their own endpoints
and token lifetime) and are not streamed: Discord shows its own "thinking…" until the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import discord

from bot.streaming import PacedStream
from bot.types import Content

from .chunking import DISCORD_LIMIT, reply_text, split_message
from .client import SAFE_MENTIONS, post
from .events import message_key
from .views import build_view

if TYPE_CHECKING:
    from .connector import DiscordConnector, SendOne

log = logging.getLogger(__name__)

CURSOR = " ▌"  # marks the part still being written; never in a final message
EDIT_SPARE = 2  # channel slots an edit leaves free, for other replies and final edits


def with_cursor(part: str) -> str:
    """The part being written, marked where the mark fits and cannot end up inside a code block."""
    if part.endswith("```") or len(part) + len(CURSOR) > DISCORD_LIMIT:
        return part
    return part + CURSOR


@dataclass
class Part:
    """One message of the reply and the text it shows."""

    message: discord.Message
    text: str


class DiscordReply:
    """The reply callback of one incoming message (a `StreamingCallback`): sends content as usual,
    and opens a stream for the reply unless `streams` is off (/ask follow-ups)."""

    def __init__(self, connector: DiscordConnector, channel: Any, send_one: SendOne,
                 reference: discord.Message | None, message_id: UUID, *, streams: bool) -> None:
        self.connector = connector
        self.channel = channel
        self.send_one = send_one
        self.reference = reference
        self.message_id = message_id  # the answered message, whose "typing…" the first text ends
        self.streams = streams

    async def __call__(self, content: Content) -> list[str]:
        return await self.connector.deliver(self.channel, content, self.send_one, self.reference)

    def open_stream(self) -> DiscordStream | None:
        return DiscordStream(self) if self.streams else None


class DiscordStream(PacedStream):
    """One reply in one channel, shown as a message (or several past 2,000 characters) that is edited."""

    def __init__(self, reply: DiscordReply) -> None:
        super().__init__()
        self.reply = reply
        self.connector = reply.connector
        self.interval = self.connector.settings.stream_edit_seconds
        self.parts: list[Part] = []
        self.given_up = False  # the first message failed: nothing more is shown, the reply goes as usual
        self.delivered = False

    @property
    def channel_id(self) -> int:
        return self.reply.channel.id

    async def show(self, text: str) -> bool:
        if self.given_up:
            return True
        chunks = split_message(text)
        if not chunks:
            return True
        chunks[-1] = with_cursor(chunks[-1])
        for index, chunk in enumerate(chunks):
            if index < len(self.parts) and self.parts[index].text == chunk:
                continue
            if not await self._show_part(index, chunk):
                return False  # no slot free now: the rest after `interval`
        if len(self.parts) > len(chunks):  # a round that was reset had shown more
            await self._delete(self.parts[len(chunks):])
            del self.parts[len(chunks):]
        return True

    async def _show_part(self, index: int, chunk: str) -> bool:
        reply, pacer = self.reply, self.connector.pacer
        if not self.parts:
            await pacer.channel(self.channel_id)  # the reply's first message waits for its slot, as in deliver
            try:
                message = await post(reply.send_one, chunk, reply.reference)
            except discord.HTTPException as error:
                self.given_up = True
                log.info("Discord: not streaming a reply in channel %s (%s %s); it is sent when done",
                         self.channel_id, error.status, error.text)
                return True
            self.parts.append(Part(message, chunk))
            self.connector.typing.stop(reply.message_id)
            return True
        if not await pacer.try_channel(self.channel_id, spare=EDIT_SPARE):
            return False
        if index < len(self.parts):
            part = self.parts[index]
            part.message = await part.message.edit(content=chunk, allowed_mentions=SAFE_MENTIONS)
            part.text = chunk
        else:
            self.parts.append(Part(await post(reply.send_one, chunk), chunk))
        return True

    async def reset(self) -> None:
        self.text = ""  # the next text replaces what is shown, whatever it shares with it

    async def finish(self, content: Content) -> list[str] | None:
        await self.stop()
        if not self.parts:
            return None
        chunks = split_message(reply_text(content))
        view = await build_view(self.connector.runtime, content.buttons) if content.buttons else None
        if not chunks and view is not None:
            chunks = [""]
        if not chunks or any(a.data is not None for a in content.attachments):
            await self._withdraw()  # nothing to show, or files: `deliver` does it all
            return None
        keys: list[str] = []
        for index, chunk in enumerate(chunks):
            extra: dict[str, Any] = {"view": view} if view is not None and index == len(chunks) - 1 else {}
            try:
                keys.append(await self._final_part(index, chunk, extra))
            except discord.HTTPException as error:
                log.warning("Discord: part %d of %d of a streamed reply in channel %s failed (%s %s)%s",
                            index + 1, len(chunks), self.channel_id, error.status, error.text,
                            "; it is sent again" if index < len(self.parts) else "; the rest was not sent")
                if index < len(self.parts):  # an edit: the reply is sent anew in place of what was shown
                    await self._withdraw()
                    return None
                break  # a new message: the parts out so far stay the reply, as in deliver
        await self._delete(self.parts[len(chunks):])
        del self.parts[len(chunks):]
        self.delivered = True
        self.connector.typing.stop(self.reply.message_id)
        self.connector.delivered(self.reply.channel, content)
        return keys

    async def _final_part(self, index: int, chunk: str, extra: dict[str, Any]) -> str:
        """Make message `index` of the reply show `chunk` (sent if new), waiting for the channel's slot."""
        pacer = self.connector.pacer
        if index < len(self.parts):
            part = self.parts[index]
            if part.text != chunk or extra:
                await pacer.channel(self.channel_id)
                part.message = await part.message.edit(content=chunk or None, allowed_mentions=SAFE_MENTIONS,
                                                       **extra)
                part.text = chunk
            return message_key(self.channel_id, part.message.id)
        await pacer.channel(self.channel_id)
        message = await post(self.reply.send_one, chunk, **extra)
        self.parts.append(Part(message, chunk))
        return message_key(self.channel_id, message.id)

    async def close(self) -> None:
        await self.stop()
        if not self.delivered:
            await self._withdraw()

    async def _withdraw(self) -> None:
        parts, self.parts = self.parts, []
        await self._delete(parts)

    async def _delete(self, parts: list[Part]) -> None:
        """Delete shown messages no reply needs; one that cannot be deleted stays (logged)."""
        for part in parts:
            try:
                await part.message.delete()
            except discord.NotFound:
                pass
            except discord.HTTPException as error:
                log.warning("Discord: could not delete a streamed message in channel %s (%s %s)",
                            self.channel_id, error.status, error.text)
