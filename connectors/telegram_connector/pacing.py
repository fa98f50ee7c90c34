"""Telegram's flood limits as send budgets (`bot.budgets`), shared by every process of one bot.

Telegram counts per bot token: about 30 requests a second overall, about one message a second in
a private chat, twenty a minute in a group. Several processes using one token must therefore draw
on one budget per chat and one per bot: with PostgreSQL that is the database's `send_budgets`
table, with SQLite (a single process) this process's memory.

`ChatPacer` paces *messages* per chat. python-telegram-bot's AIORateLimiter is kept for its retries
after RetryAfter, but its own limits are off: its overall limit lives in one process's memory, and
its per-group limit counts every request with the chat's id, so "typing…" refreshes would eat a
group's twenty messages. `BudgetRateLimiter` takes the overall 30/s from the shared budget instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from telegram.ext import AIORateLimiter

from bot.budgets import MemoryBudget, SendBudget
from bot.delivery import before_send

OVERALL_PER_SECOND = 30
# Requests that show a message in the chat (typing indicators, button answers and edits of buttons do not).
VISIBLE = frozenset({"sendMessage", "sendVoice", "sendPhoto", "sendDocument", "sendAudio", "sendVideo",
                     "sendAnimation", "sendMediaGroup", "sendSticker"})


def bot_budget_key(token: str) -> str:
    """The prefix of a bot's budget keys: its numeric id (the part of the token before the colon),
    or a digest when the token has no such part, so the secret never lands in a key."""
    bot_id, _, _ = token.partition(":")
    return f"telegram:{bot_id if bot_id.isdigit() else hashlib.sha256(token.encode()).hexdigest()[:16]}"


class ChatPacer:
    """`async with pacer.slot(chat_id):` waits until that chat may receive another message.

    Private chats (positive ids) get `private_burst` messages at once (a reply split in two
    arrives together), then `private_per_second`; groups get `group_per_minute` at once, then
    one every 60/`group_per_minute` seconds. Each chat's budget is the key `{prefix}:chat:{id}`
    of `budget` (by default this process's memory).
    """

    def __init__(self, private_per_second: float = 1.0, private_burst: int = 2, group_per_minute: int = 20,
                 *, budget: SendBudget | None = None, prefix: str = "telegram") -> None:
        self.private_per_second = private_per_second
        self.private_burst = private_burst
        self.group_per_minute = group_per_minute
        self.budget = budget if budget is not None else MemoryBudget()
        self.prefix = prefix

    @asynccontextmanager
    async def slot(self, chat_id: int) -> AsyncIterator[None]:
        key = f"{self.prefix}:chat:{chat_id}"
        if chat_id > 0:
            await self.budget.wait(key, rate=self.private_per_second, burst=self.private_burst)
        else:
            await self.budget.wait(key, rate=self.group_per_minute, per=60, burst=self.group_per_minute)
        yield

    async def spare_slot(self, chat_id: int) -> bool:
        """Take a slot for an interim edit of a streamed reply only while half the chat's budget is
        free: previews never wait, and never take the slots that replies (and the final edit) need."""
        key = f"{self.prefix}:chat:{chat_id}"
        if chat_id > 0:
            return await self.budget.try_take(key, rate=self.private_per_second,
                                              burst=max(1, self.private_burst // 2))
        return await self.budget.try_take(key, rate=self.group_per_minute, per=60,
                                          burst=max(1, self.group_per_minute // 2))


class NoSlot(Exception):
    """A best-effort request (a preview of a streamed reply) found no free slot: skipped, not queued."""


# `rate_limit_args` of a preview request (a draft, an interim edit): sent only with a free slot of the
# bot's budget, never retried after RetryAfter (the next preview, or the final text, replaces it).
PREVIEW = "preview"


class BudgetRateLimiter(AIORateLimiter):
    """AIORateLimiter's RetryAfter retries, with every attempt of a request to a chat taking a slot
    of the bot's overall budget (`{prefix}:all`) just before it goes out.

    Requests without a chat (getMe, setMyCommands, answerCallbackQuery...) are not counted, as
    AIORateLimiter's own overall limit did not count them either.
    """

    def __init__(self, budget: SendBudget, prefix: str, max_retries: int = 3) -> None:
        super().__init__(overall_max_rate=0, group_max_rate=0, max_retries=max_retries)
        self.budget = budget
        self.key = f"{prefix}:all"

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, Any]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | str | None,
    ) -> Any:
        if data.get("chat_id") is None:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)

        if rate_limit_args == PREVIEW:
            if not await self.budget.try_take(self.key, rate=OVERALL_PER_SECOND, burst=OVERALL_PER_SECOND // 2):
                raise NoSlot(endpoint)
            return await callback(*args, **kwargs)

        if endpoint == "sendChatAction":
            # "typing…" is best effort: sent only while half the bot's budget is free, so under load
            # it neither queues in front of the replies nor takes the slots they need.
            if not await self.budget.try_take(self.key, rate=OVERALL_PER_SECOND, burst=OVERALL_PER_SECOND // 2):
                return True
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)

        async def paced(*call_args: Any, **call_kwargs: Any) -> Any:
            await self.budget.wait(self.key, rate=OVERALL_PER_SECOND, burst=OVERALL_PER_SECOND)
            if endpoint in VISIBLE:
                await before_send()  # every wait is behind us: this request shows the reply
            return await callback(*call_args, **call_kwargs)

        return await super().process_request(paced, args, kwargs, endpoint, data, rate_limit_args)


def telegram_rate_limiter(budget: SendBudget | None = None, prefix: str = "telegram",
                          max_retries: int = 3) -> BudgetRateLimiter:
    """The bot's overall flood limit from `budget` (by default this process's memory), retrying
    after RetryAfter up to `max_retries` times."""
    return BudgetRateLimiter(budget if budget is not None else MemoryBudget(), prefix, max_retries)
