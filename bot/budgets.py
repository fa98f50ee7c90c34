"""Send budgets: how often the sends under one key (a chat, a whole bot) may go out.

Every budget is GCRA, the generic cell rate algorithm: a key keeps one number, its "theoretical
arrival time" (tat), the moment its budget would be fully rested. A send takes the next free slot
at once (`tat = max(tat, now) + interval`; the slot is `tat - burst * interval`) and then sleeps
until it, so concurrent senders are served in the order they asked, each with one state update:
one dictionary write here, one statement on PostgreSQL (`bot.store.budgets`), where several
processes share the keys. A key whose tat has passed behaves exactly like a key never seen, which
is why idle keys can be forgotten at any time without letting anything through early.

A slot once reserved is kept even if its sender is cancelled while waiting: the budget errs on the
side of sending less, never more.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED_KEYS = 4096


@dataclass(frozen=True, slots=True)
class Slot:
    """A reserved send: `at` is when it may go, `now` when it was reserved, both on the budget's clock."""

    at: float
    now: float

    @property
    def wait(self) -> float:
        return max(0.0, self.at - self.now)


class SendBudget(ABC):
    """`await budget.wait(key, rate=..., per=..., burst=...)` returns when one more send fits."""

    async def wait(self, key: str, *, rate: float, per: float = 1.0, burst: int = 1) -> None:
        """Wait for a slot under `key`: at most `burst` sends at once, then `rate` per `per` seconds."""
        if rate <= 0 or per <= 0 or burst < 1:
            raise ValueError(f"a budget needs rate > 0, per > 0 and burst >= 1, not {rate}, {per}, {burst}")
        slot = await self.reserve(key, per / rate, burst)
        if slot.wait > 0:
            await asyncio.sleep(slot.wait)

    async def try_take(self, key: str, *, rate: float, per: float = 1.0, burst: int = 1) -> bool:
        """Take a slot under `key` only if one is free now; False (and nothing taken) otherwise.

        For what may be skipped (a typing refresh) or refused at once (a message over its sender's
        limit) instead of waited for.
        """
        if rate <= 0 or per <= 0 or burst < 1:
            raise ValueError(f"a budget needs rate > 0, per > 0 and burst >= 1, not {rate}, {per}, {burst}")
        return await self.take_now(key, per / rate, burst)

    @abstractmethod
    async def reserve(self, key: str, interval: float, burst: int) -> Slot:
        """Take the next free slot of `key` (sends `interval` seconds apart after a first `burst`)."""

    @abstractmethod
    async def take_now(self, key: str, interval: float, burst: int) -> bool:
        """Take the next free slot of `key` if it is due now; leave the key as it was otherwise."""


class MemoryBudget(SendBudget):
    """The budget of a single process: a tat per key, for at most `max_keys` keys.

    Keys are kept in the order they last sent; those at the front whose tat has passed are dropped
    as new sends come (they would behave the same if absent), and beyond `max_keys` the oldest go
    regardless, so a bot in many chats keeps flat memory.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._tats: OrderedDict[str, float] = OrderedDict()

    @property
    def tracked(self) -> int:
        """How many keys are remembered (at most `max_keys`)."""
        return len(self._tats)

    async def reserve(self, key: str, interval: float, burst: int) -> Slot:
        now = self.clock()
        tat = max(self._tats.pop(key, now), now) + interval
        self._keep(key, tat, now)
        return Slot(tat - burst * interval, now)

    async def take_now(self, key: str, interval: float, burst: int) -> bool:
        now = self.clock()
        tat = max(self._tats.get(key, now), now) + interval
        if tat - burst * interval > now:
            return False
        self._tats.pop(key, None)
        self._keep(key, tat, now)
        return True

    def _keep(self, key: str, tat: float, now: float) -> None:
        self._tats[key] = tat
        while self._tats and (len(self._tats) > self.max_keys or next(iter(self._tats.values())) <= now):
            self._tats.popitem(last=False)
