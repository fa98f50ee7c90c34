"""Discord's send budgets (issue #12): each channel's and the bot's limits, held across processes.

Like tests/test_send_budgets.py, the PostgreSQL tests stand two processes up as two engines on one
database and read the slots they reserve (on the database's clock) instead of sleeping through
them. The end-to-end test runs the real connector on PostgreSQL against the fake Discord with the
channel's budget scaled down tenfold (five at once, then ten a second), next to another process
drawing on the same channel.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot.budgets import MemoryBudget, SendBudget, Slot
from bot.store.budgets import PostgresBudget
from bot.store.sql import SqlStore
from connectors.discord_connector import DiscordConnector
from connectors.discord_connector.pacing import DiscordLimits, DiscordPacer
from tests.cluster_helpers import fresh_database
from tests.fakes.discord_api import TOKEN, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.runtime_helpers import make_settings
from tests.test_discord import ALICE, GENERAL, Bot, fast_ready, say, xml  # noqa: F401 - fixture
from tests.test_send_budgets import Clock, goes, two_processes  # noqa: F401 - fixture

BOT_ID = 150_000_000_000_000_001  # the fake's bot user
CHANNEL = (1.0, 5)  # a channel's messages: five at once, then one a second (interval, burst)
BOT = (1 / 40, 10)  # the bot's requests: ten at once, then forty a second


class Reserved(SendBudget):
    """Draws on `budget` and notes every reservation, but never sleeps: the tests read the slots."""

    def __init__(self, budget: SendBudget) -> None:
        self.budget = budget
        self.slots: list[tuple[str, float, int, Slot]] = []

    async def reserve(self, key: str, interval: float, burst: int) -> Slot:
        slot = await self.budget.reserve(key, interval, burst)
        self.slots.append((key, interval, burst, slot))
        return Slot(slot.now, slot.now)

    async def take_now(self, key: str, interval: float, burst: int) -> bool:
        return await self.budget.take_now(key, interval, burst)

    def times(self, key: str) -> list[float]:
        """When each send under `key` goes out."""
        return [goes(slot) for k, _, _, slot in self.slots if k == key]


def within(times: list[float], interval: float, burst: int, jitter: float = 1e-5) -> bool:
    """GCRA's promise: any stretch of time `t` holds at most `burst + t / interval` sends; `jitter`
    allows for sends measured where they arrive rather than at their slot."""
    times = sorted(times)
    return all(last - first + 1 <= burst + (times[last] - times[first] + jitter) / interval
               for first in range(len(times)) for last in range(first, len(times)))


def most_in_one_second(times: list[float]) -> int:
    """The most sends in any window [t, t + 1 s), wherever it starts."""
    times = sorted(times)
    return max(sum(1 for other in times[first:] if other < start + 1.0 - 1e-6)
               for first, start in enumerate(times))


# --- in memory (SQLite, one process) ------------------------------------------------------------
async def test_a_channel_paces_like_the_limiter_it_replaced() -> None:
    clock = Clock()
    budget = Reserved(MemoryBudget(clock))
    pacer = DiscordPacer(budget, prefix=f"discord:{BOT_ID}")
    for _ in range(8):
        await pacer.channel(GENERAL)
    # aiolimiter's AsyncLimiter(5, 5.0): five at once, then one a second.
    assert [slot.wait for *_, slot in budget.slots] == [0, 0, 0, 0, 0, 1, 2, 3]
    clock.now += 8  # rested: a full burst again
    await pacer.channel(GENERAL)
    assert budget.slots[-1][-1].wait == 0


async def test_the_bot_s_budget_holds_for_any_second_and_sustains_forty() -> None:
    clock = Clock()
    budget = Reserved(MemoryBudget(clock))
    pacer = DiscordPacer(budget, prefix=f"discord:{BOT_ID}")
    for _ in range(200):
        await pacer.request()
    times = budget.times(f"discord:{BOT_ID}:all")
    assert most_in_one_second(times) == 49  # Discord's limit is 50, however it counts its second
    assert max(times) - clock.now == pytest.approx(190 / 40)


async def test_keys_name_the_bot_s_id_never_its_token() -> None:
    budget = Reserved(MemoryBudget())
    pacer = DiscordPacer(budget)
    called: list[str] = []

    async def request(route: Any, **options: Any) -> str:
        called.append(route.path)
        return "ok"

    http = SimpleNamespace(request=request)
    pacer.bind(BOT_ID, http)  # type: ignore[arg-type]
    await pacer.channel(GENERAL)
    assert await http.request(SimpleNamespace(method="POST", path="/channels/600/typing")) == "ok"
    assert called == ["/channels/600/typing"]
    assert [(key, interval, burst) for key, interval, burst, _ in budget.slots] == [
        (f"discord:{BOT_ID}:channel:{GENERAL}", 1.0, 5), (f"discord:{BOT_ID}:all", pytest.approx(1 / 40), 10)]
    assert not any(part in key for key, *_ in budget.slots for part in TOKEN.split("."))


async def test_on_sqlite_the_connector_keeps_its_budget_in_memory(sqlite_store: SqlStore, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, discord_api_token=TOKEN)
    connector = DiscordConnector(SimpleNamespace(settings=settings, store=sqlite_store,  # type: ignore[arg-type]
                                                 agent_id=uuid.uuid4(), on=lambda *subscription: None))
    assert type(connector.pacer.budget) is MemoryBudget
    assert connector.pacer.limits == DiscordLimits(5, 1.0, 10, 40.0)


# --- PostgreSQL, several processes --------------------------------------------------------------
async def test_two_processes_share_a_channel_s_budget_and_the_bot_s(
        two_processes: tuple[SqlStore, SqlStore]) -> None:  # noqa: F811 (the fixture imported above)
    budgets = [Reserved(PostgresBudget(store.engine)) for store in two_processes]
    pacers = [DiscordPacer(budget, prefix=f"discord:{BOT_ID}") for budget in budgets]

    async def message(pacer: DiscordPacer) -> None:
        """A message as the connector sends it: a slot of its channel, then one of the bot."""
        await pacer.channel(GENERAL)
        await pacer.request()

    # Each process: fifteen messages to one channel, and fifty other requests (typing...) at once.
    await asyncio.gather(*(message(pacer) for pacer in pacers for _ in range(15)),
                         *(pacer.request() for pacer in pacers for _ in range(50)))
    channel = [t for budget in budgets for t in budget.times(f"discord:{BOT_ID}:channel:{GENERAL}")]
    overall = [t for budget in budgets for t in budget.times(f"discord:{BOT_ID}:all")]
    assert len(channel) == 30 and len(overall) == 130
    assert within(channel, *CHANNEL) and within(overall, *BOT)
    assert most_in_one_second(overall) <= 49
    # 30 messages to the channel: five at once, then one a second; 130 requests: ten, then forty a second.
    assert max(channel) - min(channel) == pytest.approx(25.0, abs=0.05)
    assert max(overall) - min(overall) == pytest.approx(120 / 40, abs=0.05)


class TimedDiscord(FakeDiscord):
    """The fake Discord, noting when (time.time()) each message reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.posted_at: list[float] = []

    async def _create_message(self, request: web.Request) -> web.Response:
        self.posted_at.append(time.time())
        return await super()._create_message(request)


@pytest.fixture
async def database() -> AsyncIterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("set TEST_DATABASE_URL to run the PostgreSQL tests")
    async with fresh_database(url) as fresh:
        yield fresh


async def test_the_connector_paces_a_burst_through_the_budget_it_shares(
        database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scaled = DiscordLimits(channel_burst=5, channel_per_second=10.0)  # Discord's, ten times faster
    monkeypatch.setattr(DiscordConnector, "limits", scaled)
    chunks = 12
    long_reply = "\n".join(f"Part {i}: " + "word " * 370 for i in range(chunks))  # 12 messages of < 2,000
    fake = TimedDiscord()
    fake.add_channel(GENERAL, "general")
    fake.members.append(fake.member(ALICE))
    await fake.start()
    model = FakeOpenAI(reply=xml(long_reply))
    await model.start()
    # Another process of the bot, on the same database.
    other = create_async_engine(make_url(database).set(drivername="postgresql+asyncpg"))
    bot = Bot(tmp_path, fake, model, database_url=database)
    try:
        await bot.start()
        pacer = bot.connector.pacer
        assert isinstance(pacer.budget, PostgresBudget) and pacer.prefix == f"discord:{BOT_ID}"
        # The other process has just sent fifteen messages to the channel: its burst, then ten more.
        budget = PostgresBudget(other)
        theirs = [await budget.reserve(pacer.channel_key(GENERAL), 0.1, 5) for _ in range(15)]
        await say(fake, GENERAL, "tell me everything", mentions=[fake.bot])
        await fake.wait_for_messages(chunks)
        ours = fake.posted_at
        assert len(ours) == chunks
        # Together, as Discord counts them: within the channel's budget (arrival adds a little jitter)...
        assert within([goes(slot) for slot in theirs] + ours, 0.1, 5, jitter=0.03)
        # ...so the reply waited for the other process's sends: alone, its last part would have left
        # 0.7 s after its first (5 at once, then 7 at 0.1 s); after 15 others, not before 2.2 s after them.
        assert max(ours) >= min(slot.now for slot in theirs) + (15 + chunks - 5) * 0.1 - 0.01
        async with other.connect() as conn:
            keys = set((await conn.execute(sa.text("SELECT key FROM send_budgets"))).scalars())
        assert {f"discord:{BOT_ID}:channel:{GENERAL}", f"discord:{BOT_ID}:all"} <= keys
        assert not any(TOKEN.split(".")[0] in key for key in keys)
    finally:
        await bot.stop()
        await other.dispose()
        await model.stop()
        await fake.stop()


async def test_a_message_post_is_announced_after_the_bot_s_budget_wait_and_typing_is_not() -> None:
    """bot.delivery.before_send marks the run "sending" (several processes): right before the request
    that shows the message, after the bot's budget wait; typing shows no message."""
    import discord

    from bot.delivery import recording_sends
    from tests.test_send_budgets import SendLog

    sends = SendLog()

    async def request(route: discord.http.Route, **options: Any) -> None:
        sends.note(route.path.rsplit("/", 1)[-1])

    http = SimpleNamespace(request=request)
    DiscordPacer(sends.budget).bind(1, http)  # type: ignore[arg-type]
    with recording_sends(sends.hook):
        await http.request(discord.http.Route("POST", "/channels/{channel_id}/typing", channel_id=5))
        await http.request(discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=5))
    assert sends.events == ["typing", "waited", "sending", "messages"]  # typing takes a free slot or none
