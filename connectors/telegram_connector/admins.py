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
            answer = member.status in ADMIN_STATUSES
        except TelegramError as error:  # unknown: treat as not an admin, and ask again next time
            log.warning("cannot tell whether user %s administers chat %s: %s", user_id, chat_id, error)
            return False
        self._known[(chat_id, user_id)] = (answer, self.clock() + CACHE_SECONDS)
        return answer
