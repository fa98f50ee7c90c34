"""Who administers a Telegram chat, asked of Telegram (getChatMember) and cached for a while, so a
room-setting action costs at most one lookup per person per chat every few minutes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from telegram import Bot, ChatMember
from telegram.error import TelegramError

from bot.lru import LRU

log = logging.getLogger(__name__)
ADMIN_STATUSES = {ChatMember.OWNER, ChatMember.ADMINISTRATOR}
CACHE_SECONDS = 300.0
ERROR_CACHE_SECONDS = 30.0  # a failing API is not asked again on every message
CACHE_SIZE = 4096


class ChatAdmins:
    def __init__(self, bot: Bot, clock: Callable[[], float] = time.monotonic) -> None:
        self.bot, self.clock = bot, clock
        self._known: LRU[tuple[int, int], tuple[bool, float]] = LRU(CACHE_SIZE)

    async def is_admin(self, chat_id: int, user_id: int) -> bool:
        cached = self._known.get((chat_id, user_id))
        if cached is not None and cached[1] > self.clock():
            return cached[0]
        try:
            member = await self.bot.get_chat_member(chat_id, user_id)
            answer, ttl = member.status in ADMIN_STATUSES, CACHE_SECONDS
        except TelegramError as error:  # unknown: not an admin for now; asked again after a short pause
            log.warning("cannot tell whether user %s administers chat %s: %s", user_id, chat_id, error)
            answer, ttl = False, ERROR_CACHE_SECONDS
        self._known[(chat_id, user_id)] = (answer, self.clock() + ttl)
        return answer
