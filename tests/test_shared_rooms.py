"""Two runtimes on one PostgreSQL database, as two processes would be (plugins/bootstrap/shared_rooms.py).

The rooms are API rooms, which any process may answer (a platform room only where its connector runs).

Each has its own engine (its own connections, so its own room claims); messages of one room are
received alternately by both. The database is the room's queue: every message is answered once,
in order, by whichever runtime holds the room; a runtime whose connection dies leaves its rooms to
the other. The subprocess version of this over Telegram webhooks is tests/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bot.runtime import AgentRuntime
from bot.store.sql import SqlStore
from bot.types import ChannelType, Memory, ModelType
from tests.runtime_helpers import Chat, ScriptedModel, make_chat, make_settings, start_runtime, xml_reply

DATABASE = os.environ.get("TEST_DATABASE_URL", "")
pytestmark = pytest.mark.skipif(not DATABASE, reason="set TEST_DATABASE_URL to run the shared-room tests")


def slow_model(delay: float) -> ScriptedModel:
    """Replies after `delay` seconds (a model call in progress is what a claim must cover)."""
    model = ScriptedModel()

    async def reply(params: dict[str, Any]) -> str:
        await asyncio.sleep(delay)
        return xml_reply("noted")

    model.defaults = {ModelType.TEXT_SMALL: reply, ModelType.TEXT_LARGE: reply}
    return model


async def start(schema: str, tmp_path: Path, name: str, model: ScriptedModel) -> AgentRuntime:
    store = SqlStore.from_url(DATABASE, connect_args={"server_settings": {"search_path": schema}})
    await store.init()
    settings = make_settings(tmp_path / name, database_url=DATABASE, cluster_sweep_seconds=0.2)
    runtime = await start_runtime(store, settings, model)
    await runtime.message_handler.resume(settings.resume_window)
    return runtime


async def stop(runtime: AgentRuntime) -> None:
    await runtime.message_handler.drain(5)
    await runtime.stop()
    await runtime.store.close()


async def replies_to(runtime: AgentRuntime, messages: list[Memory]) -> dict[uuid.UUID, list[Memory]]:
    stored = await runtime.store.get_memories(agent_id=runtime.agent_id, room_id=messages[0].room_id,
                                              entity_id=runtime.agent_id, count=None)
    found: dict[uuid.UUID, list[Memory]] = {m.id: [] for m in messages}
    for reply in sorted(stored, key=lambda m: m.created_at):
        if reply.content.in_reply_to in found:
            found[reply.content.in_reply_to].append(reply)
    return found


async def wait_answered(runtime: AgentRuntime, messages: list[Memory], timeout: float = 20) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            found = await replies_to(runtime, messages)
            if all(found.values()):
                return found
            await asyncio.sleep(0.05)


async def send_alternately(chats: list[Chat], count: int) -> list[Memory]:
    messages = []
    for i in range(count):
        chat = chats[i % len(chats)]
        await chat.runtime.ensure_connection(chat.user, chat.room, chat.world)
        message = chat.message(f"line {i}")
        ticket = await chat.runtime.receive_message(message, chat.callback)
        assert not ticket.duplicate
        messages.append(message)
    return messages


async def test_one_room_received_by_two_is_answered_once_each_in_order(schema: str, tmp_path: Path) -> None:
    models = slow_model(0.05), slow_model(0.05)
    first, second = await start(schema, tmp_path, "a", models[0]), await start(schema, tmp_path, "b", models[1])
    try:
        chats = [make_chat(first, "shared", ChannelType.API), make_chat(second, "shared", ChannelType.API)]
        messages = await send_alternately(chats, 12)
        await wait_answered(first, messages)
        # Draining waits for every run in progress: one that answered a message twice would show.
        await asyncio.gather(first.message_handler.drain(10), second.message_handler.drain(10))
        found = await replies_to(first, messages)
        assert [len(r) for r in found.values()] == [1] * 12
        times = [found[m.id][0].created_at for m in messages]
        assert times == sorted(times), "replies out of message order"
        states = await first.store.run_states_of([m.id for m in messages])
        assert set(states.values()) == {"done"}
        # One reply per message in all (a second run would have called a model again), and each
        # runtime answered messages the other received: the room goes to whoever holds it.
        assert sum(m.count(ModelType.TEXT_LARGE) for m in models) == 12
        assert len(chats[0].sent) + len(chats[1].sent) < 12  # some ran where they were not received
    finally:
        await asyncio.gather(stop(first), stop(second))


async def test_a_dead_runtime_s_room_is_taken_over(schema: str, tmp_path: Path) -> None:
    slow = asyncio.Event()

    async def stuck(params: dict[str, Any]) -> str:
        slow.set()
        await asyncio.Event().wait()  # never answers: the process "hangs" mid-run, then dies
        return ""

    dying_model = ScriptedModel()
    dying_model.defaults = {ModelType.TEXT_SMALL: stuck, ModelType.TEXT_LARGE: stuck}
    dying = await start(schema, tmp_path, "dying", dying_model)
    survivor = await start(schema, tmp_path, "survivor", slow_model(0.01))
    chat = make_chat(dying, "orphan", ChannelType.API)
    messages = await send_alternately([chat], 3)
    async with asyncio.timeout(10):
        await slow.wait()
    # kill -9: the coordination connection drops, and with it the room's claim.
    await dying.message_handler.shared.coordinator._raw.close()
    try:
        found = await wait_answered(survivor, messages)
        assert [len(r) for r in found.values()] == [1, 1, 1]
    finally:
        await stop(survivor)
        for task in [t for t in asyncio.all_tasks() if t.get_name().startswith("room-")]:
            task.cancel()
        await dying.store.close()


async def test_a_platform_room_is_left_to_a_process_running_its_connector(schema: str, tmp_path: Path) -> None:
    """A process without the room's connector could not deliver the reply: it leaves the room alone."""
    runtime = await start(schema, tmp_path, "telegram-less", slow_model(0))
    try:
        platform, api = make_chat(runtime, "dm", ChannelType.DM), make_chat(runtime, "api", ChannelType.API)
        for chat in (platform, api):
            await runtime.ensure_connection(chat.user, chat.room, chat.world)
        shared = runtime.message_handler.shared
        assert runtime.connector_for(platform.room.source) is None
        assert not await shared._can_answer(platform.room.id)
        assert await shared._can_answer(api.room.id)
    finally:
        await stop(runtime)


async def test_a_coordination_connection_that_stops_answering_is_replaced(
        schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement that gets no answer (a half-open connection) must not hold every claim of the
    process: it times out, the connection is dropped with its locks, and the next claim reconnects."""
    from bot.store import coordination

    store = SqlStore.from_url(DATABASE, connect_args={"server_settings": {"search_path": schema}})
    coordinator = store.coordinator()
    room, owner = uuid.uuid4(), object()
    try:
        assert await coordinator.claim(room, owner)
        monkeypatch.setattr(coordination, "STATEMENT_TIMEOUT", 0.2)
        with pytest.raises(TimeoutError):
            await coordinator._execute("SELECT pg_sleep(1)")
        monkeypatch.setattr(coordination, "STATEMENT_TIMEOUT", 5.0)
        # The old connection's lock goes with its server process once its statement ends (PostgreSQL
        # notices the closed socket then; a half-open one, by keepalive, within ~25 s): wait for that.
        waiter = await asyncpg.connect(make_url(DATABASE).set(drivername="postgresql")
                                       .render_as_string(hide_password=False))
        try:
            await waiter.execute("SELECT pg_advisory_lock($1)", coordination.lock_key(room), timeout=10)
        finally:
            await waiter.close()
        assert await coordinator.claim(room, owner)  # on a new connection
        other = SqlStore.from_url(DATABASE, connect_args={"server_settings": {"search_path": schema}})
        try:
            assert not await other.coordinator().claim(room, owner)
        finally:
            await other.close()
    finally:
        await store.close()


async def test_one_coordinator_per_store_keeps_each_owner_s_claims_and_tells_every_listener(schema: str) -> None:
    """Several characters share the store's coordinator (one pool connection): a room claimed by one
    is refused to the others in the process too, one stopping frees only its own rooms, a dropped
    connection drops everyone's claims and all can claim again, and every listener hears every run."""
    def open_store() -> SqlStore:
        return SqlStore.from_url(DATABASE, connect_args={"server_settings": {"search_path": schema}})

    store, elsewhere = open_store(), open_store()
    coordinator, other_process = store.coordinator(), elsewhere.coordinator()
    ann, bea = object(), object()
    ann_room, bea_room = uuid.uuid4(), uuid.uuid4()
    heard: dict[str, list[tuple[uuid.UUID, str]]] = {"ann": [], "bea": []}
    bea_heard = asyncio.Event()

    def ann_listener(message_id: uuid.UUID, state: str) -> None:
        heard["ann"].append((message_id, state))

    def bea_listener(message_id: uuid.UUID, state: str) -> None:
        heard["bea"].append((message_id, state))
        bea_heard.set()

    try:
        assert coordinator is store.coordinator()
        assert await coordinator.claim(ann_room, ann) and await coordinator.claim(bea_room, bea)
        assert await coordinator.claim(ann_room, ann)  # re-entrant for its owner
        assert not await coordinator.claim(ann_room, bea)  # not granted twice in one process
        assert not await other_process.claim(ann_room, ann)

        coordinator.add_listener(ann_listener)
        coordinator.add_listener(bea_listener)
        first, second = uuid.uuid4(), uuid.uuid4()
        await other_process.announce(first, "done")
        async with asyncio.timeout(5):
            await bea_heard.wait()
        assert heard == {"ann": [(first, "done")], "bea": [(first, "done")]}
        coordinator.remove_listener(ann_listener)
        bea_heard.clear()
        await other_process.announce(second, "failed")
        async with asyncio.timeout(5):
            await bea_heard.wait()  # both are called from the same notification: Ann's call would be in
        assert heard == {"ann": [(first, "done")], "bea": [(first, "done"), (second, "failed")]}

        await coordinator.release_all(ann)  # Ann stopped at run time
        assert await other_process.claim(ann_room, ann)
        assert not await other_process.claim(bea_room, bea)  # Bea keeps hers
        await other_process.release(ann_room, ann)

        await coordinator._raw.close()  # the connection drops: every owner's claims go with it
        assert await other_process.claim(bea_room, bea)
        await other_process.release(bea_room, bea)
        assert await coordinator.claim(bea_room, bea) and await coordinator.claim(ann_room, ann)
        assert not await other_process.claim(bea_room, bea)

        lost = coordinator._raw
        await lost.close()  # and when it is lost as a character stops, the stop does not reconnect
        await coordinator.release_all(ann)
        assert coordinator._raw is lost and lost.is_closed(), "no new connection just to unlock"
        assert await other_process.claim(ann_room, ann)
    finally:
        await asyncio.gather(store.close(), elsewhere.close())
