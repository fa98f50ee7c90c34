"""Discord's send limits as send budgets (`bot.budgets`), shared by every process of one bot.

Discord counts per bot: each channel's messages (the bucket of POST /channels/{id}/messages: five,
then one back a second; Discord's buckets refill continuously since its 2022 rate-limit rework) and
about 50 requests a second overall. discord.py keeps to both from the response headers and waits
out 429s, but within one process: three processes would together send up to three times what a
channel or the bot may, and collect the 429s. With PostgreSQL every process therefore draws on the
database's `send_budgets` table (keys `discord:<bot user id>:channel:<id>` and
`discord:<bot user id>:all`, never the token), with SQLite (one process) on this process's memory,
which paces a channel exactly as the aiolimiter it replaced (AsyncLimiter(5, 5.0)).

Where the slots are taken:
- a channel's slot in `DiscordConnector.deliver`, before each message of a reply goes out (each
  chunk of a long reply, sends to a room, messages with buttons; /ask follow-ups, as before);
- a channel's slot before each edit of a streamed reply (streaming.py), the same bucket as its
  messages: taken only when free with room to spare while the reply is written (a skipped edit
  costs nothing, a queued one would delay the channel's other replies), waited for by the final one;
- the bot's slot in discord.py's HTTP client (`bind`), before every request it makes once logged
  in: messages, typing indicators, anything else. The slash-command sync, made during login, is
  not counted (a request or two per start, by one process). Interaction responses and follow-ups,
  and the edit settling an /ask, go through discord.py's webhook adapter instead and take no slot
  of the bot's: Discord does not count interaction endpoints against the global limit.

Typing indicators count against the bot's budget: Discord counts POST /channels/{id}/typing like any
request, and the refreshes (every 5 s per run in progress, in every process) add up; left out, they could take the processes together past the global limit, and a global 429
holds up every request of the bot, not one channel's. They do not count against the channel's
budget: typing is its own route, not the messages' bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import discord

from bot.budgets import MemoryBudget, SendBudget
from bot.delivery import before_send

VISIBLE = ("POST", "/channels/{channel_id}/messages")  # the request that shows a message in a channel
TYPING = ("POST", "/channels/{channel_id}/typing")


@dataclass(frozen=True, slots=True)
class DiscordLimits:
    """How fast one bot may send, as GCRA budgets: `burst` at once, then `per_second`.

    The channel's budget is Discord's bucket itself. Discord does not say how it counts the global
    second, so the bot's budget holds for any window of one second, fixed or sliding: 10 at once,
    then 40 a second, is at most 10 + 39 = 49 requests in any second (still 40 a second sustained).
    """

    channel_burst: int = 5
    channel_per_second: float = 1.0
    bot_burst: int = 10
    bot_per_second: float = 40.0


class DiscordPacer:
    """`await pacer.channel(id)` before a message to a channel, `await pacer.request()` before any
    request of the bot; both draw on `budget` (by default this process's memory)."""

    def __init__(self, budget: SendBudget | None = None, limits: DiscordLimits = DiscordLimits(),
                 prefix: str = "discord") -> None:
        self.budget = budget if budget is not None else MemoryBudget()
        self.limits = limits
        self.prefix = prefix

    def channel_key(self, channel_id: int) -> str:
        return f"{self.prefix}:channel:{channel_id}"

    @property
    def bot_key(self) -> str:
        return f"{self.prefix}:all"

    async def channel(self, channel_id: int) -> None:
        """Wait until the channel may receive one more message."""
        limits = self.limits
        await self.budget.wait(self.channel_key(channel_id), rate=limits.channel_per_second,
                               burst=limits.channel_burst)

    async def try_channel(self, channel_id: int, *, spare: int = 0) -> bool:
        """Take one of the channel's slots only if it is free now and `spare` more stay free after it."""
        limits = self.limits
        return await self.budget.try_take(self.channel_key(channel_id), rate=limits.channel_per_second,
                                          burst=max(1, limits.channel_burst - spare))

    async def request(self) -> None:
        """Wait until the bot may make one more request."""
        await self.budget.wait(self.bot_key, rate=self.limits.bot_per_second, burst=self.limits.bot_burst)

    def bind(self, bot_id: int, http: discord.http.HTTPClient) -> None:
        """Key the budgets by the bot's user id (the same in every process of the bot) and make every
        further request of `http` (a logged-in client's) take a slot of the bot's budget first."""
        self.prefix = f"discord:{bot_id}"
        request = http.request

        async def paced(route: discord.http.Route, **options: Any) -> Any:
            if (route.method, route.path) == TYPING:
                # "typing…" is best effort: sent only while half the bot's budget is free, so under
                # load it neither queues in front of the replies nor takes the slots they need.
                limits = self.limits
                if not await self.budget.try_take(self.bot_key, rate=limits.bot_per_second,
                                                  burst=max(1, limits.bot_burst // 2)):
                    return None
                return await request(route, **options)
            await self.request()
            if (route.method, route.path) == VISIBLE:
                await before_send()  # every wait is behind us: this request shows the reply
            return await request(route, **options)

        http.request = paced  # type: ignore[method-assign]
