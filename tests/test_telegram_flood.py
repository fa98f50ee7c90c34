"""A flooded chat cannot starve the others (issue #12's flood case, single process): "typing…" is
shown only for the message being answered, and a chat's backlog waits for its turn without
holding the update slots other chats need."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bot.app import App
from bot.types import ModelType
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.runtime_helpers import ScriptedModel, xml_reply
from tests.server_helpers import character, settings_for
from tests.test_telegram import TOKEN, quick_connector  # noqa: F401 - fixture: short polls, fast pace

FLOOD = 150


async def test_a_flooded_chat_does_not_starve_a_new_dm(tmp_path: Path) -> None:
    flooder, newcomer = FakeTelegram.user(101, "Flo", "flo"), FakeTelegram.user(202, "Nia", "nia")
    release = asyncio.Event()

    async def answer(params: dict[str, Any]) -> str:
        if "Flo" in str(params.get("prompt")):  # the flooded chat's model calls are slow
            await release.wait()
        return xml_reply("hello")

    model = ScriptedModel(defaults={ModelType.TEXT_LARGE: answer, ModelType.TEXT_SMALL: "RESPOND"})
    async with FakeOpenAI() as unused, FakeTelegram(TOKEN) as telegram:
        settings = settings_for(tmp_path, unused.base_url, telegram_bot_token=TOKEN, telegram_api_root=telegram.root,
                                shutdown_timeout=3, rate_limit_per_minute=0)
        app = App(settings, character(), model_plugins=[model.plugin()])
        await app.start()
        try:
            flood_chat = FakeTelegram.private_chat(flooder)
            for index in range(FLOOD):
                telegram.push({"message": telegram.message(flooder, flood_chat, f"message {index}")})
            await _until(lambda: app.runtime.message_handler.queue_depth >= FLOOD - 1)
            telegram.push({"message": telegram.message(newcomer, FakeTelegram.private_chat(newcomer), "hi!")})
            [reply] = await telegram.wait_for("sendMessage", timeout=10)
            assert reply.params["chat_id"] == str(newcomer["id"])
            typing_in_flood = telegram.calls_to("sendChatAction", chat_id=str(flooder["id"]))
            assert 1 <= len(typing_in_flood) <= 2  # one indicator for the run in progress, not one per message
            release.set()
            await telegram.wait_for("sendMessage", count=FLOOD + 1, timeout=60)
        finally:
            release.set()
            await app.stop()


async def _until(condition: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_chat_waiting_for_its_turn_holds_no_update_slot() -> None:
    """Two slots, chat A's first update blocked: A's second waits for A's turn outside the slots,
    so chat B's update still runs (before, it waited for a slot behind A's backlog)."""
    from telegram import Update

    from connectors.telegram_connector.handlers import ChatOrderedProcessor

    processor = ChatOrderedProcessor(max_concurrent_updates=2)
    chat_a, chat_b = FakeTelegram.private_chat(FakeTelegram.user(1)), FakeTelegram.private_chat(FakeTelegram.user(2))
    unblock, order = asyncio.Event(), []

    def update(chat: dict[str, Any], update_id: int) -> Update:
        return Update.de_json({"update_id": update_id, "message": {
            "message_id": update_id, "date": 0, "chat": chat, "from": FakeTelegram.user(chat["id"]), "text": "x"}},
            None)

    async def handle(name: str, wait: bool = False) -> None:
        if wait:
            await unblock.wait()
        order.append(name)

    first = asyncio.create_task(processor.process_update(update(chat_a, 1), handle("a1", wait=True)))
    second = asyncio.create_task(processor.process_update(update(chat_a, 2), handle("a2")))
    third = asyncio.create_task(processor.process_update(update(chat_a, 3), handle("a3")))
    await asyncio.wait_for(processor.process_update(update(chat_b, 4), handle("b")), 5)
    assert order == ["b"]
    unblock.set()
    await asyncio.gather(first, second, third)
    assert order == ["b", "a1", "a2", "a3"]  # A's updates kept their order


async def test_an_update_arriving_as_the_chat_lock_changes_hands_waits_its_turn() -> None:
    """a1 ends and wakes a2, and a3 arrives before a2 has run: a3 must wait for a2 (it used to find
    the chat's lock gone, take a new one and run beside a2)."""
    from telegram import Update

    from connectors.telegram_connector.handlers import ChatOrderedProcessor

    processor = ChatOrderedProcessor()
    chat = FakeTelegram.private_chat(FakeTelegram.user(1))
    release_a2, running, overlaps = asyncio.Event(), set(), []

    def update(update_id: int) -> Update:
        return Update.de_json({"update_id": update_id, "message": {
            "message_id": update_id, "date": 0, "chat": chat, "from": FakeTelegram.user(1), "text": "x"}}, None)

    async def handle(name: str, hold: asyncio.Event | None = None) -> None:
        if running:
            overlaps.append((name, set(running)))
        running.add(name)
        if hold is not None:
            await hold.wait()
        running.discard(name)

    release_a1 = asyncio.Event()
    first = asyncio.create_task(processor.process_update(update(1), handle("a1", release_a1)))
    second = asyncio.create_task(processor.process_update(update(2), handle("a2", release_a2)))
    await asyncio.sleep(0)  # both queued on the chat's lock
    release_a1.set()
    await first  # a1 done; a2 woken but not yet running
    third = asyncio.create_task(processor.process_update(update(3), handle("a3")))
    for _ in range(3):  # loop turns enough for a3 to start if the chat's lock let it (it did before)
        await asyncio.sleep(0)
    release_a2.set()
    await asyncio.gather(second, third)
    assert overlaps == []
