"""Several characters in one process on PostgreSQL (issue #16): they share the store's one room
coordinator, so the pool stays DATABASE_POOL_SIZE + 1 however many characters run, and a character
stopped at run time frees its own rooms while the others keep theirs.

Real App, real aiohttp server on 127.0.0.1, real PostgreSQL (a fresh schema per test), the real
OpenAI provider against the fake model."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.agents import configure_agents, load_characters
from bot.app import App
from bot.server.api import api_room_key
from bot.server.conversation import room_id_for
from bot.settings import Settings
from bot.store.factory import create_store
from bot.store.sql import SqlStore
from tests.fakes.openai_server import FakeOpenAI, Hang
from tests.server_helpers import xml_reply
from tests.test_agents_http import Client
from tests.test_characters import process_settings, write_character

DATABASE = os.environ.get("TEST_DATABASE_URL", "")
pytestmark = pytest.mark.skipif(not DATABASE, reason="set TEST_DATABASE_URL to run the PostgreSQL character tests")
NAMES = ["Marlowe", "Quill", "Wren"]


def voice(body: dict[str, Any]) -> str:
    system = " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")
    return xml_reply(next((f"{n} speaking." for n in NAMES if f"You are {n}, " in system), "nobody speaking."))


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(reply=voice) as fake:
        yield fake


def in_schema(schema: str) -> dict[str, Any]:
    return {"connect_args": {"server_settings": {"search_path": schema}}}


@asynccontextmanager
async def characters(settings: Settings, schema: str) -> AsyncIterator[tuple[App, Client]]:
    # A short pool timeout: a pool held by coordinators fails in 2 s, not the default 30.
    app = App(settings, agents=configure_agents(settings, load_characters(settings)),
              store_factory=lambda s: create_store(s, pool_timeout=2, **in_schema(schema)))
    await app.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield app, Client(f"http://127.0.0.1:{app.server.port}", http)
    finally:
        await app.stop()


async def test_three_characters_answer_with_a_pool_of_two(tmp_path: Path, model: FakeOpenAI, schema: str) -> None:
    """Each character's dispatcher (and knowledge pass) used to keep a coordinator connection of its
    own out of the pool: the third character's message waited for a connection and got a 504."""
    paths = [write_character(tmp_path, name) for name in NAMES]
    settings = process_settings(tmp_path, model, paths, database_url=DATABASE, database_pool_size=2)
    async with characters(settings, schema) as (app, api):
        replies = await asyncio.gather(*(api.say("hello", json={"agent": name}) for name in NAMES))
        assert replies == [f"{name} speaking." for name in NAMES]
        assert len({agent.runtime.store.coordinator() for agent in app.agents.running()}) == 1
        for name in NAMES:  # queries still get one of the two other connections
            history = await api.ok("GET", "/api/messages", params={"room_id": "lobby", "agent": name})
            assert [m["text"] for m in history["messages"]] == [f"{name} speaking.", "hello"]

async def test_a_character_stopped_at_run_time_frees_its_rooms_and_the_others_keep_theirs(
        tmp_path: Path, model: FakeOpenAI, schema: str) -> None:
    """Quill is stopped while a run holds its room (the model hangs past SHUTDOWN_TIMEOUT): another
    process may take Quill's room at once, while Marlowe's run in progress keeps Marlowe's room, and
    Marlowe answers afterwards. Closing the shared coordinator on Quill's stop would drop both."""
    paths = [write_character(tmp_path, name) for name in NAMES[:2]]
    settings = process_settings(tmp_path, model, paths, database_url=DATABASE, database_pool_size=2)
    settings = settings.model_copy(update={"shutdown_timeout": 1})
    elsewhere = SqlStore.from_url(DATABASE, **in_schema(schema))  # another process on the database
    other, owner = elsewhere.coordinator(), object()
    try:
        async with characters(settings, schema) as (app, api):
            rooms = {name: room_id_for(app.agents.get(name).runtime, api_room_key("lobby")) for name in NAMES[:2]}
            pending = []
            for name, seconds in (("Quill", 30.0), ("Marlowe", 6.0)):
                model.script(Hang(seconds), endpoint="chat")
                pending.append(asyncio.create_task(api.call("POST", "/api/messages", json={
                    "text": "hello", "user_id": "ada", "room_id": "lobby", "agent": name})))
                await chat_request_from(model, name)  # its run holds its room now
            assert not await other.claim(rooms["Quill"], owner)
            assert (await app.stop_agent("Quill")).state == "stopped"
            assert await other.claim(rooms["Quill"], owner), "Quill's claim outlived its stop"
            assert not await other.claim(rooms["Marlowe"], owner), "Marlowe lost its room when Quill stopped"
            await other.release(rooms["Quill"], owner)
            quill_status, marlowe_status = [status for status, _ in await asyncio.gather(*pending)]
            assert quill_status < 500 and marlowe_status < 500
            assert await api.say("still there?", json={"agent": "Marlowe"}) == "Marlowe speaking."
    finally:
        await elsewhere.close()


async def chat_request_from(model: FakeOpenAI, name: str) -> None:
    """Until the fake model has received a chat request playing `name`."""
    async with asyncio.timeout(10):
        while not any(f"You are {name}, " in json.dumps(r.body)  # noqa: ASYNC110 - the fake tells no one
                      for r in model.requests_to("/chat/completions")):
            await asyncio.sleep(0.02)
