"""Property test (issue #10): random and mutated Telegram update JSON through the real intake
(the same parse the webhook and polling use, then Application.process_update with the real
handlers, store and pipeline) never makes a handler fail, and every message it accepts is stored."""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.app import App
from bot.ids import create_unique_uuid
from connectors.telegram_connector import TelegramConnector
from connectors.telegram_connector.connector import has_update_id, parse_update
from connectors.telegram_connector.handlers import malformed
from connectors.telegram_connector.intake import message_text
from connectors.telegram_connector.pacing import ChatPacer
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.server_helpers import character, settings_for, xml_reply

TOKEN = "123456789:AAHfuzzTOKENabcdefghijklmnopqrstuvwx"
_ids = itertools.count(1)

TEXT = st.lists(st.sampled_from(["a", " ", "\n", "\ud800", "\udfff", "😀", "@parley_test_bot", "Test", "\x00",
                                 "/start", "é", "\u2028"]), max_size=12).map("".join)
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT | st.sampled_from(["id", "type", "text"]),
                                                                inner, max_size=3),
    max_leaves=8,
)
PATHS = [("message",), ("message", "text"), ("message", "caption"), ("message", "chat"), ("message", "chat", "id"),
         ("message", "chat", "type"), ("message", "chat", "title"), ("message", "from"), ("message", "from", "id"),
         ("message", "from", "first_name"), ("message", "from", "is_bot"), ("message", "message_id"),
         ("message", "date"), ("message", "entities"), ("message", "reply_to_message"), ("message", "voice"),
         ("message", "document"), ("message", "photo"), ("message", "message_thread_id"),
         ("message", "is_topic_message"), ("edited_message",), ("callback_query",), ("update_id",)]
ENTITY = st.fixed_dictionaries({"type": st.sampled_from(["mention", "bold", "text_mention", "bot_command"]),
                                "offset": st.integers(-2, 30), "length": st.integers(-1, 30)})
MUTATION = st.tuples(st.sampled_from(PATHS), st.booleans(), JSON)  # path, delete it?, else the new value


def base_update(text: str, entities: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    user = FakeTelegram.user(42)
    chat = FakeTelegram.private_chat(user) if kind != "group" else FakeTelegram.group_chat()
    message = {"message_id": next(_ids), "date": int(time.time()), "chat": chat, "from": user, "text": text,
               "entities": entities}
    if kind == "voice":
        message["voice"] = {"file_id": "v", "file_unique_id": "v", "duration": 1, "file_size": 10}
    if kind == "document":
        message["document"] = {"file_id": "d", "file_unique_id": "d", "file_name": "a\nb"}
    update: dict[str, Any] = {"update_id": next(_ids), "message": message}
    if kind == "edit":
        update = {"update_id": update["update_id"], "edited_message": {**message, "edit_date": message["date"]}}
    return update


def mutate(update: dict[str, Any], mutations: list[tuple[tuple[str, ...], bool, Any]]) -> dict[str, Any]:
    update = copy.deepcopy(update)
    for path, delete, value in mutations:
        parent: Any = update
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            if delete:
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
    return update


class Errors(logging.Handler):
    """ERROR records from any thread: a handler that raised is logged by the Application's error handler."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class BotThread:
    """The whole App, the fake Bot API and the fake model on an event loop in a thread, so that the
    synchronous hypothesis test can drive them example by example."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coroutine: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> None:
        self.telegram = FakeTelegram(TOKEN)
        await self.telegram.start()
        self.model = FakeOpenAI(reply=xml_reply("ok"))
        await self.model.start()
        settings = settings_for(self.tmp_path, self.model.base_url, telegram_bot_token=TOKEN,
                                telegram_api_root=self.telegram.root, rate_limit_per_minute=0, shutdown_timeout=3,
                                telegram_webhook_url="https://bot.example.com/telegram/webhook")
        self.app = App(settings, character())
        await self.app.start()
        connector = self.app.runtime.connector_for("telegram")
        assert isinstance(connector, TelegramConnector)
        self.connector = connector

    async def _stop(self) -> None:
        await self.app.stop()
        await self.model.stop()
        await self.telegram.stop()

    def __enter__(self) -> BotThread:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def intake(self, raw: object) -> bool:
        """Through the intake as the webhook does it; True when the message should now be stored."""
        if not has_update_id(raw):
            return False
        assert isinstance(raw, dict)
        application = self.connector.application
        update = parse_update(raw, application.bot)
        if update is None:
            return False
        await application.process_update(update)
        message = update.message
        command = any(e.type == "bot_command" and e.offset == 0 for e in (message.entities if message else ()))
        return bool(message is not None and malformed(message) is None and message_text(message).strip()
                    and message.from_user.id != application.bot.id and not command)  # commands are answered only

    async def stored(self, raw: dict[str, Any]) -> bool:
        message = raw["message"]
        key = f"telegram:msg:{message['chat']['id']}:{message['message_id']}"
        memory_id = create_unique_uuid(self.app.runtime.agent_id, key)
        return await self.app.runtime.store.get_memory(memory_id) is not None


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotThread]:
    TelegramConnector.pacer = ChatPacer(private_per_second=1000, private_burst=1000)
    try:
        with BotThread(tmp_path_factory.mktemp("fuzz")) as running:
            yield running
    finally:
        TelegramConnector.pacer = None


@pytest.fixture(scope="module")
def errors() -> Iterator[Errors]:
    handler = Errors()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, entities=st.lists(ENTITY, max_size=2),
       kind=st.sampled_from(["dm", "group", "voice", "document", "edit"]),
       mutations=st.lists(MUTATION, max_size=3))
def test_mutated_updates_never_fail_a_handler_and_accepted_messages_are_stored(
    bot: BotThread, errors: Errors, text: str, entities: list[dict[str, Any]], kind: str,
    mutations: list[tuple[tuple[str, ...], bool, Any]],
) -> None:
    raw = mutate(base_update(text, entities, kind), mutations)
    if bot.run(bot.intake(raw)):
        assert bot.run(bot.stored(raw)), raw
    assert not errors.messages, errors.messages


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=JSON)
def test_random_json_never_fails_a_handler(bot: BotThread, errors: Errors, raw: Any) -> None:
    bot.run(bot.intake(raw))
    bot.run(bot.intake({"update_id": next(_ids), "message": raw}))
    assert not errors.messages, errors.messages
