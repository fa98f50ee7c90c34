"""Send budgets (issue #12): per-chat and per-bot Telegram limits that hold across processes.

The PostgreSQL tests stand two processes up as two engines on one database and check the slots
they reserve (on the database's clock) rather than sleeping through them, so they stay fast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from telegram.error import RetryAfter

from bot.budgets import MemoryBudget, Slot
from bot.store.budgets import PostgresBudget, send_budget
from bot.store.sql import SqlStore
from bot.types import Content
from connectors.telegram_connector import TelegramConnector
from connectors.telegram_connector.outbox import Target
from connectors.telegram_connector.pacing import BudgetRateLimiter, ChatPacer, bot_budget_key
from tests.fakes.telegram_api import FakeTelegram
from tests.runtime_helpers import make_settings

TOKEN = "123456789:AAHtestTOKENabcdefghijklmnopqrstuvw"
PRIVATE = (1.0, 2)  # Telegram's private chat: one message a second, two at once
GROUP = (3.0, 20)  # a group: twenty at once, then one every three seconds
OVERALL = (1 / 30, 30)  # the whole bot: thirty requests a second


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingBudget(MemoryBudget):
    """A memory budget that notes every reservation, to see which keys a component draws on."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved: list[tuple[str, float, int]] = []

    async def reserve(self, key: str, interval: float, burst: int) -> Slot:
        self.reserved.append((key, interval, burst))
        return await super().reserve(key, interval, burst)


def goes(slot: Slot) -> float:
    """When the send goes out: at its slot, or at once if the slot was already due."""
    return max(slot.at, slot.now)


def spread(slots: list[Slot]) -> float:
    """From the first send to the last, on the database's clock (common to both processes)."""
    return max(goes(slot) for slot in slots) - min(goes(slot) for slot in slots)


def approx(seconds: float) -> object:
    return pytest.approx(seconds, abs=0.05)  # the reservations themselves take a few milliseconds


def assert_within_budget(times: list[float], interval: float, burst: int) -> None:
    """GCRA's promise: any stretch of time `t` holds at most `burst + t / interval` sends (give or
    take 10 µs: the database's clock has microseconds, and a float8 of epoch seconds 0.2 µs)."""
    times = sorted(times)
    for first in range(len(times)):
        for last in range(first, len(times)):
            count, span = last - first + 1, times[last] - times[first]
            assert count <= burst + (span + 1e-5) / interval, f"{count} sends within {span:.6f}s"


# --- in memory (SQLite, one process) ------------------------------------------------------------
async def test_memory_budget_paces_like_the_limiters_it_replaces() -> None:
    clock = Clock()
    budget = MemoryBudget(clock)
    private = [(await budget.reserve("private", *PRIVATE)).at - clock.now for _ in range(5)]
    group = [(await budget.reserve("group", *GROUP)).at - clock.now for _ in range(22)]
    assert [max(0.0, at) for at in private] == [0, 0, 1, 2, 3]
    assert [max(0.0, at) for at in group] == [0] * 20 + [3, 6]
    clock.now += 60  # rested: a full burst again
    assert [(await budget.reserve("private", *PRIVATE)).wait for _ in range(3)] == [0, 0, 1]


async def test_memory_budget_forgets_rested_keys_and_stays_bounded() -> None:
    clock = Clock()
    budget = MemoryBudget(clock, max_keys=10)
    for chat in range(100):
        await budget.reserve(f"chat:{chat}", *PRIVATE)
    assert budget.tracked == 10
    clock.now += 2  # every chat has rested
    await budget.reserve("chat:new", *PRIVATE)
    assert budget.tracked == 1


async def test_pacer_and_rate_limiter_draw_on_the_bot_s_keys() -> None:
    budget = RecordingBudget()
    pacer = ChatPacer(budget=budget, prefix=bot_budget_key(TOKEN))
    async with pacer.slot(42):
        pass
    async with pacer.slot(-100_5):
        pass
    limiter = BudgetRateLimiter(budget, bot_budget_key(TOKEN))
    attempts: list[str] = []

    async def send(endpoint: str) -> bool:
        attempts.append(endpoint)
        if len(attempts) == 1:
            raise RetryAfter(0)  # Telegram said "too many": AIORateLimiter retries, taking a new slot
        return True

    assert await limiter.process_request(send, ("sendMessage",), {}, "sendMessage", {"chat_id": 42}, None)
    assert await limiter.process_request(send, ("getMe",), {}, "getMe", {}, None)
    assert attempts == ["sendMessage", "sendMessage", "getMe"]
    assert budget.reserved == [
        ("telegram:123456789:chat:42", 1.0, 2),
        ("telegram:123456789:chat:-1005", 3.0, 20),
        ("telegram:123456789:all", pytest.approx(1 / 30), 30),
        ("telegram:123456789:all", pytest.approx(1 / 30), 30),
    ]


class SendLog:
    """In order: budget waits ("waited"), the before_send hook ("sending") and what `note` is told."""

    def __init__(self) -> None:
        self.events: list[str] = []
        log = self.events

        class WaitingBudget(MemoryBudget):
            async def wait(self, key: str, *, rate: float, per: float = 1.0, burst: int = 1) -> None:
                log.append("waited")

        self.budget = WaitingBudget()

    async def hook(self) -> None:
        self.events.append("sending")

    def note(self, event: str) -> None:
        self.events.append(event)


async def test_a_visible_send_is_announced_after_the_bot_s_budget_wait_and_typing_is_not() -> None:
    """bot.delivery.before_send marks the run "sending" (several processes): only once every wait is
    over, right before the request that shows the message, so a kill during the wait loses nothing."""
    from bot.delivery import recording_sends

    sends = SendLog()

    async def send(endpoint: str) -> bool:
        sends.note(endpoint)
        return True

    limiter = BudgetRateLimiter(sends.budget, bot_budget_key(TOKEN))
    with recording_sends(sends.hook):
        await limiter.process_request(send, ("sendChatAction",), {}, "sendChatAction", {"chat_id": 42}, None)
        await limiter.process_request(send, ("sendMessage",), {}, "sendMessage", {"chat_id": 42}, None)
    await limiter.process_request(send, ("sendMessage",), {}, "sendMessage", {"chat_id": 42}, None)  # no run
    # Typing takes a free slot or none (never waits): only the messages wait their turn.
    assert sends.events == ["sendChatAction", "waited", "sending", "sendMessage", "waited", "sendMessage"]


async def test_try_take_takes_a_free_slot_or_nothing() -> None:
    """For what is skipped or refused rather than waited for: a refused take leaves the key as it was."""
    clock = Clock()
    budget = MemoryBudget(clock)
    taken = [await budget.try_take("k", rate=1, burst=2) for _ in range(3)]
    assert taken == [True, True, False]
    clock.now += 0.5
    assert not await budget.try_take("k", rate=1, burst=2)  # the refusals took nothing: still 0.5 s to go
    clock.now += 0.5
    assert await budget.try_take("k", rate=1, burst=2)


async def test_a_typing_refresh_is_skipped_once_half_the_bot_s_budget_is_spent() -> None:
    clock = Clock()
    budget = MemoryBudget(clock)
    limiter = BudgetRateLimiter(budget, bot_budget_key(TOKEN))
    sent: list[str] = []

    async def send(endpoint: str) -> bool:
        sent.append(endpoint)
        return True

    async def typing() -> None:
        assert await limiter.process_request(send, ("sendChatAction",), {}, "sendChatAction", {"chat_id": 42}, None)

    for _ in range(14):  # replies spend part of the bot's second
        await budget.reserve(limiter.key, 1 / 30, 30)
    await typing()
    assert sent == ["sendChatAction"]  # half the budget was still free (the refresh took the 15th slot)
    for _ in range(15):
        await budget.reserve(limiter.key, 1 / 30, 30)
    await typing()
    assert sent == ["sendChatAction"]  # skipped, and no slot reserved ahead of the next reply
    slot = await budget.reserve(limiter.key, 1 / 30, 30)
    assert slot.wait == pytest.approx(1 / 30)


def test_a_budget_key_never_holds_the_token_s_secret() -> None:
    assert bot_budget_key(TOKEN) == "telegram:123456789"
    assert "secret" not in bot_budget_key("not-a-token-secret")


async def test_an_unreachable_database_leaves_the_process_pacing_alone(
        caplog: pytest.LogCaptureFixture) -> None:
    nowhere = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    budget = PostgresBudget(nowhere, clock=Clock())
    try:
        with caplog.at_level(logging.WARNING, "bot.store.budgets"):
            waits = [(await budget.reserve("chat", *PRIVATE)).wait for _ in range(3)]
    finally:
        await budget.engine.dispose()
    assert waits == [0, 0, 1]
    assert len(caplog.records) == 1 and "pacing this process's sends alone" in caplog.text


async def test_sqlite_keeps_budgets_in_memory(sqlite_store: SqlStore) -> None:
    assert isinstance(send_budget(sqlite_store), MemoryBudget)
    async with sqlite_store.engine.connect() as conn:  # migration 5 made the table there too, unused
        assert "send_budgets" in await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())


# --- PostgreSQL, several processes --------------------------------------------------------------
@pytest.fixture
async def two_processes() -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two stores on separate engines over one fresh schema of the test database."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("set TEST_DATABASE_URL to run the PostgreSQL store tests")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(plain)
    await admin.execute(f"CREATE SCHEMA {schema}")
    options = {"server_settings": {"search_path": schema}}
    stores = [SqlStore.from_url(url, connect_args=options) for _ in range(2)]
    try:
        for store in stores:
            await store.init()
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def test_two_processes_share_each_chat_s_budget_and_the_bot_s(
        two_processes: tuple[SqlStore, SqlStore]) -> None:
    budgets = [send_budget(store) for store in two_processes]
    assert all(isinstance(budget, PostgresBudget) for budget in budgets)

    async def send(budget: PostgresBudget, chat: str, budget_of_chat: tuple[float, int]) -> tuple[Slot, Slot]:
        """A message takes a slot of its chat, then one of the bot's overall budget."""
        return await budget.reserve(chat, *budget_of_chat), await budget.reserve("bot:all", *OVERALL)

    chats = {"bot:chat:42": PRIVATE, "bot:chat:-1005": GROUP}
    sends = [(chat, budget) for _ in range(12) for budget in budgets for chat in chats]
    results = await asyncio.gather(*(send(budget, chat, chats[chat]) for chat, budget in sends))
    by_chat = {chat: [slot for (key, _), (slot, _) in zip(sends, results, strict=True) if key == chat]
               for chat in chats}
    for chat, slots in by_chat.items():
        assert len(slots) == 24
        assert_within_budget([goes(slot) for slot in slots], *chats[chat])
    overall = [slot for _, slot in results]
    assert_within_budget([goes(slot) for slot in overall], *OVERALL)
    # 24 private messages: two at once, then one a second; 24 group messages: twenty, then one every
    # 3 s; 48 requests to the bot's budget: thirty at once, then thirty a second.
    assert spread(by_chat["bot:chat:42"]) == approx(22.0)
    assert spread(by_chat["bot:chat:-1005"]) == approx(12.0)
    assert spread(overall) == approx(18 / 30)


async def test_overall_budget_holds_across_processes(two_processes: tuple[SqlStore, SqlStore]) -> None:
    budgets = [send_budget(store) for store in two_processes]
    slots = await asyncio.gather(*(budget.reserve("bot:all", *OVERALL)
                                   for _ in range(50) for budget in budgets))
    assert_within_budget([goes(slot) for slot in slots], *OVERALL)
    assert spread(slots) == approx(70 / 30)


async def test_try_take_is_shared_too(two_processes: tuple[SqlStore, SqlStore]) -> None:
    """A user's message limit (RATE_LIMIT_PER_MINUTE) holds across processes: 5 a minute, sent
    round-robin to two processes, lets 5 through in all, not 5 in each."""
    budgets = [send_budget(store) for store in two_processes]
    taken = [await budgets[n % 2].try_take("inbound:user", rate=5, per=60, burst=5) for n in range(10)]
    assert taken == [True] * 5 + [False] * 5


async def test_wait_sleeps_until_the_reserved_slot(two_processes: tuple[SqlStore, SqlStore]) -> None:
    budget = send_budget(two_processes[0])
    started = time.monotonic()
    for _ in range(4):
        await budget.wait("chat", rate=20, burst=2)  # two at once, then 50 ms apart
    assert 0.095 <= time.monotonic() - started < 0.5


async def test_idle_keys_are_swept_now_and_then(two_processes: tuple[SqlStore, SqlStore]) -> None:
    clock = Clock()
    budget = PostgresBudget(two_processes[0].engine, sweep_every=60, idle_after=600, clock=clock)
    for key in ("idle", "busy"):
        await budget.reserve(key, *PRIVATE)  # the first reservation sweeps (nothing to sweep yet)
    async with two_processes[1].engine.begin() as conn:  # "idle" last sent an hour ago
        await conn.execute(sa.text("UPDATE send_budgets SET tat = tat - 3600 WHERE key = 'idle'"))

    async def keys() -> set[str]:
        async with two_processes[1].engine.connect() as conn:
            return set((await conn.execute(sa.text("SELECT key FROM send_budgets"))).scalars())

    clock.now += 30
    await budget.reserve("busy", *PRIVATE)
    assert await keys() == {"idle", "busy"}  # not swept again within the minute
    clock.now += 31
    await budget.reserve("busy", *PRIVATE)
    assert await keys() == {"busy"}


async def test_the_connector_paces_through_the_postgresql_budget(
        two_processes: tuple[SqlStore, SqlStore], tmp_path: Path) -> None:
    store = two_processes[0]
    async with FakeTelegram(TOKEN) as telegram:
        settings = make_settings(tmp_path, telegram_bot_token=TOKEN, telegram_api_root=telegram.root)
        runtime = SimpleNamespace(settings=settings, store=store, agent_id=uuid.uuid4(), on=lambda *_: None)
        connector = TelegramConnector(runtime)
        budget = connector.outbox.pacer.budget
        assert isinstance(budget, PostgresBudget) and connector.bot.rate_limiter.budget is budget
        async with connector.bot:
            await connector.outbox.send(Target(42), Content(text="hello"))
        assert len(telegram.calls_to("sendMessage")) == 1
    async with store.engine.connect() as conn:
        keys = set((await conn.execute(sa.text("SELECT key FROM send_budgets"))).scalars())
    assert keys == {"telegram:123456789:chat:42", "telegram:123456789:all"}
