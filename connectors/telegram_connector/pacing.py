"""Per-chat pacing for outgoing messages, on top of python-telegram-bot's AIORateLimiter.

AIORateLimiter enforces the global limit (30 msg/s) and the per-group limit (20 msg/min) but
nothing per private chat, where Telegram asks for about one message a second. `ChatPacer`
adds that; group chats are left to the library so they are not limited twice.
"""

from __future__ import annotations

from collections import OrderedDict

from aiolimiter import AsyncLimiter
from telegram.ext import AIORateLimiter

MAX_TRACKED_CHATS = 4096


def telegram_rate_limiter(max_retries: int = 3) -> AIORateLimiter:
    """Telegram's documented flood limits, retrying after RetryAfter up to `max_retries` times."""
    return AIORateLimiter(overall_max_rate=30, overall_time_period=1, group_max_rate=20,
                          group_time_period=60, max_retries=max_retries)


class ChatPacer:
    """`async with pacer.slot(chat_id):` waits until that private chat may receive another message.

    `burst` messages go at once (a reply split in two arrives together); after that the rate is
    `per_second`. Limiters are kept for the most recent chats only, so memory stays bounded.
    """

    def __init__(self, per_second: float = 1.0, burst: int = 2) -> None:
        self.per_second = per_second
        self.burst = burst
        self._limiters: OrderedDict[int, AsyncLimiter] = OrderedDict()

    def slot(self, chat_id: int) -> AsyncLimiter | _NoLimit:
        if chat_id < 0:  # groups, supergroups and channels: AIORateLimiter's group limit applies
            return _NO_LIMIT
        limiter = self._limiters.pop(chat_id, None)
        if limiter is None:
            limiter = AsyncLimiter(self.burst, self.burst / self.per_second)
        self._limiters[chat_id] = limiter
        while len(self._limiters) > MAX_TRACKED_CHATS:
            self._limiters.popitem(last=False)
        return limiter


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LIMIT = _NoLimit()
