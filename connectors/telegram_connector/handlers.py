"""Incoming updates → Memories: ids, rooms, mentions, media, commands, button presses, edits.

Handlers return as soon as the message is accepted by the runtime (stored and queued); they never
wait for the reply, so one slow conversation does not hold up the others. `ChatOrderedProcessor`
runs updates concurrently across chats but in order within a chat.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable
from datetime import datetime
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

from telegram import Chat, Message, MessageEntity, Update, User
from telegram.constants import ChatType
from telegram.ext import BaseUpdateProcessor, ContextTypes

from bot.ids import create_unique_uuid
from bot.plugin import HandlerCallback, MessagePreparer
from bot.runtime import ShuttingDown
from bot.streaming import ReplyStream
from bot.types import ChannelType, Content, Entity, EventType, Memory, MentionContext, Room, World

from .intake import is_id, message_text, name_of, text_of
from .outbox import Target, Typing, message_key
from .voice import AUDIO_KINDS, SOURCE, MediaReader

if TYPE_CHECKING:
    from .connector import TelegramConnector

log = logging.getLogger(__name__)

VOICE_UNAVAILABLE = "I can't listen to voice messages here yet; please type your message instead."
EXPIRED_BUTTON = "This button has expired."


class ChatOrderedProcessor(BaseUpdateProcessor):
    """Concurrent across chats, sequential within one, so a chat's messages are stored in order.

    An update waits for its chat's turn before it takes one of the shared slots, so a flooded
    chat's backlog waits without holding the slots every other chat needs.
    """

    def __init__(self, max_concurrent_updates: int = 64) -> None:
        super().__init__(max_concurrent_updates)
        self._locks: dict[int, tuple[asyncio.Lock, list[int]]] = {}  # chat → (lock, [updates using it])

    async def process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        chat = update.effective_chat if isinstance(update, Update) else None
        if chat is None:
            await super().process_update(update, coroutine)
            return
        lock, users = self._locks.setdefault(chat.id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:  # FIFO: the chat's updates keep their order
                await super().process_update(update, coroutine)
        finally:
            # Counted, not `lock.locked()`: a woken waiter has not taken the lock yet, and a new
            # lock for the chat would let the next update run beside it.
            users[0] -= 1
            if not users[0]:
                del self._locks[chat.id]

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        await coroutine

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to release."""


@lru_cache(maxsize=8)
def telegram_names(*names: str | None) -> re.Pattern[str]:
    """The bot's Telegram names as whole words (compiled once: they do not change while running)."""
    alternatives = "|".join(re.escape(n) for n in names if n) or r"(?!)"
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def is_group(chat: Chat) -> bool:
    return chat.type in (ChatType.GROUP, ChatType.SUPERGROUP)


def malformed(message: Message) -> str | None:
    """Why a message cannot be stored (no chat, sender or ids of the right type), or None."""
    if not isinstance(message.chat, Chat) or not is_id(message.chat.id):
        return "no chat"
    if not isinstance(message.from_user, User) or not is_id(message.from_user.id):
        return "no sender"
    if not is_id(message.message_id):
        return "no message id"
    if not isinstance(message.date, datetime):
        return "no date"
    return None


def topic_of(message: Message) -> int | None:
    """The forum topic a message is in; None outside forums (reply threads are not topics)."""
    return message.message_thread_id if message.is_topic_message is True and is_id(message.message_thread_id) else None


def real_reply(message: Message) -> Message | None:
    """The message replied to, except the topic-creation message Telegram sets on every topic post."""
    replied = message.reply_to_message
    if not isinstance(replied, Message) or replied.forum_topic_created is not None or not is_id(replied.message_id):
        return None
    return replied


class Reply:
    """The reply callback of one message: sends to its chat, or shows the reply as it is written."""

    def __init__(self, connector: TelegramConnector, target: Target, typing: Typing | None) -> None:
        self.connector, self.target, self.typing = connector, target, typing

    async def __call__(self, content: Content) -> list[str]:
        if self.typing is not None:
            self.typing.stop()
        return await self.connector.send(self.target, content)

    def open_stream(self) -> ReplyStream | None:
        return self.connector.open_stream(self.target, self.typing)


class Inbound:
    """PTB callbacks: each maps one kind of update onto the runtime's API."""

    def __init__(self, connector: TelegramConnector) -> None:
        self.connector = connector
        self.runtime = connector.runtime
        self.media = MediaReader(connector.runtime)
        self._ignored_chats: set[int] = set()
        self._told_voice_unavailable: set[int] = set()
        # "typing…" waits for its message's run: a chat with a backlog shows it for the message
        # being answered, not for every queued one (a flood of indicators would starve replies).
        self._typing: dict[UUID, Typing] = {}
        self.runtime.on(EventType.RUN_STARTED, self._run_started)
        self.runtime.on(EventType.RUN_ENDED, self._run_ended)

    # Identity ---------------------------------------------------------------------------------
    def _uuid(self, key: str) -> Any:
        return create_unique_uuid(self.runtime.agent_id, key)

    def entity(self, user: User) -> Entity:
        full_name = " ".join(n for n in (name_of(user.first_name), name_of(user.last_name)) if n)
        username = name_of(user.username) or None
        names = list(dict.fromkeys(n for n in (full_name, username) if n))
        return Entity(id=self._uuid(f"telegram:user:{user.id}"), agent_id=self.runtime.agent_id, names=names,
                      metadata={"telegram": {"id": user.id, "username": username, "is_bot": user.is_bot is True}})

    def room(self, chat: Chat, thread_id: int | None, topic_name: str | None = None) -> tuple[Room, World]:
        world = World(id=self._uuid(f"telegram:chat:{chat.id}"), agent_id=self.runtime.agent_id,
                      name=name_of(chat.title) or name_of(chat.first_name) or str(chat.id), server_id=str(chat.id),
                      metadata={"telegram": {"chat_type": name_of(chat.type)}})
        key = f"telegram:chat:{chat.id}" + (f":topic:{thread_id}" if thread_id else "")
        name = f"{world.name} / {name_of(topic_name)}" if topic_name else world.name
        room = Room(id=self._uuid(key), agent_id=self.runtime.agent_id, name=name, source=SOURCE,
                    type=ChannelType.GROUP if is_group(chat) else ChannelType.DM, channel_id=str(chat.id),
                    server_id=str(chat.id), world_id=world.id,
                    metadata={"chat_id": chat.id, "thread_id": thread_id})
        return room, world

    def _allowed(self, chat: Chat) -> bool:
        allowed = self.runtime.settings.telegram_allowed_chats
        if not allowed or chat.id in allowed:
            return True
        if chat.id not in self._ignored_chats:
            self._ignored_chats.add(chat.id)
            log.info("ignoring chat %s: not in TELEGRAM_ALLOWED_CHATS", chat.id)
        return False

    def _mention(self, message: Message) -> MentionContext:
        bot = message.get_bot()
        try:
            text_entities = message.parse_entities() or message.parse_caption_entities()
        except (UnicodeDecodeError, TypeError, ValueError, AttributeError, IndexError):
            # Offsets that split a surrogate pair or do not fit the text: the mention is judged by name.
            log.info("ignoring malformed entities of message %s in chat %s", message.message_id, message.chat.id)
            text_entities = {}
        username = f"@{bot.username}".lower()
        mentioned = any(
            (entity.type == MessageEntity.MENTION and value.lower() == username)
            or (entity.type == MessageEntity.TEXT_MENTION and entity.user is not None and entity.user.id == bot.id)
            for entity, value in text_entities.items()
        )
        replied = real_reply(message)
        is_reply = bool(replied and isinstance(replied.from_user, User) and replied.from_user.id == bot.id)
        # The character's own names are the runtime's check (is_addressed); this adds the bot's Telegram names.
        named = telegram_names(bot.first_name, bot.username).search(message_text(message)) is not None
        return MentionContext(is_mention=mentioned or named, is_reply=is_reply,
                              is_thread=topic_of(message) is not None)

    async def _memory(self, message: Message, text: str, attachments: list[Any] | None = None) -> Memory:
        user, chat = message.from_user, message.chat
        assert user is not None
        thread_id = topic_of(message)
        replied_to = message.reply_to_message
        topic = replied_to.forum_topic_created if isinstance(replied_to, Message) else None
        room, world = self.room(chat, thread_id, topic.name if topic is not None else None)
        entity = self.entity(user)
        await self.runtime.ensure_connection(entity, room, world)
        replied = real_reply(message)
        return Memory(
            id=self._uuid(message_key(chat.id, message.message_id)), entity_id=entity.id,
            agent_id=self.runtime.agent_id, room_id=room.id, world_id=world.id,
            content=Content(
                text=text, source=SOURCE, channel_type=room.type, mention_context=self._mention(message),
                in_reply_to=self._uuid(message_key(chat.id, replied.message_id)) if replied else None,
                attachments=attachments or [],
            ),
            created_at=int(message.date.timestamp() * 1000),
            metadata={"author_is_bot": user.is_bot is True, "telegram": {
                "chat_id": chat.id, "message_id": message.message_id, "thread_id": thread_id, "user_id": user.id}},
        )

    # Handlers -----------------------------------------------------------------------------------
    def _readable(self, update: Update, message: Message | None) -> Message | None:
        """The message, or None (logged once) when it lacks what storing it needs."""
        if message is None:
            return None
        problem = malformed(message)
        if problem is not None:
            log.warning("dropped Telegram update %s: malformed message (%s)", update.update_id, problem)
            return None
        return message

    async def on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = self._readable(update, update.message)
        if message is None or message.from_user.id == context.bot.id:
            return
        if not self._allowed(message.chat):
            return
        self.connector.outbox.unblock(message.chat_id)
        heard = self.media.note(message)
        target = Target(message.chat_id, topic_of(message), message.message_id, voice=heard.spoke)
        if heard.audio is not None and not heard.text.strip() and not self.media.can_hear:
            await self._voice_unavailable(target)  # nothing in it could be read: not stored, not answered
            return
        if not heard.text.strip() and not heard.attachments:
            return
        # Stored with the attachments noted; downloads and model calls come in its turn (prepare).
        memory = await self._memory(message, heard.text, heard.attachments)
        prepare = partial(self.media.enrich, message=message) if heard.readable else None
        await self._submit(memory, target, prepare=prepare)

    async def on_edited(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An edit replaces the stored text; it is never answered a second time."""
        message = self._readable(update, update.edited_message)
        if message is None or not self._allowed(message.chat):
            return
        memory = await self._memory(message, message_text(message))
        stored = await self.runtime.store.get_memory(memory.id)
        if stored is None:
            log.debug("edit of a message that was never stored (chat %s)", message.chat_id)
            return
        transcripts = [a.text for a in stored.content.attachments if a.kind in AUDIO_KINDS and a.text]
        stored.content.text = "\n".join([*transcripts, memory.content.text]).strip()  # a caption edit keeps them
        stored.metadata = {**stored.metadata, "edited_at": int((message.edit_date or message.date).timestamp() * 1000)}
        await self.runtime.update_memory(stored)

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start and /help answer from the character file, without a model call."""
        message = self._readable(update, update.message)
        if message is None or not self._allowed(message.chat):
            return
        self.connector.outbox.unblock(message.chat_id)
        character = self.runtime.character
        command = (text_of(message.text).split() or [""])[0].split("@")[0].lstrip("/").lower()
        if command == "help":
            text = (f"Talk to me in a private chat, or mention @{context.bot.username} or reply to me in a group. "
                    "You can send voice notes and photos too.")
        else:
            about = character.bio_lines[0] if character.bio_lines else ""
            text = f"Hi, I'm {character.name}! {about}".strip()
        await self.connector.outbox.send(Target(message.chat_id, topic_of(message), message.message_id),
                                         Content(text=text))

    async def on_callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A button press: acknowledge at once, then the button's value enters the pipeline."""
        query = update.callback_query
        if query is None:
            return
        source = query.message
        if not isinstance(query.from_user, User) or not is_id(query.from_user.id) or not isinstance(query.id, str) or (
                source is not None and (not isinstance(source.chat, Chat) or not is_id(source.chat.id)
                                        or not is_id(source.message_id))):
            log.warning("dropped Telegram update %s: malformed button press", update.update_id)
            return
        pressed = await self.connector.buttons.resolve(query.data if isinstance(query.data, str) else None)
        if pressed is None or query.message is None:
            await query.answer(EXPIRED_BUTTON, show_alert=True)
            return
        await query.answer()
        chat = query.message.chat
        if not self._allowed(chat):
            return
        thread_id = topic_of(source) if isinstance(source, Message) else None
        room, world = self.room(chat, thread_id)
        entity = self.entity(query.from_user)
        await self.runtime.ensure_connection(entity, room, world)
        memory = Memory(
            id=self._uuid(f"telegram:callback:{query.id}"), entity_id=entity.id, agent_id=self.runtime.agent_id,
            room_id=room.id, world_id=world.id,
            content=Content(
                text=pressed.value, source=SOURCE, channel_type=room.type,
                mention_context=MentionContext(is_reply=True, is_thread=thread_id is not None),
                in_reply_to=self._uuid(message_key(chat.id, query.message.message_id)),
                metadata={"button": {"label": pressed.label}},
            ),
            metadata={"author_is_bot": query.from_user.is_bot is True,
                      "telegram": {"chat_id": chat.id, "thread_id": thread_id, "user_id": query.from_user.id}},
        )
        await self._submit(memory, Target(chat.id, thread_id))

    # Pipeline -----------------------------------------------------------------------------------
    async def _submit(self, memory: Memory, target: Target, *, prepare: MessagePreparer | None = None) -> None:
        typing = None
        if self.runtime.is_addressed(memory):
            typing = self._typing[memory.id] = Typing(self.connector.bot, target, self.connector.typing_interval)
        try:
            ticket = await self.runtime.receive_message(memory, self._reply_callback(target, typing), prepare=prepare)
        except ShuttingDown:
            # The dispatcher stored the message before refusing it: nothing is lost, it is just not answered.
            self.typing_done(memory.id)
            log.info("shutting down: message %s in chat %s stored, not answered", memory.id, target.chat_id)
            return
        except BaseException:
            self.typing_done(memory.id)
            raise
        if typing is not None:
            ticket.outcome.add_done_callback(lambda _: self.typing_done(memory.id))

    async def _run_started(self, payload: dict[str, Any]) -> None:
        message: Memory = payload["message"]
        typing = self._typing.get(message.id)
        if typing is None and message.content.source == SOURCE and self.runtime.is_addressed(message):
            # Received by another process of a cluster, answered here (its reply goes out through
            # send_to_room): the indicator is ours to show, until the reply or the run's end.
            info = message.metadata.get("telegram", {})
            if is_id(info.get("chat_id")):
                target = Target(info["chat_id"], info.get("thread_id"))
                typing = self._typing[message.id] = Typing(self.connector.bot, target, self.connector.typing_interval)
        if typing is not None:
            typing.start()

    async def _run_ended(self, payload: dict[str, Any]) -> None:
        self.typing_done(payload["message"].id)

    def typing_done(self, message_id: UUID) -> None:
        typing = self._typing.pop(message_id, None)
        if typing is not None:
            typing.stop()

    def _reply_callback(self, target: Target, typing: Typing | None) -> HandlerCallback:
        return Reply(self.connector, target, typing)

    async def _voice_unavailable(self, target: Target) -> None:
        """Say once per chat (and process lifetime) that voice notes cannot be heard."""
        if target.chat_id in self._told_voice_unavailable:
            return
        self._told_voice_unavailable.add(target.chat_id)
        await self.connector.outbox.send(target, Content(text=VOICE_UNAVAILABLE))

