"""Per-chat pacing for outgoing messages, on top of python-telegram-bot's AIORateLimiter.

AIORateLimiter keeps the global limit (30 requests/s) and retries after RetryAfter, but it has
no per-private-chat limit, and its per-group limit counts every request with the chat's id,
so "typing…" refreshes would eat a group's budget of 20 messages a minute. `ChatPacer` therefore
paces *messages* per chat: about one a second in private chats, twenty a minute in groups.
"""

from __future__ import annotations

from collections import OrderedDict

from aiolimiter import AsyncLimiter
from telegram.ext import AIORateLimiter

MAX_TRACKED_CHATS = 4096


def telegram_rate_limiter(max_retries: int = 3) -> AIORateLimiter:
    """The global flood limit, retrying after RetryAfter up to `max_retries` times."""
    return AIORateLimiter(overall_max_rate=30, overall_time_period=1, group_max_rate=0, max_retries=max_retries)


class ChatPacer:
    """`async with pacer.slot(chat_id):` waits until that chat may receive another message.

    Private chats (positive ids) get `private_burst` messages at once (a reply split in two
    arrives together), then `private_per_second`; groups get `group_per_minute` in any minute.
    Limiters are kept for the most recent chats only, so memory stays bounded.
    """

    def __init__(self, private_per_second: float = 1.0, private_burst: int = 2,
                 group_per_minute: int = 20) -> None:
        self.private_per_second = private_per_second
        self.private_burst = private_burst
        self.group_per_minute = group_per_minute
        self._limiters: OrderedDict[int, AsyncLimiter] = OrderedDict()

    def slot(self, chat_id: int) -> AsyncLimiter:
        limiter = self._limiters.pop(chat_id, None)
        if limiter is None:
            if chat_id > 0:
                limiter = AsyncLimiter(self.private_burst, self.private_burst / self.private_per_second)
            else:
                limiter = AsyncLimiter(self.group_per_minute, 60)
        self._limiters[chat_id] = limiter
        while len(self._limiters) > MAX_TRACKED_CHATS:
            self._limiters.popitem(last=False)
        return limiter

