"""Discord shards split across processes (SHARD_COUNT, SHARD_IDS): two runtimes in this process, each
with its own data directory, against one fake Discord whose gateway routes each guild to its shard."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.ids import create_unique_uuid
from bot.types import Content
from connectors.discord_connector.client import ShardedParleyClient
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_gateway import shard_of
from tests.fakes.openai_server import FakeOpenAI
from tests.test_discord import ALICE, Bot, fast_ready, model, say  # noqa: F401 - fixtures

GUILD_0, GUILD_1 = 500, (1 << 22) + 500  # on shards 0 and 1 of 2
CHANNEL_0, CHANNEL_1, DM = 600, 610, 700


@pytest.fixture(autouse=True)
def identify_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """discord.py spaces a process's IDENTIFYs 5 s apart, Discord's limit; the fake has no such limit."""
    async def no_wait(self: ShardedParleyClient, shard_id: int | None, *, initial: bool = False) -> None:
        return None

    monkeypatch.setattr(ShardedParleyClient, "before_identify_hook", no_wait)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord(guild_id=GUILD_0, recommended_shards=2)
    fake.add_guild(GUILD_1, "Second Guild")
    assert (shard_of(GUILD_0, 2), shard_of(GUILD_1, 2)) == (0, 1)
    fake.add_channel(CHANNEL_0, "general", guild_id=GUILD_0)
    fake.add_channel(CHANNEL_1, "general", guild_id=GUILD_1)
    fake.members.append(fake.member(ALICE))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def pair(tmp_path: Path, fake: FakeDiscord, model: FakeOpenAI) -> AsyncIterator[tuple[Bot, Bot]]:  # noqa: F811
    """Two processes of one bot: the first runs shard 0 of 2, the second shard 1."""
    bots = []
    for shard in (0, 1):  # shard 0 first: Bot.start waits for shard 0's session
        (tmp_path / str(shard)).mkdir()
        bots.append(Bot(tmp_path / str(shard), fake, model, shard_count=2, shard_ids=[shard]))
        await bots[-1].start()
    yield bots[0], bots[1]
    for bot in bots:
        await bot.stop()


async def mention(fake: FakeDiscord, channel: int, text: str, **options: Any) -> dict[str, Any]:
    return await say(fake, channel, text, mentions=[fake.bot], **options)


async def stored(bot: Bot, message: dict[str, Any]) -> bool:
    """Whether this process received (and stored) the message."""
    assert bot.app is not None
    runtime = bot.app.runtime
    key = f"discord:msg:{message['channel_id']}:{message['id']}"
    return await runtime.store.get_memory(create_unique_uuid(runtime.agent_id, key)) is not None


def sent_to(fake: FakeDiscord, shard: int) -> set[str]:
    """Ids of the messages the fake's gateway sent to a shard's session."""
    return {p["d"]["id"] for p in fake.sessions[shard].history if p["t"] == "MESSAGE_CREATE"}


def reply_target(message: dict[str, Any]) -> str:
    return str(message["sent_body"]["message_reference"]["message_id"])


async def test_each_process_receives_only_its_shards_guilds_and_dms_go_to_shard_0(
    pair: tuple[Bot, Bot], fake: FakeDiscord
) -> None:
    first, second = pair
    assert sorted(fake.shards_identified) == [(0, 2), (1, 2)]
    assert [g.id for g in first.connector.client.guilds] == [GUILD_0]
    assert [g.id for g in second.connector.client.guilds] == [GUILD_1]

    on_0 = await mention(fake, CHANNEL_0, "hello shard 0")
    on_1 = await mention(fake, CHANNEL_1, "hello shard 1")
    await fake.dispatch("CHANNEL_CREATE", {"id": str(DM), "type": 1, "recipients": [ALICE], "last_message_id": None})
    in_dm = await say(fake, DM, "hello in private", guild=False)
    replies = await fake.wait_for_messages(3)
    assert {reply_target(r) for r in replies} == {on_0["id"], on_1["id"], in_dm["id"]}
    # All three are answered, so each was received; none reached the other process.
    assert await stored(first, on_0) and await stored(second, on_1) and await stored(first, in_dm)
    assert not await stored(first, on_1) and not await stored(second, on_0) and not await stored(second, in_dm)
    assert sent_to(fake, 0) == {on_0["id"], in_dm["id"]} and sent_to(fake, 1) == {on_1["id"]}


async def test_a_process_with_shard_count_and_no_shard_ids_runs_every_shard(
    tmp_path: Path, fake: FakeDiscord, model: FakeOpenAI  # noqa: F811
) -> None:
    bot = Bot(tmp_path, fake, model, shard_count=2)
    await bot.start()
    try:
        await fake.wait_connected(shards=[0, 1])
        assert sorted(fake.shards_identified) == [(0, 2), (1, 2)]
        assert sorted(g.id for g in bot.connector.client.guilds) == [GUILD_0, GUILD_1]
        on_0 = await mention(fake, CHANNEL_0, "hello shard 0")
        on_1 = await mention(fake, CHANNEL_1, "hello shard 1")
        replies = await fake.wait_for_messages(2)
        assert {reply_target(r) for r in replies} == {on_0["id"], on_1["id"]}
        assert await stored(bot, on_0) and await stored(bot, on_1)
        assert len([r for r in fake.requests if r.method == "PUT" and r.path.endswith("/commands")]) == 1
    finally:
        await bot.stop()


async def test_a_dropped_shard_resumes_alone_and_gets_what_it_missed(pair: tuple[Bot, Bot], fake: FakeDiscord) -> None:
    first, second = pair
    await fake.drop(shard=1)
    assert fake.sessions[0].connected and not fake.sessions[1].connected
    missed = await mention(fake, CHANNEL_1, "sent while shard 1 was away")  # replayed by the RESUME
    await fake.wait_for(lambda: fake.resumes == 1)
    [reply] = await fake.wait_for_messages(1)
    assert reply_target(reply) == missed["id"] and await stored(second, missed)
    assert fake.identifies == 2 and first.connector.connected and second.connector.connected


async def test_send_to_room_from_the_process_without_the_guilds_shard_replies_through_rest(
    pair: tuple[Bot, Bot], fake: FakeDiscord
) -> None:
    """What a process does when it answers a message another one received (after that one died):
    the channel is not in its cache, so it posts through REST, as a reply to the message."""
    first, second = pair
    await fake.dispatch("CHANNEL_CREATE", {"id": str(DM), "type": 1, "recipients": [ALICE], "last_message_id": None})
    received = [await mention(fake, CHANNEL_0, "hello shard 0"), await say(fake, DM, "psst", guild=False)]
    await fake.wait_for_messages(2)  # both answered by the first process, so stored there
    assert first.app is not None and second.app is not None
    runtime, other = first.app.runtime, second.app.runtime
    for message in received:
        # The second process's store holds what the first one stored, as one shared database would.
        memory = await runtime.store.get_memory(create_unique_uuid(
            runtime.agent_id, f"discord:msg:{message['channel_id']}:{message['id']}"))
        assert memory is not None
        room = await runtime.get_room(memory.room_id)
        assert room is not None
        entity = await runtime.store.get_entity(memory.entity_id)
        world = await runtime.store.get_world(room.world_id) if room.world_id else None
        await other.ensure_connection(entity, room, world)
        await other.store.create_memory(memory)
        assert second.connector.client.get_channel(int(message["channel_id"])) is None

        keys = await other.send_message_to_room(room.id, Content(text="late answer", in_reply_to=memory.id))
        answer = fake.messages[-1]
        assert keys == [f"discord:msg:{message['channel_id']}:{answer['id']}"]
        assert answer["channel_id"] == message["channel_id"] and answer["sent_body"]["content"] == "late answer"
        assert reply_target(answer) == message["id"]
    assert not [r for r in fake.requests if r.method == "GET" and "/channels/" in r.path]  # no fetch: REST send only


async def test_commands_are_synced_once_and_each_process_names_its_shards(
    tmp_path: Path, fake: FakeDiscord, model: FakeOpenAI, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    bots = []
    try:
        with caplog.at_level(logging.INFO, logger="connectors.discord_connector.connector"):
            for shard in (0, 1):
                (tmp_path / str(shard)).mkdir()
                bots.append(Bot(tmp_path / str(shard), fake, model, shard_count=2, shard_ids=[shard],
                                discord_guild_id=GUILD_0))
                await bots[-1].start()
        syncs = [r for r in fake.requests if r.method == "PUT" and r.path.endswith("/commands")]
        assert len(syncs) == 1 and {c["name"] for c in fake.commands[str(GUILD_0)]} == {"ask", "join", "leave"}
        lines = [r.getMessage() for r in caplog.records if "shard" in r.getMessage()]
        assert lines == ["Discord: this process runs shard(s) 0 of 2",
                         "Discord: this process runs shard(s) 1 of 2; the process running shard 0 syncs the "
                         "slash commands"]
    finally:
        for bot in bots:
            await bot.stop()
